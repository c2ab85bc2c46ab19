//! Password checks of the submission port, built so that AUTH cannot be turned against the
//! server or its users:
//!
//! - **Bounded memory and CPU.** argon2 needs ~19 MiB per check. At most [`HASH_SLOTS`]
//!   checks run at once, each in a memory block that its slot keeps and reuses while
//!   attempts follow each other (nothing is allocated per attempt during a flood); an
//!   attempt that waits more than [`HASH_WAIT`] for a slot gets `454 4.7.0` without a
//!   check. When the last attempt of a burst is done the blocks are freed and given back
//!   to the kernel, so the resident memory returns to where it was.
//! - **Budgets counted before the slow check.** Each client address has a budget of
//!   [`ADDRESS_FAILURE_LIMIT`] failures per [`FAILURE_WINDOW`]; an attempt reserves its
//!   place in the budget before the password is checked, so concurrent attempts cannot
//!   multiply it. Attempts beyond the budget get `454 4.7.0` (never `535`: a client can
//!   tell "refused unchecked" from "wrong password") without a check.
//! - **Penalties per address, not per user.** Failures slow down and stop the address they
//!   come from (growing delays, then the budget), not the user name: an attacker guessing
//!   alice's password from one address cannot lock out alice connecting from another.
//!
//! Passwords are never logged; user names are logged shortened.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtorp_smtp::{Credentials, Reply};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::passwd;
use crate::policy::Directory;

/// Password checks running at once.
pub(crate) const HASH_SLOTS: usize = 2;
/// How long an attempt waits for a free slot before it is told to try later.
pub(crate) const HASH_WAIT: Duration = Duration::from_secs(5);
/// Failures from one client address within [`FAILURE_WINDOW`] after which its attempts are
/// refused unchecked.
pub(crate) const ADDRESS_FAILURE_LIMIT: u32 = 10;
/// The window of [`ADDRESS_FAILURE_LIMIT`].
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Client addresses tracked at most (the oldest entries are dropped first).
const MAX_TRACKED: usize = 4096;
/// The longest delay before a failure is answered.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// What one client address did recently.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Failed checks in the window.
    failures: u32,
    /// Checks under way.
    in_flight: u32,
    /// When the window started.
    since: Instant,
}

/// The reply for "not checked, try later".
fn try_later() -> Reply {
    Reply::new(
        454,
        [4, 7, 0],
        "Temporary authentication failure, try again later",
    )
}

/// The reply for a wrong user name or password.
fn invalid() -> Reply {
    Reply::new(535, [5, 7, 8], "Authentication credentials invalid")
}

/// A user name fit for a log line: at most 64 characters, printed with `?` (escaped).
fn loggable(user: &str) -> String {
    user.chars().take(64).collect()
}

/// The submission port's password checks (one per daemon).
pub(crate) struct Authenticator {
    directory: Arc<Directory>,
    file: PathBuf,
    slots: Semaphore,
    /// Attempts waiting for a slot or being checked.
    wanting: AtomicUsize,
    /// Memory blocks kept between checks while attempts follow each other.
    memory: Mutex<Vec<Vec<argon2::Block>>>,
    records: Mutex<HashMap<Option<IpAddr>, Record>>,
}

