//! Fair slots for one listener's sessions: at most `max` sessions, "stress" once three
//! quarters of them are taken (sessions then get the shorter stress timeouts), and when
//! every slot is taken a newcomer takes the place of the session that has been idle the
//! longest instead of being turned away, so that slow or silent clients (slowloris) cannot
//! keep a legitimate client out. A session is idle while it neither completes a command nor
//! sends message text; one that is being served (an enqueue, a password check) is never
//! chosen. When every session is making progress (steady senders), a newcomer waits in
//! line, first come first served, for the next place that comes free (for at most the
//! listener's `wait`, and at most `max` of them at once): a place that a session leaves goes
//! to the head of the line, never to whoever connects at that moment, so clients that
//! reconnect at once cannot keep one that waits out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

/// How long a session must have been idle before a newcomer may take its place.
pub const EVICT_AFTER_IDLE: Duration = Duration::from_secs(1);

/// What a newcomer gets from [`Slots::admit`].
#[derive(Debug)]
pub enum Admission {
    /// A place now.
    Now(Arc<Slot>),
    /// In line for the next free place: [`Queued::place`].
    Queued(Queued),
    /// Every place busy and the line full: say 421 now.
    Refused,
}

/// A newcomer's place in line.
#[derive(Debug)]
pub struct Queued {
    rx: oneshot::Receiver<Arc<Slot>>,
    wait: Duration,
}

impl Queued {
    /// The place, once one is handed over; `None` once the listener's wait is over (the
    /// place in line is given up; a place handed over at that moment goes on to the next
    /// in line).
    pub async fn place(self) -> Option<Arc<Slot>> {
        tokio::time::timeout(self.wait, self.rx).await.ok()?.ok()
    }
}

/// The slots of one listener.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    /// How long a newcomer waits in line (zero: no line, 421 at once).
    wait: Duration,
    epoch: Instant,
    next_id: AtomicU64,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    sessions: HashMap<u64, Weak<Slot>>,
    /// Sessions told to leave that have not left yet.
    leaving: usize,
    /// Newcomers waiting for a place, in the order they came.
    line: VecDeque<oneshot::Sender<Arc<Slot>>>,
}

/// One session's place. Dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    slots: Arc<Slots>,
    /// Milliseconds since the listener's epoch of the last progress.
    last_progress: AtomicU64,
    busy: AtomicBool,
    leaving: AtomicBool,
    evict: Notify,
}

impl Slots {
    /// Slots for at most `max` sessions (at least one), where a newcomer that finds every
    /// session busy waits up to `wait` for a place.
    pub fn new(max: usize, wait: Duration) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            wait,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions holding a place now (including those told to leave).
    pub fn active(&self) -> usize {
        self.table().sessions.len()
    }

    /// True once three quarters of the places are taken: sessions get their stress
    /// timeouts.
    pub fn stressed(&self) -> bool {
        self.active() * 4 >= self.max * 3
    }

    /// Newcomers waiting in line now.
    pub fn waiting(&self) -> usize {
        let mut table = self.table();
        table.line.retain(|tx| !tx.is_closed());
        table.line.len()
    }

    /// A place for a new session. When all are taken, the session idle the longest (for
    /// at least [`EVICT_AFTER_IDLE`], and not being served) is told to leave
    /// ([`Slot::evicted`]) and the newcomer gets its place; when none can be asked to
    /// leave, the newcomer queues for the next free place, or is refused (the caller says
    /// 421) when `max` newcomers already wait. At most a tenth more than `max` places are
    /// in use while evicted sessions finish leaving.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let now = self.now_ms();
        let mut table = self.table();
        table.sessions.retain(|_, slot| slot.strong_count() > 0);
        table.line.retain(|tx| !tx.is_closed());
        // A place is never free while newcomers wait (a leaving session hands its place to
        // the head of the line), so a free place with nobody in line is the newcomer's.
        if table.sessions.len() < self.max && table.line.is_empty() {
            return Admission::Now(self.place(&mut table, now));
        }
        if table.sessions.len() >= self.max && self.evict_idlest(&mut table, now) {
            return Admission::Now(self.place(&mut table, now));
        }
        if table.line.len() >= self.max || self.wait.is_zero() {
            return Admission::Refused;
        }
        let (tx, rx) = oneshot::channel();
        table.line.push_back(tx);
        Admission::Queued(Queued {
            rx,
            wait: self.wait,
        })
    }

    /// Tells the session idle the longest to leave, if one may be asked; true if one was.
    fn evict_idlest(&self, table: &mut Table, now: u64) -> bool {
        let grace = (self.max / 10).max(1);
        if table.leaving >= grace {
            return false;
        }
        let Some(idlest) = table
            .sessions
            .values()
            .filter_map(Weak::upgrade)
            .filter(|s| !s.busy.load(Ordering::SeqCst) && !s.leaving.load(Ordering::SeqCst))
            .max_by_key(|s| now.saturating_sub(s.last_progress.load(Ordering::SeqCst)))
        else {
            return false;
        };
        let idle = now.saturating_sub(idlest.last_progress.load(Ordering::SeqCst));
        if idle < EVICT_AFTER_IDLE.as_millis() as u64 {
            return false;
        }
        idlest.leaving.store(true, Ordering::SeqCst);
        table.leaving += 1;
        tracing::info!(
            idle_ms = idle,
            "all sessions taken: closing the idlest for a newcomer"
        );
        idlest.evict.notify_one();
        true
    }

    /// A new place, entered in `table`.
    fn place(self: &Arc<Self>, table: &mut Table, now: u64) -> Arc<Slot> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            id,
            slots: Arc::clone(self),
            last_progress: AtomicU64::new(now),
            busy: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            evict: Notify::new(),
        });
        table.sessions.insert(id, Arc::downgrade(&slot));
        slot
    }

    /// Hands free places to the newcomers in line, in order. Places whose newcomer gave
    /// up at that very moment are returned, to be dropped once the table is unlocked
    /// (dropping one hands it on).
    fn hand_over(self: &Arc<Self>, table: &mut Table) -> Vec<Arc<Slot>> {
        let mut unwanted = Vec::new();
        while table.sessions.len() < self.max {
            let Some(tx) = table.line.pop_front() else {
                break;
            };
            if tx.is_closed() {
                continue;
            }
            let slot = self.place(table, self.now_ms());
            if let Err(slot) = tx.send(slot) {
                unwanted.push(slot);
            }
        }
        unwanted
    }
}

