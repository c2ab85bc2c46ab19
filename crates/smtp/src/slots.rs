//! Fair slots for one listener's sessions: at most `max` sessions, "stress" once three
//! quarters of them are taken (sessions then get the shorter stress timeouts), and when
//! every slot is taken a newcomer takes the place of the session that has been idle the
//! longest instead of being turned away, so that slow or silent clients (slowloris) cannot
//! keep a legitimate client out. A session is idle while it neither completes a command nor
//! sends message text; one that is being served (an enqueue, a password check) is never
//! chosen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long a session must have been idle before a newcomer may take its place.
pub const EVICT_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The slots of one listener.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    sessions: HashMap<u64, Weak<Slot>>,
    /// Sessions told to leave that have not left yet.
    leaving: usize,
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
    /// Slots for at most `max` sessions (at least one).
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
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

    /// A place for a new session. When all are taken, the session idle the longest (for
    /// at least [`EVICT_AFTER_IDLE`], and not being served) is told to leave
    /// ([`Slot::evicted`]) and the newcomer gets its place; `None` when no session can be
    /// asked to leave (then the caller says 421). At most a tenth more than `max` places
    /// are in use while evicted sessions finish leaving.
    pub fn admit(self: &Arc<Self>) -> Option<Arc<Slot>> {
        let now = self.now_ms();
        let mut table = self.table();
        table.sessions.retain(|_, slot| slot.strong_count() > 0);
        if table.sessions.len() >= self.max {
            let grace = (self.max / 10).max(1);
            if table.leaving >= grace {
                return None;
            }
            let idlest = table
                .sessions
                .values()
                .filter_map(Weak::upgrade)
                .filter(|s| !s.busy.load(Ordering::SeqCst) && !s.leaving.load(Ordering::SeqCst))
                .max_by_key(|s| now.saturating_sub(s.last_progress.load(Ordering::SeqCst)))?;
            let idle = now.saturating_sub(idlest.last_progress.load(Ordering::SeqCst));
            if idle < EVICT_AFTER_IDLE.as_millis() as u64 {
                return None;
            }
            idlest.leaving.store(true, Ordering::SeqCst);
            table.leaving += 1;
            tracing::info!(
                idle_ms = idle,
                "all sessions taken: closing the idlest for a newcomer"
            );
            idlest.evict.notify_one();
        }
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
        Some(slot)
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
        let mut table = self.slots.table();
        table.sessions.remove(&self.id);
        if self.leaving.load(Ordering::SeqCst) {
            table.leaving = table.leaving.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_and_freed() {
        let slots = Slots::new(4);
        let a: Vec<_> = (0..3).map(|_| slots.admit().unwrap()).collect();
        assert_eq!(slots.active(), 3);
        assert!(slots.stressed(), "3 of 4 is stress");
        drop(a);
        assert_eq!(slots.active(), 0);
        assert!(!slots.stressed());
    }

    #[test]
    fn a_newcomer_takes_the_place_of_the_idlest_only() {
        let slots = Slots::new(2);
        let busy = slots.admit().unwrap();
        let idle = slots.admit().unwrap();
        // Both just arrived: nobody has been idle long enough.
        assert!(slots.admit().is_none());
        // Pretend both have been idle for a while; the busy one is being served.
        let long_ago = 0;
        busy.last_progress.store(long_ago, Ordering::SeqCst);
        idle.last_progress.store(long_ago, Ordering::SeqCst);
        std::thread::sleep(EVICT_AFTER_IDLE + Duration::from_millis(50));
        busy.set_busy(true);
        let newcomer = slots.admit().expect("the idle session makes room");
        assert!(idle.leaving.load(Ordering::SeqCst));
        assert!(!busy.leaving.load(Ordering::SeqCst));
        // One place at most is over the limit while the evicted one leaves (max/10, >= 1).
        assert!(slots.admit().is_none());
        drop(idle);
        assert_eq!(slots.active(), 2);
        drop((busy, newcomer));
        assert_eq!(slots.active(), 0);
    }
}