impl Authenticator {
    /// Checks against the password file of `directory`'s configuration.
    pub(crate) fn new(directory: Arc<Directory>) -> Authenticator {
        map_large_blocks_on_their_own();
        let file = passwd::path(directory.settings());
        Authenticator {
            directory,
            file,
            slots: Semaphore::new(HASH_SLOTS),
            wanting: AtomicUsize::new(0),
            memory: Mutex::new(Vec::new()),
            records: Mutex::new(HashMap::new()),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<Option<IpAddr>, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a place in `peer`'s budget, or `Err` when it is used up. Returns the
    /// failures so far (for the delay).
    fn reserve(&self, peer: Option<IpAddr>) -> Result<u32, Reply> {
        let mut records = self.records();
        if records.len() >= MAX_TRACKED && !records.contains_key(&peer) {
            records.retain(|_, r| r.in_flight > 0 || r.since.elapsed() <= FAILURE_WINDOW);
            if records.len() >= MAX_TRACKED {
                if let Some(oldest) = records
                    .iter()
                    .filter(|(_, r)| r.in_flight == 0)
                    .min_by_key(|(_, r)| r.since)
                    .map(|(k, _)| *k)
                {
                    records.remove(&oldest);
                }
            }
        }
        let record = records.entry(peer).or_insert(Record {
            failures: 0,
            in_flight: 0,
            since: Instant::now(),
        });
        if record.in_flight == 0 && record.since.elapsed() > FAILURE_WINDOW {
            record.failures = 0;
            record.since = Instant::now();
        }
        if record.failures.saturating_add(record.in_flight) >= ADDRESS_FAILURE_LIMIT {
            return Err(try_later());
        }
        record.in_flight += 1;
        Ok(record.failures)
    }

    /// Settles a reservation: a failure stays in the budget, a success clears it.
    fn settle(&self, peer: Option<IpAddr>, failed: bool) {
        let mut records = self.records();
        if let Some(record) = records.get_mut(&peer) {
            record.in_flight = record.in_flight.saturating_sub(1);
            if failed {
                if record.failures == 0 {
                    record.since = Instant::now();
                }
                record.failures = record.failures.saturating_add(1);
            } else {
                record.failures = 0;
            }
        }
    }

    /// Checks `credentials` from `peer` (the client's address, when known): the user name
    /// the session will know the client by, or the reply (535 wrong, 454 not checked).
    pub(crate) async fn check(
        &self,
        peer: Option<IpAddr>,
        credentials: Credentials,
    ) -> Result<String, Reply> {
        let Credentials {
            user: login,
            password,
        } = credentials;
        let failures = match self.reserve(peer) {
            Ok(failures) => failures,
            Err(reply) => {
                warn!(user = ?loggable(&login), ?peer, "AUTH refused unchecked: too many recent failures from this address");
                return Err(reply);
            }
        };
        let result = self.verify(&login, password).await;
        let failed = !matches!(result, Ok(Some(_)));
        // A refusal without a check (no slot) is not a failure of the client.
        if result.is_err() {
            let mut records = self.records();
            if let Some(record) = records.get_mut(&peer) {
                record.in_flight = record.in_flight.saturating_sub(1);
            }
        } else {
            self.settle(peer, failed);
        }
        match result {
            Ok(Some(user)) => {
                info!(user = %user, "AUTH succeeded");
                Ok(user)
            }
            Ok(None) => {
                // Growing delays per address: 0.25 s, 0.5 s, 1 s, 2 s, ... at most 8 s.
                let delay = Duration::from_millis(250u64 << failures.min(5)).min(MAX_DELAY);
                warn!(user = ?loggable(&login), ?peer, recent_failures = failures + 1, "AUTH failed");
                tokio::time::sleep(delay).await;
                Err(invalid())
            }
            Err(reply) => Err(reply),
        }
    }

    /// The slow part: `Ok(Some(user))` if the password is right, `Ok(None)` if not,
    /// `Err` if no slot came free in time.
    async fn verify(&self, login: &str, password: String) -> Result<Option<String>, Reply> {
        let _wanting = Wanting::enter(self);
        let Ok(permit) = tokio::time::timeout(HASH_WAIT, self.slots.acquire()).await else {
            warn!("AUTH refused unchecked: every password check slot is busy");
            return Err(try_later());
        };
        let Ok(_permit) = permit else {
            return Err(try_later());
        };
        let user = passwd::login_user(&self.directory, login);
        let mut memory = self
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        let file = self.file.clone();
        let candidate = user.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let ok = passwd::check_with(&file, candidate.as_deref(), &password, &mut memory);
            (ok, memory)
        })
        .await;
        let ok = match checked {
            Ok((ok, memory)) => {
                self.memory
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(memory);
                ok
            }
            Err(_) => false,
        };
        Ok(if ok { user } else { None })
    }

    /// Bytes of argon2 memory kept for the next checks.
    #[cfg(test)]
    fn kept_memory(&self) -> usize {
        let pool = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        pool.iter()
            .map(|m| m.capacity() * std::mem::size_of::<argon2::Block>())
            .sum()
    }
}

/// An attempt counted in [`Authenticator::wanting`]; the last one to leave frees the kept
/// memory blocks.
struct Wanting<'a>(&'a Authenticator);

