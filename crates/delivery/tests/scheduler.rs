//! The scheduler with fake sinks, a fake router, a fake bouncer and a fake clock over a
//! real queue: retry schedule, last step repeating, expiry and bounce, grouping by route,
//! the concurrency limit, per-destination back-off and session limit.

#![cfg(test)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtorp_delivery::{
    BounceFuture, Bouncer, Clock, FailureReport, Job, Outcome, Parts, Reply, Route, Router,
    Scheduler, SchedulerConfig, Sink, SinkFuture,
};
use smtorp_queue::{Envelope, NewMessage, Origin, Queue, QueueId, RecipientState};

const T0: u64 = 1_800_000_000;

struct FakeClock(AtomicU64);

impl Clock for FakeClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl FakeClock {
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

/// `x@local` -> local user x; `x@<name>.onion` -> remote; anything else unroutable.
struct FakeRouter;

impl Router for FakeRouter {
    fn route(&self, recipient: &str) -> Route {
        let (user, domain) = recipient.rsplit_once('@').unwrap();
        if domain == "local" {
            Route::Local {
                user: user.to_owned(),
                maildir: PathBuf::from(format!("/maildirs/{user}")),
            }
        } else if domain.ends_with(".onion") {
            Route::Remote {
                domain: domain.to_owned(),
            }
        } else {
            Route::Unroutable(Reply::new(550, [5, 1, 2], "not an onion address"))
        }
    }
}

/// What a fake sink saw of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    route: Route,
    recipients: Vec<String>,
    maybe_done: bool,
}

/// Answers each job with the next scripted outcome (for all its recipients), else
/// delivered; optionally holds each job for a while, counting how many run at once.
#[derive(Default)]
struct FakeSink {
    script: Mutex<VecDeque<Outcome>>,
    seen: Mutex<Vec<Seen>>,
    hold: Option<Duration>,
    running: AtomicUsize,
    most: AtomicUsize,
}

impl FakeSink {
    fn scripted(outcomes: impl IntoIterator<Item = Outcome>) -> Arc<FakeSink> {
        Arc::new(FakeSink {
            script: Mutex::new(outcomes.into_iter().collect()),
            ..FakeSink::default()
        })
    }

    fn holding(hold: Duration) -> Arc<FakeSink> {
        Arc::new(FakeSink {
            hold: Some(hold),
            ..FakeSink::default()
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Sink for FakeSink {
    fn deliver<'a>(&'a self, job: Job<'a>) -> SinkFuture<'a> {
        Box::pin(async move {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.seen.lock().unwrap().push(Seen {
                route: job.route.clone(),
                recipients: job
                    .recipients
                    .iter()
                    .map(|&i| job.envelope.recipients[i].address.clone())
                    .collect(),
                maybe_done: job.maybe_done,
            });
            // The content is really there to read.
            assert!(!job.content.open().unwrap().is_empty());
            if let Some(hold) = self.hold {
                tokio::time::sleep(hold).await;
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            let outcome = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Outcome::Delivered);
            vec![outcome; job.recipients.len()]
        })
    }
}

/// What a bounce said: the message, each failed recipient (address, reply, expired), the
/// header returned.
type Report = (QueueId, Vec<(String, Reply, bool)>, Vec<u8>);

#[derive(Default)]
struct FakeBouncer {
    reports: Mutex<Vec<Report>>,
}

impl Bouncer for FakeBouncer {
    fn bounce<'a>(&'a self, report: &'a FailureReport<'a>) -> BounceFuture<'a> {
        let failed = report
            .failed
            .iter()
            .map(|f| (f.address.clone(), f.reply.clone(), f.expired))
            .collect();
        self.reports
            .lock()
            .unwrap()
            .push((report.envelope.id, failed, report.header.to_vec()));
        Box::pin(std::future::ready(Ok(())))
    }
}

struct World {
    _dir: tempfile::TempDir,
    queue: Arc<Queue>,
    clock: Arc<FakeClock>,
    local: Arc<FakeSink>,
    remote: Arc<FakeSink>,
    bouncer: Arc<FakeBouncer>,
    scheduler: Scheduler,
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        retry_after: vec![
            Duration::from_secs(60),
            Duration::from_secs(120),
            Duration::from_secs(300),
        ],
        max_lifetime: Duration::from_secs(3600),
        concurrency: 8,
        sessions_per_destination: 4,
    }
}

async fn world(local: Arc<FakeSink>, remote: Arc<FakeSink>, config: SchedulerConfig) -> World {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path()).unwrap());
    let clock = Arc::new(FakeClock(AtomicU64::new(T0)));
    let bouncer = Arc::new(FakeBouncer::default());
    let scheduler = Scheduler::new(
        Parts {
            queue: queue.clone(),
            router: Arc::new(FakeRouter),
            local: local.clone(),
            remote: Some(remote.clone()),
            bouncer: Some(bouncer.clone()),
            clock: clock.clone(),
        },
        config,
    );
    // What `run` does first: note the messages an earlier process left (none here).
    scheduler.remember_inherited().await;
    World {
        _dir: dir,
        queue,
        clock,
        local,
        remote,
        bouncer,
        scheduler,
    }
}

