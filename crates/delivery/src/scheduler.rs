//! The delivery scheduler: reads only what is due from the queue's due-time index, runs a
//! bounded number of deliveries at once, wakes at once when new mail is enqueued, hands each
//! message's pending recipients to their sinks grouped by route, records per-recipient
//! results and reschedules, expires and bounces what is left.
//!
//! Like Postfix's queue manager, it keeps a small active set in memory (the messages being
//! delivered now) over the unbounded set on disk; the next retry time lives with the message.
//! It knows only [`Sink`]s (where mail goes), a [`Router`] (which sink a recipient needs), a
//! [`Bouncer`] and a [`Clock`], so it is tested with fakes of each.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtorp_queue::{Envelope, Origin, Queue, QueueError, QueueId, RecipientState};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::sink::{Content, Job, Outcome, Reply, Sink};
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
    /// Sessions to one destination at once.
    pub sessions_per_destination: usize,
}

/// The time, in Unix seconds (a fake one in tests).
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
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

/// What the scheduler knows about a destination (Postfix keeps the same per-site state):
/// while it is down, its other messages wait with it instead of each paying a connect
/// timeout.
#[derive(Debug)]
struct Destination {
    /// Sessions to it at once.
    slots: Arc<Semaphore>,
    /// Consecutive failures to reach it.
    failures: u32,
    /// Not tried again before this time (Unix seconds).
    down_until: u64,
    /// The last failure (when, and the reply), kept after it recovers, for `status`.
    last_error: Option<(u64, Reply)>,
}

/// What `status` shows of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationReport {
    /// The destination (an onion domain).
    pub name: String,
    /// When its last failure was (Unix seconds) and its reply.
    pub last_error: Option<(u64, Reply)>,
    /// Held back until this time (Unix seconds), if it is down now.
    pub down_until: Option<u64>,
}

/// A recipient that failed for good in this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The envelope recipient.
    pub address: String,
    /// Why: the reply of the last attempt (the peer's, or ours for a local failure).
    pub reply: Reply,
    /// True if it failed because the message was in the queue too long (the reply is then
    /// that of the last attempt, usually temporary).
    pub expired: bool,
}

/// What a bounce reports: the message and the recipients that failed.
#[derive(Debug)]
pub struct FailureReport<'a> {
    /// The message's envelope (sender, arrival time, ...).
    pub envelope: &'a Envelope,
    /// The recipients that failed in this attempt.
    pub failed: &'a [FailedRecipient],
    /// The message's header section (returned to the sender).
    pub header: &'a [u8],
}

/// The future a [`Bouncer`] returns.
pub type BounceFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Sends delivery status notifications to the envelope sender (implemented by the binary,
/// through the one enqueue path). Never called for a null sender or for a bounce.
pub trait Bouncer: Send + Sync + 'static {
    /// Queues a bounce durably; an error keeps the failed message for a later attempt.
    fn bounce<'a>(&'a self, report: &'a FailureReport<'a>) -> BounceFuture<'a>;
}

/// How many due ids to read from the index at a time.
const DUE_BATCH: usize = 256;
/// The longest the scheduler sleeps without looking at the index.
const MAX_IDLE: Duration = Duration::from_secs(60);
/// How much of a message bounces return (its header section, at most this).
const BOUNCE_HEADER: usize = 64 * 1024;
/// How often the sinks' upkeep (e.g. closing idle cached sessions) runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(15);

/// The parts a scheduler works with.
pub struct Parts {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Where each recipient goes.
    pub router: Arc<dyn Router>,
    /// The sink of local routes (Maildirs).
    pub local: Arc<dyn Sink>,
    /// The sink of remote routes; without it, such mail waits.
    pub remote: Option<Arc<dyn Sink>>,
    /// Reports failures to senders; without it, failures are only logged.
    pub bouncer: Option<Arc<dyn Bouncer>>,
    /// The time.
    pub clock: Arc<dyn Clock>,
}

/// The state shared by the scheduler and its handle.
struct Shared {
    wake: Notify,
    stats: Stats,
    destinations: Mutex<HashMap<String, Destination>>,
}