impl<'a> Wanting<'a> {
    fn enter(auth: &'a Authenticator) -> Wanting<'a> {
        auth.wanting.fetch_add(1, Ordering::SeqCst);
        Wanting(auth)
    }
}

impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        if self.0.wanting.fetch_sub(1, Ordering::SeqCst) != 1 {
            return; // others are waiting or checking: they reuse the blocks
        }
        // Unmapped at once (see `map_large_blocks_on_their_own`).
        drop(std::mem::take(
            &mut *self.0.memory.lock().unwrap_or_else(|p| p.into_inner()),
        ));
    }
}

/// Makes the allocator hand blocks as large as argon2's straight back to the kernel when
/// they are freed. glibc serves a large request with its own mapping only until the first
/// such mapping is freed; then it raises its threshold and serves the next ones from a
/// thread's heap, whose free top it never gives back (not even `malloc_trim` does, for
/// heaps other than the main one). A fixed threshold keeps every block of this size a
/// mapping of its own, unmapped at free. Called once, before the first check.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn map_large_blocks_on_their_own() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt takes two integers and changes a setting of the allocator under
        // its own lock; no memory is touched.
        #[allow(unsafe_code)] // reason: glibc's mallopt has no safe wrapper
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BLOCK as libc::c_int) };
        if ok != 1 {
            warn!("could not set the allocator's mmap threshold: argon2 memory may stay resident after a burst");
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn map_large_blocks_on_their_own() {}

/// Allocations from this size on get a mapping of their own (see
/// [`map_large_blocks_on_their_own`]); argon2's blocks are 19 MiB.
const LARGE_BLOCK: usize = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(Arc::new(crate::policy::tests::directory()))
    }

    #[test]
    fn the_budget_is_reserved_before_the_check() {
        let a = authenticator();
        let peer = Some(IpAddr::from([10, 0, 0, 1]));
        // Concurrent attempts each take a place; the eleventh is refused unchecked.
        for _ in 0..ADDRESS_FAILURE_LIMIT {
            a.reserve(peer).unwrap();
        }
        let refused = a.reserve(peer).unwrap_err();
        assert_eq!((refused.code, refused.enhanced), (454, [4, 7, 0]));
        // Another address is not affected.
        assert!(a.reserve(Some(IpAddr::from([10, 0, 0, 2]))).is_ok());
        // Failures keep their places; a success clears the budget.
        for _ in 0..ADDRESS_FAILURE_LIMIT {
            a.settle(peer, true);
        }
        assert!(a.reserve(peer).is_err());
        a.records().get_mut(&peer).unwrap().in_flight = 1;
        a.settle(peer, false);
        assert!(a.reserve(peer).is_ok());
    }

    fn wrong_password() -> Credentials {
        Credentials {
            user: "alice".into(),
            password: "not the password".into(),
        }
    }

    /// The blocks stay while other attempts want a slot (no allocation per attempt during a
    /// flood) and are freed when the last attempt of the burst is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_memory_is_kept_during_a_burst_and_freed_after_it() {
        let a = Arc::new(authenticator());
        // Another attempt still wants a slot: the finished check leaves its block behind.
        let other = Wanting::enter(&a);
        let refused = a
            .check(Some(IpAddr::from([10, 0, 0, 1])), wrong_password())
            .await
            .unwrap_err();
        assert_eq!(refused.code, 535);
        assert_eq!(
            a.kept_memory(),
            19 * 1024 * 1024,
            "argon2id default: 19 MiB"
        );
        drop(other);
        assert_eq!(a.kept_memory(), 0);

        // A burst of concurrent attempts: at most one block per slot while it lasts, none
        // after.
        let attempts: Vec<_> = (0..6u8)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move {
                    let result = a
                        .check(Some(IpAddr::from([10, 0, 1, i])), wrong_password())
                        .await;
                    (result.unwrap_err().code, a.kept_memory())
                })
            })
            .collect();
        for attempt in attempts {
            let (code, kept) = attempt.await.unwrap();
            assert_eq!(code, 535);
            assert!(kept <= HASH_SLOTS * 19 * 1024 * 1024, "{kept}");
        }
        assert_eq!(a.kept_memory(), 0);
        assert_eq!(a.wanting.load(Ordering::SeqCst), 0);
    }
}