/// A [`World`] whose run loop runs in the background ([`World::run_in_background`]).
struct Running {
    _dir: tempfile::TempDir,
    queue: Arc<Queue>,
    local: Arc<FakeSink>,
    remote: Arc<FakeSink>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits until `done` holds, looking every `every` for at most 30 s (then fails with
    /// `what`).
    async fn wait_until(&self, what: &str, every: Duration, done: impl Fn(&Running) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(every).await;
        }
    }

    /// Stops the run loop and waits for it to end.
    async fn stop(&mut self) {
        self.stop.send(true).unwrap();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl World {
    /// Starts the run loop in the background.
    fn run_in_background(self) -> Running {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(self.scheduler.run(stop_rx));
        Running {
            _dir: self._dir,
            queue: self.queue,
            local: self.local,
            remote: self.remote,
            stop,
            task: Some(task),
        }
    }

    fn queue_message(&self, sender: &str, to: &[&str]) -> QueueId {
        let id = self.queue.next_id().unwrap();
        let recipients: Vec<String> = to.iter().map(|s| s.to_string()).collect();
        self.queue
            .insert(&NewMessage {
                id,
                sender,
                recipients: &recipients,
                origin: Origin::Smtp,
                arrival: self.clock.now(),
                body: b"Subject: test\r\n\r\nbody\r\n",
            })
            .unwrap();
        id
    }

    fn envelope(&self, id: QueueId) -> Option<Envelope> {
        self.queue.envelope(id).unwrap()
    }
}

fn temporary() -> Outcome {
    Outcome::temporary([4, 3, 0], "busy")
}

fn unreachable() -> Outcome {
    Outcome::temporary([4, 4, 1], "onion connection timed out")
}

#[tokio::test]
async fn retries_follow_the_schedule_and_the_last_step_repeats() {
    let remote = FakeSink::scripted(std::iter::repeat_n(temporary(), 5));
    let w = world(FakeSink::scripted([]), remote, config()).await;
    let id = w.queue_message("a@local", &["b@bbb.onion"]);
    let mut expected_waits = vec![60, 120, 300, 300, 300].into_iter();
    for attempt in 1..=5u32 {
        w.scheduler.deliver_message(id).await;
        let env = w.envelope(id).unwrap();
        let r = &env.recipients[0];
        assert_eq!((r.state, r.attempts), (RecipientState::Pending, attempt));
        assert_eq!(r.last_reply.as_ref().unwrap().enhanced, [4, 3, 0]);
        let wait = expected_waits.next().unwrap();
        assert_eq!(
            env.next_due,
            Some(w.clock.now() + wait),
            "attempt {attempt}"
        );
        // Nothing is due before the wait is over.
        assert!(w
            .queue
            .due(w.clock.now() + wait - 1, 10)
            .unwrap()
            .is_empty());
        w.clock.advance(wait);
    }
    // Then it goes through.
    w.scheduler.deliver_message(id).await;
    assert!(w.envelope(id).is_none(), "delivered and removed");
    assert!(w.bouncer.reports.lock().unwrap().is_empty());
}

#[tokio::test]
async fn expiry_fails_pending_recipients_and_bounces_once() {
    let remote = FakeSink::scripted(std::iter::repeat_n(temporary(), 10));
    let w = world(FakeSink::scripted([]), remote, config()).await;
    let id = w.queue_message("alice@local", &["b@bbb.onion"]);
    w.scheduler.deliver_message(id).await;
    w.clock.advance(3600);
    w.scheduler.deliver_message(id).await;
    assert!(w.envelope(id).is_none(), "expired and removed");
    let reports = w.bouncer.reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    let (bounced, failed, header) = &reports[0];
    assert_eq!(*bounced, id);
    assert_eq!(failed.len(), 1);
    let (address, reply, expired) = &failed[0];
    assert_eq!(address, "b@bbb.onion");
    assert!(*expired);
    assert_eq!(reply.status(), "4.4.7");
    assert!(
        reply.text.contains("busy"),
        "the last attempt's words: {reply}"
    );
    assert_eq!(header, b"Subject: test\r\n\r\n", "the header only");
}

#[tokio::test]
async fn permanent_failures_bounce_but_never_for_a_null_sender() {
    let remote = FakeSink::scripted([
        Outcome::Permanent(Reply::new(550, [5, 1, 1], "no such user")),
        Outcome::Permanent(Reply::new(550, [5, 1, 1], "no such user")),
    ]);
    let w = world(FakeSink::scripted([]), remote, config()).await;
    let id = w.queue_message("alice@local", &["b@bbb.onion"]);
    w.scheduler.deliver_message(id).await;
    assert!(w.envelope(id).is_none());
    let silent = w.queue_message("", &["b@bbb.onion"]);
    w.scheduler.deliver_message(silent).await;
    assert!(w.envelope(silent).is_none());
    let reports = w.bouncer.reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "no bounce for <>");
    assert_eq!(reports[0].1[0].1.status(), "5.1.1");
    assert!(!reports[0].1[0].2);
}

#[tokio::test]
async fn recipients_are_grouped_by_route_and_unroutable_ones_fail() {
    let w = world(FakeSink::scripted([]), FakeSink::scripted([]), config()).await;
    let id = w.queue_message(
        "alice@local",
        &[
            "bob@local",
            "x@bbb.onion",
            "carol@local",
            "y@bbb.onion",
            "z@ccc.onion",
            "bob@example.com",
        ],
    );
    w.scheduler.deliver_message(id).await;
    let local = w.local.seen();
    assert_eq!(local.len(), 2, "one job per local user");
    assert_eq!(local[0].recipients, vec!["bob@local"]);
    assert!(!local[0].maybe_done, "a first attempt in this process");
    let remote = w.remote.seen();
    assert_eq!(remote.len(), 2, "one job per domain");
    assert_eq!(remote[0].recipients, vec!["x@bbb.onion", "y@bbb.onion"]);
    assert_eq!(remote[1].recipients, vec!["z@ccc.onion"]);
    // The clearnet recipient failed and bounced; the others were delivered.
    let reports = w.bouncer.reports.lock().unwrap();
    assert_eq!(reports[0].1[0].0, "bob@example.com");
    assert_eq!(reports[0].1[0].1.status(), "5.1.2");
    assert!(w.envelope(id).is_none());
}

#[tokio::test]
async fn a_retry_looks_for_an_earlier_copy() {
    let local = FakeSink::scripted([Outcome::temporary([4, 3, 0], "disk full")]);
    let w = world(local, FakeSink::scripted([]), config()).await;
    let id = w.queue_message("alice@local", &["bob@local"]);
    w.scheduler.deliver_message(id).await;
    w.clock.advance(60);
    w.scheduler.deliver_message(id).await;
    let seen = w.local.seen();
    assert_eq!(
        seen.iter().map(|s| s.maybe_done).collect::<Vec<_>>(),
        vec![false, true]
    );
}

#[tokio::test]
async fn messages_left_by_an_earlier_process_are_looked_for_first() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path()).unwrap());
    let id = queue.next_id().unwrap();
    let rcpts = vec!["bob@local".to_string()];
    queue
        .insert(&NewMessage {
            id,
            sender: "a@local",
            recipients: &rcpts,
            origin: Origin::Smtp,
            arrival: T0,
            body: b"x\r\n",
        })
        .unwrap();
    // Queued before the scheduler started (in the same second, even), never attempted:
    // a crash may have come after its Maildir write.
    let local = FakeSink::scripted([]);
    let scheduler = Scheduler::new(
        Parts {
            queue: queue.clone(),
            router: Arc::new(FakeRouter),
            local: local.clone(),
            remote: None,
            bouncer: None,
            clock: Arc::new(FakeClock(AtomicU64::new(T0))),
        },
        config(),
    );
    scheduler.remember_inherited().await;
    scheduler.deliver_message(id).await;
    assert!(local.seen()[0].maybe_done);
}