impl Slot {
    /// The session made progress (completed a command, received message text).
    pub fn progress(&self) {
        let now = self.slots.now_ms();
        self.last_progress.store(now, Ordering::SeqCst);
    }

    /// The session is being served (enqueue, password check): never evicted meanwhile.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::SeqCst);
        if !busy {
            self.progress();
        }
    }

    /// True while the listener is under stress.
    pub fn stressed(&self) -> bool {
        self.slots.stressed()
    }

    /// Resolves when the listener wants this place for a newcomer.
    pub async fn evicted(&self) {
        if self.leaving.load(Ordering::SeqCst) {
            return;
        }
        self.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let unwanted = {
            let mut table = self.slots.table();
            table.sessions.remove(&self.id);
            if self.leaving.load(Ordering::SeqCst) {
                table.leaving = table.leaving.saturating_sub(1);
            }
            self.slots.hand_over(&mut table)
        };
        drop(unwanted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn now(slots: &Arc<Slots>) -> Arc<Slot> {
        match slots.admit() {
            Admission::Now(slot) => slot,
            other => panic!("no place now: {other:?}"),
        }
    }

    fn queued(slots: &Arc<Slots>) -> Queued {
        match slots.admit() {
            Admission::Queued(q) => q,
            other => panic!("not queued: {other:?}"),
        }
    }

    #[test]
    fn places_are_counted_and_freed() {
        let slots = Slots::new(4, WAIT);
        let a: Vec<_> = (0..3).map(|_| now(&slots)).collect();
        assert_eq!(slots.active(), 3);
        assert!(slots.stressed(), "3 of 4 is stress");
        drop(a);
        assert_eq!(slots.active(), 0);
        assert!(!slots.stressed());
    }

    #[tokio::test]
    async fn a_newcomer_takes_the_place_of_the_idlest_only() {
        let slots = Slots::new(2, WAIT);
        let busy = now(&slots);
        let idle = now(&slots);
        // Both just arrived: nobody has been idle long enough; the newcomer waits in line.
        let waiting = queued(&slots);
        drop(waiting);
        // Pretend both have been idle for a while; the busy one is being served.
        let long_ago = 0;
        busy.last_progress.store(long_ago, Ordering::SeqCst);
        idle.last_progress.store(long_ago, Ordering::SeqCst);
        std::thread::sleep(EVICT_AFTER_IDLE + Duration::from_millis(50));
        busy.set_busy(true);
        let newcomer = now(&slots);
        assert!(idle.leaving.load(Ordering::SeqCst));
        assert!(!busy.leaving.load(Ordering::SeqCst));
        // One place at most is over the limit while the evicted one leaves (max/10, >= 1):
        // the next newcomer waits.
        let next = queued(&slots);
        drop(idle);
        assert_eq!(slots.active(), 2);
        drop((busy, newcomer));
        // The place the busy session left went to the one in line.
        let place = next.place().await.expect("handed over");
        assert_eq!(slots.active(), 1);
        drop(place);
        assert_eq!(slots.active(), 0);
    }

    /// Steady senders hold every place: newcomers wait in line and get the places that
    /// come free in the order they came, ahead of anyone connecting at that moment; the
    /// line is as long as the number of places; one that gave up is passed over.
    #[tokio::test]
    async fn newcomers_wait_in_line_for_the_next_free_place() {
        let slots = Slots::new(2, WAIT);
        let mut senders: Vec<_> = (0..2).map(|_| now(&slots)).collect();
        let first = queued(&slots);
        let gave_up = queued(&slots);
        assert!(
            matches!(slots.admit(), Admission::Refused),
            "the line is full"
        );
        assert_eq!(slots.waiting(), 2);
        drop(gave_up);
        assert_eq!(slots.waiting(), 1);
        let second = queued(&slots);

        drop(senders.pop());
        // The freed place is the first one's; a reconnecting client does not get it.
        assert!(matches!(slots.admit(), Admission::Queued(_)));
        let a = first.place().await.expect("first in line");
        assert_eq!(slots.active(), 2);
        drop(senders.pop());
        let b = second.place().await.expect("second in line");
        assert_eq!(slots.active(), 2);
        drop((a, b));
        assert_eq!(slots.active(), 0);
        assert!(matches!(slots.admit(), Admission::Now(_)));
    }

    #[tokio::test]
    async fn a_newcomer_waits_no_longer_than_asked() {
        let slots = Slots::new(1, Duration::from_millis(50));
        let sender = now(&slots);
        let waiting = queued(&slots);
        assert!(waiting.place().await.is_none());
        assert_eq!(slots.waiting(), 0);
        // The place it gave up is not lost: the next one gets it when the sender leaves.
        let next = queued(&slots);
        drop(sender);
        assert!(next.place().await.is_some());
    }

    #[test]
    fn no_line_when_the_wait_is_zero() {
        let slots = Slots::new(1, Duration::ZERO);
        let _sender = now(&slots);
        assert!(matches!(slots.admit(), Admission::Refused));
    }
}
