//! Password checks of the submission port, built so that AUTH cannot be turned against the
//! server or its users:
//!
//! - **Bounded memory and CPU.** argon2 needs ~19 MiB per check. At most [`HASH_SLOTS`]
//!   checks run at once, each in a memory block that its slot keeps and reuses (nothing is
//!   allocated per attempt); an attempt that waits more than [`HASH_WAIT`] for a slot gets
//!   `454 4.7.0` without a check.
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
    memory: Mutex<Vec<Vec<argon2::Block>>>,
    records: Mutex<HashMap<Option<IpAddr>, Record>>,
}

impl Authenticator {
    /// Checks against the password file of `directory`'s configuration.
    pub(crate) fn new(directory: Arc<Directory>) -> Authenticator {
        let file = passwd::path(directory.settings());
        Authenticator {
            directory,
            file,
            slots: Semaphore::new(HASH_SLOTS),
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
}

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
}
