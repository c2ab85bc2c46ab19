//! The delivery scheduler: reads only what is due from the queue's due-time index, runs a
//! bounded number of deliveries at once, wakes at once when new mail is enqueued, records
//! per-recipient results and reschedules or expires what is left.
//!
//! Like Postfix's queue manager, it keeps a small active set in memory (the messages being
//! delivered now) over the unbounded set on disk; the next retry time lives with the message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtorp_queue::{Envelope, Origin, Queue, QueueId, RecipientState};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::local::MaildirSink;
use crate::remote::RemoteDelivery;
use crate::sink::{Job, Outcome, Sink, SmtpReply};
use crate::{Route, Router};

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Waits between attempts; the last one repeats.
    pub retry_after: Vec<Duration>,
    /// A recipient still pending this long after arrival fails.
    pub max_lifetime: Duration,
    /// Messages in delivery at once.
    pub concurrency: usize,
    /// The host part of Maildir file names (our primary domain).
    pub maildir_host: String,
}

/// Counters since start, for `smtorp status` and the logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Recipients delivered.
    pub delivered: AtomicU64,
    /// Attempts that failed temporarily.
    pub deferred: AtomicU64,
    /// Recipients failed permanently (or expired).
    pub failed: AtomicU64,
}

/// The delivery scheduler.
pub struct Scheduler {
    queue: Arc<Queue>,
    router: Arc<dyn Router>,
    config: SchedulerConfig,
    wake: Arc<Notify>,
    stats: Arc<Stats>,
    active: Arc<Mutex<HashSet<QueueId>>>,
    local: MaildirSink,
    remote: Option<Arc<RemoteDelivery>>,
    bouncer: Option<Arc<dyn Bouncer>>,
    destinations: Arc<Mutex<HashMap<String, Destination>>>,
}

/// A handle that clears every destination's back-off (for `smtorp queue retry`).
#[derive(Clone)]
pub struct BackoffReset(Arc<Mutex<HashMap<String, Destination>>>);

impl BackoffReset {
    /// Forgets that any destination was down.
    pub fn reset(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// What the scheduler knows about a remote destination (Postfix keeps the same per-site
/// state): while it is down, its other messages wait with it instead of each paying a
/// connect timeout.
#[derive(Debug)]
struct Destination {
    /// Sessions to it at once.
    slots: Arc<Semaphore>,
    /// Consecutive failures to reach it.
    failures: u32,
    /// Not tried again before this time (Unix seconds).
    down_until: u64,
    /// Why it is down.
    reason: String,
}

/// Sessions to one destination at once.
const SESSIONS_PER_DESTINATION: usize = 4;

/// A recipient that failed for good in this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The envelope recipient.
    pub address: String,
    /// Why (the remote reply, or a local reason, or expiry).
    pub reason: String,
}

/// What a bounce reports: the message and the recipients that failed.
#[derive(Debug)]
pub struct FailureReport<'a> {
    /// The message's envelope (sender, arrival time, ...).
    pub envelope: &'a Envelope,
    /// The recipients that failed in this attempt.
    pub failed: &'a [FailedRecipient],
    /// The message (its header is returned to the sender).
    pub body: &'a [u8],
}

/// The future a [`Bouncer`] returns.
pub type BounceFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Sends delivery status notifications to the envelope sender (implemented by the binary,
/// through the one enqueue path). Never called for a null sender or for a bounce.
pub trait Bouncer: Send + Sync + 'static {
    /// Queues a bounce durably; an error keeps the failed message for a later attempt.
    fn bounce<'a>(&'a self, report: &'a FailureReport<'a>) -> BounceFuture<'a>;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How many due ids to read from the index at a time.
const DUE_BATCH: usize = 256;
/// The longest the scheduler sleeps without looking at the index.
const MAX_IDLE: Duration = Duration::from_secs(60);