#[tokio::test]
async fn an_unreachable_destination_holds_its_other_mail() {
    let remote = FakeSink::scripted([unreachable()]);
    let w = world(FakeSink::scripted([]), remote, config()).await;
    let first = w.queue_message("alice@local", &["x@bbb.onion"]);
    let second = w.queue_message("alice@local", &["y@bbb.onion"]);
    let elsewhere = w.queue_message("alice@local", &["z@ccc.onion"]);
    w.scheduler.deliver_message(first).await;
    w.scheduler.deliver_message(second).await;
    w.scheduler.deliver_message(elsewhere).await;
    // Only the first reached the sink for bbb; the second waits without an attempt.
    let seen: Vec<String> = w
        .remote
        .seen()
        .iter()
        .map(|s| s.recipients[0].clone())
        .collect();
    assert_eq!(seen, vec!["x@bbb.onion", "z@ccc.onion"]);
    let waiting = w.envelope(second).unwrap();
    assert_eq!(
        waiting.recipients[0].attempts, 0,
        "waiting is not an attempt"
    );
    assert_eq!(
        waiting.next_due,
        Some(T0 + 60),
        "tried when bbb may be back"
    );
    let statuses = w.scheduler.handle().destinations(w.clock.now());
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].name, "bbb.onion");
    assert_eq!(statuses[0].down_until, Some(T0 + 60));
    // After the back-off, bbb is tried again (and now answers).
    w.clock.advance(60);
    w.scheduler.deliver_message(second).await;
    assert!(w.envelope(second).is_none());
    // A retry command clears the back-off at once.
    w.scheduler.handle().reset_backoff();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_and_sessions_per_destination_are_limits() {
    let remote = FakeSink::holding(Duration::from_millis(150));
    let config = SchedulerConfig {
        concurrency: 3,
        sessions_per_destination: 1,
        ..config()
    };
    let w = world(
        FakeSink::holding(Duration::from_millis(150)),
        remote,
        config,
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(w.queue_message("alice@local", &[&format!("r{i}@bbb.onion")]));
    }
    for i in 0..6 {
        ids.push(w.queue_message("alice@local", &[&format!("u{i}@local")]));
    }
    let mut r = w.run_in_background();
    r.wait_until("not all delivered", Duration::from_millis(20), |r| {
        r.queue.is_empty()
    })
    .await;
    r.stop().await;
    let (local, remote) = (&r.local, &r.remote);
    assert_eq!(remote.seen().len(), 4);
    assert_eq!(local.seen().len(), 6);
    assert_eq!(
        remote.most.load(Ordering::SeqCst),
        1,
        "one session to bbb at a time"
    );
    assert!(
        local.most.load(Ordering::SeqCst) <= 3,
        "at most 3 messages at once"
    );
    assert!(
        local.most.load(Ordering::SeqCst) >= 2,
        "deliveries do run in parallel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_loop_records_every_result_once() {
    // The first job fails for now; the rest are delivered.
    let local = FakeSink::scripted([temporary()]);
    let config = SchedulerConfig {
        concurrency: 4,
        ..config()
    };
    let w = world(local, FakeSink::scripted([]), config).await;
    for i in 0..20 {
        w.queue_message("alice@local", &[&format!("u{i}@local")]);
    }
    let mut r = w.run_in_background();
    r.wait_until("not all attempted", Duration::from_millis(20), |r| {
        r.queue.len() <= 1 && r.local.seen().len() >= 20
    })
    .await;
    // The clock stands still: the deferred message waits for its retry, nothing is tried
    // twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.stop().await;
    assert_eq!(r.local.seen().len(), 20);
    let left = r.queue.list().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].recipients[0].attempts, 1);
    assert_eq!(left[0].recipients[0].state, RecipientState::Pending);
    assert_eq!(left[0].next_due, Some(T0 + 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_in_flight_at_shutdown_are_recorded() {
    let w = world(
        FakeSink::holding(Duration::from_millis(300)),
        FakeSink::scripted([]),
        config(),
    )
    .await;
    for i in 0..3 {
        w.queue_message("alice@local", &[&format!("u{i}@local")]);
    }
    let mut r = w.run_in_background();
    r.wait_until("not all started", Duration::from_millis(10), |r| {
        r.local.seen().len() >= 3
    })
    .await;
    r.stop().await;
    assert!(r.queue.is_empty(), "{:?}", r.queue.list().unwrap());
}