/// The daemon's handle on the scheduler: wake it, reset back-offs, read its counters.
#[derive(Clone)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
}

impl SchedulerHandle {
    /// Makes the scheduler look at the queue at once (after an enqueue or a retry).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Forgets that any destination was down (for `smtorp queue retry`).
    pub fn reset_backoff(&self) {
        let mut map = self
            .shared
            .destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for dest in map.values_mut() {
            dest.down_until = 0;
            dest.failures = 0;
        }
    }

    /// The counters since start.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// What is known of each destination that failed since start.
    pub fn destinations(&self, now: u64) -> Vec<DestinationReport> {
        let map = self
            .shared
            .destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<DestinationReport> = map
            .iter()
            .filter(|(_, d)| d.last_error.is_some())
            .map(|(name, d)| DestinationReport {
                name: name.clone(),
                last_error: d.last_error.clone(),
                down_until: (d.down_until > now).then_some(d.down_until),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The delivery scheduler.
pub struct Scheduler {
    parts: Parts,
    config: SchedulerConfig,
    shared: Arc<Shared>,
    active: Mutex<HashSet<QueueId>>,
    /// The messages queued before this scheduler started (read once, at the start of
    /// [`Scheduler::run`]): an earlier process may have delivered them without recording it.
    inherited: Mutex<Option<HashSet<QueueId>>>,
    /// A queue update failed since start: a recorded result may be missing.
    unsaved: AtomicBool,
}

impl Scheduler {
    /// A scheduler over these parts.
    pub fn new(parts: Parts, config: SchedulerConfig) -> Scheduler {
        Scheduler {
            parts,
            config,
            shared: Arc::new(Shared {
                wake: Notify::new(),
                stats: Stats::default(),
                destinations: Mutex::new(HashMap::new()),
            }),
            active: Mutex::new(HashSet::new()),
            inherited: Mutex::new(None),
            unsaved: AtomicBool::new(false),
        }
    }

    /// The handle for the rest of the daemon.
    pub fn handle(&self) -> SchedulerHandle {
        SchedulerHandle {
            shared: self.shared.clone(),
        }
    }

    fn now(&self) -> u64 {
        self.parts.clock.now()
    }

    /// Runs until `shutdown` turns true, then waits for deliveries in progress.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.remember_inherited().await;
        let this = Arc::new(self);
        let mut tasks: JoinSet<(QueueId, Option<Finished>)> = JoinSet::new();
        // Attempts that finished and whose results the next round records.
        let mut done: Vec<(QueueId, Option<Finished>)> = Vec::new();
        let mut last_upkeep = std::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_upkeep.elapsed() >= UPKEEP_EVERY {
                last_upkeep = std::time::Instant::now();
                for sink in this.sinks() {
                    // Detached so a slow peer delays nothing.
                    tokio::spawn(async move { sink.upkeep().await });
                }
            }
            // One store call per round: the results of the attempts that finished, the due
            // ids not being delivered, the envelopes of as many as there are free places,
            // and when the next one is due. Each store call is a hand-over to the blocking
            // pool (a few context switches); a call per step and message (the index, the
            // next due time, each envelope, each update) cost about a fifth of the daemon's
            // CPU at a thousand messages a second (docs/performance.md). With every place
            // taken there is nothing to read.
            let free = this.config.concurrency.saturating_sub(tasks.len());
            let mut full = free == 0;
            let mut sleep = MAX_IDLE;
            if !full {
                let finished = std::mem::take(&mut done);
                let ids: Vec<QueueId> = finished.iter().map(|(id, _)| *id).collect();
                let finished: Vec<Finished> = finished.into_iter().filter_map(|(_, f)| f).collect();
                let remote = finished.iter().any(|f| f.remote_delivered);
                let limit = DUE_BATCH.max(this.config.concurrency * 2);
                let now = this.now();
                let active = this.active_ids();
                match this
                    .parts
                    .queue
                    .call(move |q| {
                        // The results of the attempts that finished, first: a message
                        // that is done or rescheduled is no longer due.
                        let failures = update_all(q, &finished);
                        let mut batch = Vec::new();
                        let mut more = false;
                        for id in q.due(now, limit)? {
                            if active.contains(&id) {
                                continue;
                            }
                            if batch.len() >= free {
                                more = true;
                                break;
                            }
                            if let Some(envelope) = q.envelope(id)? {
                                batch.push(envelope);
                            }
                        }
                        Ok((failures, batch, more, q.next_due()?))
                    })
                    .await
                {
                    Ok((failures, batch, more, next_due)) => {
                        for id in &ids {
                            this.release(*id);
                        }
                        if !failures.is_empty() || remote {
                            let me = this.clone();
                            tokio::spawn(async move { me.saved(Ok(failures), remote).await });
                        }
                        full = more;
                        for envelope in batch {
                            let id = envelope.id;
                            if !this.claim(id) {
                                continue;
                            }
                            let me = this.clone();
                            tasks.spawn(async move { (id, me.attempt(envelope).await) });
                        }
                        sleep = match next_due {
                            Some(t) => {
                                Duration::from_secs(t.saturating_sub(this.now())).min(MAX_IDLE)
                            }
                            None => MAX_IDLE,
                        };
                    }
                    Err(e) => {
                        // The results are not recorded: the messages are tried again, and
                        // an earlier copy is looked for then.
                        this.unsaved.store(true, Ordering::SeqCst);
                        for id in &ids {
                            this.release(*id);
                        }
                        warn!(error = %e, "cannot read the due index; retrying shortly");
                        sleep = Duration::from_secs(5);
                    }
                }
            }
            tokio::select! {
                _ = this.shared.wake.notified() => {}
                Some(result) = tasks.join_next(), if !tasks.is_empty() => done.extend(result.ok()),
                _ = tokio::time::sleep(sleep), if !full && sleep > Duration::ZERO => {}
                _ = tokio::time::sleep(Duration::from_millis(200)), if !full && sleep == Duration::ZERO && !tasks.is_empty() => {}
                _ = shutdown.changed() => {}
            }
            // Every delivery that has finished meanwhile makes room for the next round.
            while let Some(result) = tasks.try_join_next() {
                done.extend(result.ok());
            }
        }
        // Deliveries are bounded by their own time limits; let them finish so nothing is
        // half done, and record what they did.
        while let Some(result) = tasks.join_next().await {
            done.extend(result.ok());
        }
        let finished = done.into_iter().filter_map(|(_, f)| f).collect();
        this.save(finished).await;
        info!("delivery scheduler stopped");
    }

    /// Notes which messages were queued before this scheduler started.
    pub async fn remember_inherited(&self) {
        let ids = loop {
            match self.parts.queue.call(|q| q.ids()).await {
                Ok(ids) => break ids,
                Err(e) => {
                    warn!(error = %e, "cannot list the queue at start; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        *self.inherited.lock().unwrap_or_else(|p| p.into_inner()) = Some(ids.into_iter().collect());
    }

    /// True if an earlier attempt at `envelope` may have delivered without its result being
    /// recorded: it was queued before this process started, a queue update failed since, or
    /// it was attempted before.
    fn maybe_done(&self, envelope: &Envelope) -> bool {
        let inherited = match &*self.inherited.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(ids) => ids.contains(&envelope.id),
            None => true, // not known yet: assume the worst
        };
        inherited
            || self.unsaved.load(Ordering::SeqCst)
            || envelope.recipients.iter().any(|r| r.attempts > 0)
    }

    fn sinks(&self) -> Vec<Arc<dyn Sink>> {
        let mut sinks = vec![self.parts.local.clone()];
        sinks.extend(self.parts.remote.clone());
        sinks
    }

    /// The messages being delivered now.
    fn active_ids(&self) -> HashSet<QueueId> {
        self.active.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn claim(&self, id: QueueId) -> bool {
        self.active
            .lock()
            .map(|mut a| a.insert(id))
            .unwrap_or(false)
    }

    fn release(&self, id: QueueId) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(&id);
        }
    }

    /// One attempt at every pending recipient of message `id`: grouped by route, each group
    /// handed to its sink; then the results recorded, the message rescheduled, expired or
    /// bounced.
    pub async fn deliver_message(&self, id: QueueId) {
        let envelope = match self.parts.queue.call(move |q| q.envelope(id)).await {
            Ok(Some(e)) => e,
            Ok(None) => return, // removed meanwhile
            Err(e) => {
                warn!(queue_id = %id, error = %e, "cannot read queued message");
                return;
            }
        };
        if let Some(finished) = self.attempt(envelope).await {
            self.save(vec![finished]).await;
        }
    }

    /// [`Scheduler::deliver_message`] with the envelope already read, up to the results:
    /// what to store, or `None` to leave the message as it is.
    async fn attempt(&self, mut envelope: Envelope) -> Option<Finished> {
        let queue = &self.parts.queue;
        let id = envelope.id;
        let content = Content::new(queue.clone(), id);
        let before: Vec<RecipientState> = envelope.recipients.iter().map(|r| r.state).collect();
        let maybe_done = self.maybe_done(&envelope);
        let mut groups: Vec<(Route, Vec<usize>)> = Vec::new();
        for (index, rcpt) in envelope.recipients.iter().enumerate() {
            if rcpt.state != RecipientState::Pending {
                continue;
            }
            let route = self.parts.router.route(&rcpt.address);
            match groups.iter_mut().find(|(r, _)| *r == route) {
                Some((_, indices)) => indices.push(index),
                None => groups.push((route, vec![index])),
            }
        }
        let mut held_until = 0u64;
        let mut remote_delivered = false;
        for (route, indices) in groups {
            let job = Job {
                envelope: &envelope,
                content: &content,
                recipients: &indices,
                route: &route,
                maybe_done,
            };
            let outcomes = self.deliver_group(job).await;
            for (index, outcome) in indices.into_iter().zip(outcomes) {
                if matches!(route, Route::Remote { .. }) && outcome == Outcome::Delivered {
                    remote_delivered = true;
                }
                if let Outcome::Waiting(_, until) = &outcome {
                    held_until = held_until.max(*until);
                }
                self.record(&mut envelope, index, outcome);
            }
        }
        let now = self.now();
        self.reschedule(&mut envelope, now, held_until);
        let failed: Vec<FailedRecipient> = envelope
            .recipients
            .iter()
            .zip(&before)
            .filter(|(r, was)| {
                r.state == RecipientState::Failed && **was == RecipientState::Pending
            })
            .map(|(r, _)| {
                let reply = r
                    .last_reply
                    .clone()
                    .unwrap_or_else(|| Reply::new(550, [5, 0, 0], "failed"));
                FailedRecipient {
                    address: r.address.clone(),
                    expired: !reply.is_permanent(),
                    reply,
                }
            })
            .collect();
        if !failed.is_empty() && !self.bounce(&envelope, &failed).await {
            // Keep the message as it was: it is tried (and bounced) again later.
            return None;
        }
        Some(Finished {
            envelope,
            remote_delivered,
        })
    }

    /// Records the results of finished attempts: one store call for all of them, then,
    /// if one delivered to a remote peer, a flush. Only a remote delivery must be on disk
    /// soon: forgetting it in a crash would send the message to the peer again. A
    /// forgotten local delivery is harmless (the Maildir name finds the earlier copy), and
    /// sled's own flush follows within 2 s.
    async fn save(&self, finished: Vec<Finished>) {
        if finished.is_empty() {
            return;
        }
        let remote = finished.iter().any(|f| f.remote_delivered);
        let failures = self
            .parts
            .queue
            .call(move |q| Ok(update_all(q, &finished)))
            .await;
        self.saved(failures, remote).await;
    }

    /// Reports what [`update_all`] could not record, and flushes if `remote`.
    async fn saved(&self, failures: Result<Vec<(QueueId, String)>, QueueError>, remote: bool) {
        match failures {
            Ok(failures) => {
                for (id, e) in &failures {
                    self.unsaved.store(true, Ordering::SeqCst);
                    warn!(queue_id = %id, error = %e, "cannot record delivery results; will retry");
                }
            }
            Err(e) => {
                self.unsaved.store(true, Ordering::SeqCst);
                warn!(error = %e, "cannot record delivery results; will retry");
            }
        }
        if remote {
            if let Err(e) = self.parts.queue.sync().await {
                self.unsaved.store(true, Ordering::SeqCst);
                warn!(error = %e, "cannot flush delivery results");
            }
        }
    }

    /// Sends the bounce of `failed`; false if it could not be queued.
    async fn bounce(&self, envelope: &Envelope, failed: &[FailedRecipient]) -> bool {
        if envelope.sender.is_empty() || envelope.origin == Origin::Bounce {
            info!(queue_id = %envelope.id, "not bouncing a message with a null sender");
            return true;
        }
        let Some(bouncer) = &self.parts.bouncer else {
            return true;
        };
        let id = envelope.id;
        let header = match self
            .parts
            .queue
            .call(move |q| q.body_prefix(id, BOUNCE_HEADER))
            .await
        {
            Ok(Some(prefix)) => header_of(&prefix).to_vec(),
            Ok(None) | Err(_) => Vec::new(),
        };
        let report = FailureReport {
            envelope,
            failed,
            header: &header,
        };
        match bouncer.bounce(&report).await {
            Ok(()) => true,
            Err(e) => {
                warn!(queue_id = %envelope.id, error = %e, "cannot queue the bounce; keeping the message");
                false
            }
        }
    }

    /// One group: unroutable recipients fail; local ones go to the local sink; remote ones
    /// to the remote sink, within their destination's back-off and session limit.
    async fn deliver_group(&self, job: Job<'_>) -> Vec<Outcome> {
        let n = job.recipients.len();
        match job.route {
            Route::Unroutable(reply) => vec![Outcome::Permanent(reply.clone()); n],
            Route::Local { .. } => self.parts.local.deliver(job).await,
            Route::Remote { domain } => match &self.parts.remote {
                Some(remote) => self.deliver_remote(remote.as_ref(), domain, job).await,
                None => vec![
                    Outcome::temporary(
                        [4, 4, 1],
                        format!("no outbound transport for {domain} (onion service off and no static route)"),
                    );
                    n
                ],
            },
        }
    }

    /// The wait after the `n`th failure (1-based): `retry_after[n - 1]`, the last step
    /// repeating.
    fn step(&self, n: u32) -> Duration {
        let steps = &self.config.retry_after;
        let index = (n.max(1) - 1) as usize;
        steps
            .get(index)
            .or(steps.last())
            .copied()
            .unwrap_or(Duration::from_secs(300))
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
                let last = rcpt
                    .last_reply
                    .take()
                    .unwrap_or_else(|| Reply::new(451, [4, 4, 7], "no attempt was possible"));
                // Expired: 4.4.7 (RFC 3463), with the last attempt's words.
                rcpt.last_reply = Some(Reply::new(
                    last.code.max(400),
                    [4, 4, 7],
                    format!("expired after {age} s in the queue; last attempt: {last}"),
                ));
                rcpt.state = RecipientState::Failed;
                self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            warn!(queue_id = %envelope.id, "expired");
            envelope.next_due = None;
            return;
        }
        let retried = envelope.recipients.iter().any(|r| {
            r.state == RecipientState::Pending && r.last_reply.is_some() && r.attempts > 0
        });
        let attempts = envelope
            .recipients
            .iter()
            .filter(|r| r.state == RecipientState::Pending)
            .map(|r| r.attempts)
            .max()
            .unwrap_or(1);
        let normal = now + self.step(attempts).as_secs();
        envelope.next_due = Some(match (held_until > now, retried) {
            // Waiting only for a destination that is down: try when it may be back.
            (true, false) => held_until.min(envelope.arrival + self.config.max_lifetime.as_secs()),
            (true, true) => normal.min(held_until),
            (false, _) => normal,
        });
    }

    /// Delivers to one destination, honouring its back-off and session limit, and updates
    /// what we know about it.
    async fn deliver_remote(&self, remote: &dyn Sink, domain: &str, job: Job<'_>) -> Vec<Outcome> {
        let n = job.recipients.len();
        let now = self.now();
        let slots = {
            let mut map = self
                .shared
                .destinations
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let dest = map.entry(domain.to_owned()).or_insert_with(|| Destination {
                slots: Arc::new(Semaphore::new(self.config.sessions_per_destination.max(1))),
                failures: 0,
                down_until: 0,
                last_error: None,
            });
            if dest.down_until > now {
                let reason = dest
                    .last_error
                    .as_ref()
                    .map(|(_, r)| r.text.clone())
                    .unwrap_or_default();
                let why = format!(
                    "{domain} is unreachable, next try in {} s: {reason}",
                    dest.down_until - now
                );
                return vec![Outcome::Waiting(Reply::new(451, [4, 4, 1], why), dest.down_until); n];
            }
            dest.slots.clone()
        };
        let Ok(_permit) = slots.acquire_owned().await else {
            return vec![Outcome::temporary([4, 3, 2], "scheduler is stopping"); n];
        };
        let outcomes = remote.deliver(job).await;
        let unreachable = !outcomes.is_empty() && outcomes.iter().all(Outcome::is_unreachable);
        let now = self.now();
        let mut map = self
            .shared
            .destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(dest) = map.get_mut(domain) {
            if let Some(reply) = outcomes.iter().find_map(Outcome::reply) {
                dest.last_error = Some((now, reply.clone()));
            }
            if !unreachable {
                dest.failures = 0;
                dest.down_until = 0;
            } else {
                dest.failures = dest.failures.saturating_add(1);
                let wait = self.step(dest.failures);
                dest.down_until = now + wait.as_secs();
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
        let Some(rcpt) = envelope.recipients.get_mut(index) else {
            return;
        };
        rcpt.attempts = rcpt.attempts.saturating_add(1);
        let stats = &self.shared.stats;
        match outcome {
            Outcome::Delivered => {
                rcpt.state = RecipientState::Delivered;
                rcpt.last_reply = None;
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                info!(queue_id = %id, attempt = rcpt.attempts, "delivered");
                debug!(queue_id = %id, recipient = %rcpt.address, "delivered to");
            }
            Outcome::Temporary(reply) => {
                stats.deferred.fetch_add(1, Ordering::Relaxed);
                warn!(queue_id = %id, attempt = rcpt.attempts, reason = %reply, "deferred");
                rcpt.last_reply = Some(reply);
            }
            Outcome::Waiting(reply, _) => {
                // Not an attempt: undo the count.
                rcpt.attempts = rcpt.attempts.saturating_sub(1);
                debug!(queue_id = %id, reason = %reply, "waiting for the destination");
                rcpt.last_reply = Some(reply);
            }
            Outcome::Permanent(reply) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(queue_id = %id, reason = %reply, "failed permanently");
                rcpt.state = RecipientState::Failed;
                rcpt.last_reply = Some(reply);
            }
        }
    }
}

/// The results of one attempt, to be stored.
struct Finished {
    /// The envelope with each recipient's new state and the next due time.
    envelope: Envelope,
    /// A remote peer accepted it for some recipient (must be on disk soon).
    remote_delivered: bool,
}

/// Stores the results of `finished` attempts (blocking); the ones that failed, with why.
fn update_all(queue: &Queue, finished: &[Finished]) -> Vec<(QueueId, String)> {
    finished
        .iter()
        .filter_map(|f| {
            queue
                .update(&f.envelope)
                .err()
                .map(|e| (f.envelope.id, e.to_string()))
        })
        .collect()
}

/// The header section at the start of `message` (up to and including the blank line).
fn header_of(message: &[u8]) -> &[u8] {
    let mut pos = 0;
    while let Some(i) = message[pos..].iter().position(|&b| b == b'\n') {
        let line = &message[pos..=pos + i];
        pos += i + 1;
        if line == b"\r\n" || line == b"\n" {
            return &message[..pos];
        }
    }
    message
}