impl Scheduler {
    /// A scheduler over `queue`, routing with `router`.
    pub fn new(queue: Arc<Queue>, router: Arc<dyn Router>, config: SchedulerConfig) -> Scheduler {
        Scheduler {
            local: MaildirSink {
                host: config.maildir_host.clone(),
            },
            queue,
            router,
            config,
            wake: Arc::new(Notify::new()),
            stats: Arc::new(Stats::default()),
            active: Arc::new(Mutex::new(HashSet::new())),
            remote: None,
            bouncer: None,
            destinations: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Reports permanent failures and expiries to senders with `bouncer`.
    pub fn with_bouncer(mut self, bouncer: Arc<dyn Bouncer>) -> Scheduler {
        self.bouncer = Some(bouncer);
        self
    }

    /// Delivers mail for other onion domains with `remote` (without it, such mail waits).
    pub fn with_remote(mut self, remote: RemoteDelivery) -> Scheduler {
        self.remote = Some(Arc::new(remote));
        self
    }

    /// Notify this after enqueueing to have the scheduler look at once.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The remote deliverer, if any (for its connection counter).
    pub fn remote(&self) -> Option<Arc<RemoteDelivery>> {
        self.remote.clone()
    }

    /// A handle to clear the destinations' back-off.
    pub fn backoff_reset(&self) -> BackoffReset {
        BackoffReset(self.destinations.clone())
    }

    /// The counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` turns true, then waits for deliveries in progress.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut tasks = JoinSet::new();
        let mut last_sweep = std::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_sweep.elapsed() >= Duration::from_secs(15) {
                last_sweep = std::time::Instant::now();
                if let Some(remote) = this.remote.clone() {
                    // QUIT idle cached sessions; detached so a slow peer delays nothing.
                    tokio::spawn(async move { remote.sweep().await });
                }
            }
            let mut full = false;
            match this
                .queue
                .due(unix_now(), DUE_BATCH.max(this.config.concurrency * 2))
            {
                Ok(ids) => {
                    for id in ids {
                        if tasks.len() >= this.config.concurrency {
                            full = true;
                            break;
                        }
                        let fresh = this
                            .active
                            .lock()
                            .map(|mut a| a.insert(id))
                            .unwrap_or(false);
                        if !fresh {
                            continue;
                        }
                        let me = this.clone();
                        tasks.spawn(async move {
                            me.deliver_message(id).await;
                            if let Ok(mut a) = me.active.lock() {
                                a.remove(&id);
                            }
                        });
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the due index; retrying shortly"),
            }
            let sleep = match this.queue.next_due() {
                Ok(Some(t)) => Duration::from_secs(t.saturating_sub(unix_now())).min(MAX_IDLE),
                Ok(None) => MAX_IDLE,
                Err(_) => Duration::from_secs(5),
            };
            tokio::select! {
                _ = this.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(sleep), if !full && sleep > Duration::ZERO => {}
                _ = tokio::time::sleep(Duration::from_millis(200)), if !full && sleep == Duration::ZERO && !tasks.is_empty() => {}
                _ = shutdown.changed() => {}
            }
        }
        // Deliveries are short (a Maildir write); let them finish so nothing is half done.
        while tasks.join_next().await.is_some() {}
        info!("delivery scheduler stopped");
    }

    async fn deliver_message(&self, id: QueueId) {
        let (mut envelope, body) = match (self.queue.envelope(id), self.queue.body(id)) {
            (Ok(Some(e)), Ok(Some(b))) => (e, b),
            (Ok(None), _) | (_, Ok(None)) => return, // removed meanwhile
            (Err(e), _) | (_, Err(e)) => {
                warn!(queue_id = %id, error = %e, "cannot read queued message");
                return;
            }
        };
        let body = Arc::new(body);
        let before: Vec<RecipientState> = envelope.recipients.iter().map(|r| r.state).collect();
        let pending: Vec<usize> = (0..envelope.recipients.len())
            .filter(|&i| envelope.recipients[i].state == RecipientState::Pending)
            .collect();
        // Local recipients one by one; remote ones in one session per destination domain.
        let mut remote: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut held_until = 0u64;
        let mut remote_delivered = false;
        for &index in &pending {
            let route = self.router.route(&envelope.recipients[index].address);
            let outcome = match &route {
                Route::Local { .. } => {
                    let job = Job {
                        envelope: &envelope,
                        body: &body,
                        recipients: &[index],
                        route: &route,
                    };
                    self.local
                        .deliver(job)
                        .await
                        .pop()
                        .unwrap_or_else(|| Outcome::temporary([4, 3, 0], "no outcome"))
                }
                Route::Remote { domain } => {
                    remote.entry(domain.clone()).or_default().push(index);
                    continue;
                }
                Route::Unroutable(why) => Outcome::Permanent(SmtpReply::parse(why)),
            };
            self.record(&mut envelope, index, outcome);
        }
        for (domain, indices) in remote {
            let outcomes = match &self.remote {
                Some(remote) => {
                    let route = Route::Remote { domain: domain.clone() };
                    let job = Job { envelope: &envelope, body: &body, recipients: &indices, route: &route };
                    self.deliver_remote(remote.as_ref(), &domain, job).await
                }
                None => vec![
                    Outcome::temporary(
                        [4, 4, 1],
                        format!("no outbound transport for {domain} (onion service off and no static route)")
                    );
                    indices.len()
                ],
            };
            for (index, outcome) in indices.into_iter().zip(outcomes) {
                remote_delivered |= outcome == Outcome::Delivered;
                if let Outcome::Waiting(_, until) = &outcome {
                    held_until = held_until.max(*until);
                }
                self.record(&mut envelope, index, outcome);
            }
        }
        self.reschedule(&mut envelope, unix_now(), held_until);
        let failed: Vec<FailedRecipient> = envelope
            .recipients
            .iter()
            .zip(&before)
            .filter(|(r, was)| {
                r.state == RecipientState::Failed && **was == RecipientState::Pending
            })
            .map(|(r, _)| FailedRecipient {
                address: r.address.clone(),
                reason: r.last_error.clone().unwrap_or_default(),
            })
            .collect();
        if !failed.is_empty() {
            if envelope.sender.is_empty() || envelope.origin == Origin::Bounce {
                info!(queue_id = %id, "not bouncing a message with a null sender");
            } else if let Some(bouncer) = &self.bouncer {
                let report = FailureReport {
                    envelope: &envelope,
                    failed: &failed,
                    body: &body,
                };
                if let Err(e) = bouncer.bounce(&report).await {
                    // Keep the message as it was: it is tried (and bounced) again later.
                    warn!(queue_id = %id, error = %e, "cannot queue the bounce; keeping the message");
                    return;
                }
            }
        }
        if let Err(e) = self.queue.update(&envelope) {
            warn!(queue_id = %id, error = %e, "cannot record delivery results; will retry");
            return;
        }
        // Only a remote delivery must be on disk before we go on: forgetting it in a crash
        // would send the message to the peer again. A forgotten local delivery is harmless
        // (the Maildir name finds the earlier copy), and sled's own flush follows within 2 s.
        if remote_delivered {
            if let Err(e) = self.queue.sync().await {
                warn!(queue_id = %id, error = %e, "cannot flush delivery results");
            }
        }
    }

    /// Sets the next due time of a message that still has pending recipients, or expires
    /// them once the message is older than `max_lifetime`.
    fn reschedule(&self, envelope: &mut Envelope, now: u64, held_until: u64) {
        if !envelope.has_pending() {
            envelope.next_due = None;
            return;
        }
        let age = now.saturating_sub(envelope.arrival);
        if age >= self.config.max_lifetime.as_secs() {
            for rcpt in envelope
                .recipients
                .iter_mut()
                .filter(|r| r.state == RecipientState::Pending)
            {
                let last = rcpt.last_error.take().unwrap_or_default();
                rcpt.last_error = Some(format!(
                    "expired after {age} s in the queue; last error: {last}"
                ));
                rcpt.state = RecipientState::Failed;
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            warn!(queue_id = %envelope.id, "expired");
            envelope.next_due = None;
            return;
        }
        let retried = envelope.recipients.iter().any(|r| {
            r.state == RecipientState::Pending && r.last_error.is_some() && r.attempts > 0
        });
        let normal = now + self.retry_delay(envelope).as_secs();
        envelope.next_due = Some(match (held_until > now, retried) {
            // Waiting only for a destination that is down: try when it may be back.
            (true, false) => held_until.min(envelope.arrival + self.config.max_lifetime.as_secs()),
            (true, true) => normal.min(held_until),
            (false, _) => normal,
        });
    }

    /// The wait before the next attempt: `retry_after[attempts - 1]`, the last one repeating.
    fn retry_delay(&self, envelope: &Envelope) -> Duration {
        let attempts = envelope
            .recipients
            .iter()
            .filter(|r| r.state == RecipientState::Pending)
            .map(|r| r.attempts)
            .max()
            .unwrap_or(1)
            .max(1) as usize;
        let steps = &self.config.retry_after;
        steps
            .get(attempts - 1)
            .or(steps.last())
            .copied()
            .unwrap_or(Duration::from_secs(300))
    }

    /// Delivers to one destination, honouring its back-off and session limit, and updates
    /// what we know about it.
    async fn deliver_remote(&self, remote: &dyn Sink, domain: &str, job: Job<'_>) -> Vec<Outcome> {
        let rcpts = job.recipients;
        let now = unix_now();
        let slots = {
            let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
            let dest = map.entry(domain.to_owned()).or_insert_with(|| Destination {
                slots: Arc::new(Semaphore::new(SESSIONS_PER_DESTINATION)),
                failures: 0,
                down_until: 0,
                reason: String::new(),
            });
            if dest.down_until > now {
                let why = format!(
                    "{domain} is unreachable, next try in {} s: {}",
                    dest.down_until - now,
                    dest.reason
                );
                return vec![
                    Outcome::Waiting(SmtpReply::new(451, [4, 4, 1], why), dest.down_until);
                    rcpts.len()
                ];
            }
            dest.slots.clone()
        };
        let Ok(_permit) = slots.acquire_owned().await else {
            return vec![Outcome::temporary([4, 3, 2], "scheduler is stopping"); rcpts.len()];
        };
        let outcomes = remote.deliver(job).await;
        let unreachable = !outcomes.is_empty() && outcomes.iter().all(Outcome::is_unreachable);
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dest) = map.get_mut(domain) {
            if !unreachable {
                dest.failures = 0;
                dest.down_until = 0;
            } else {
                dest.failures = dest.failures.saturating_add(1);
                let steps = &self.config.retry_after;
                let wait = steps
                    .get(dest.failures as usize - 1)
                    .or(steps.last())
                    .copied()
                    .unwrap_or(Duration::from_secs(60));
                dest.down_until = unix_now() + wait.as_secs();
                dest.reason = match outcomes.first() {
                    Some(
                        Outcome::Temporary(r) | Outcome::Permanent(r) | Outcome::Waiting(r, _),
                    ) => r.text.clone(),
                    _ => String::new(),
                };
                info!(
                    domain,
                    failures = dest.failures,
                    wait_secs = wait.as_secs(),
                    "destination unreachable; holding its mail"
                );
            }
        }
        outcomes
    }

    /// Records one attempt's outcome on the envelope.
    fn record(&self, envelope: &mut Envelope, index: usize, outcome: Outcome) {
        let id = envelope.id;
        let rcpt = &mut envelope.recipients[index];
        rcpt.attempts = rcpt.attempts.saturating_add(1);
        match outcome {
            Outcome::Delivered => {
                rcpt.state = RecipientState::Delivered;
                rcpt.last_error = None;
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                info!(queue_id = %id, attempt = rcpt.attempts, "delivered");
                debug!(queue_id = %id, recipient = %rcpt.address, "delivered to");
            }
            Outcome::Temporary(reply) => {
                self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                warn!(queue_id = %id, attempt = rcpt.attempts, reason = %reply, "deferred");
                rcpt.last_error = Some(reply.to_string());
            }
            Outcome::Waiting(reply, _) => {
                // Not an attempt: undo the count.
                rcpt.attempts = rcpt.attempts.saturating_sub(1);
                debug!(queue_id = %id, reason = %reply, "waiting for the destination");
                rcpt.last_error = Some(reply.to_string());
            }
            Outcome::Permanent(reply) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(queue_id = %id, reason = %reply, "failed permanently");
                rcpt.state = RecipientState::Failed;
                rcpt.last_error = Some(reply.to_string());
            }
        }
    }
}
