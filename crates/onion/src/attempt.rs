//! Outbound connection attempts that never wait behind a stuck one.
//!
//! arti keeps what it knows about an onion service (the descriptor, how each introduction
//! point fared, the open rendezvous circuit, and the connection task in progress) per
//! isolation token. A second request with the same token joins the task already running
//! instead of starting its own, and that task outlives our timeout. After a peer restarts, an
//! introduction point can acknowledge an INTRODUCE1 that never reaches the live service; the
//! task then waits for a RENDEZVOUS2 that never comes, for up to about 8 minutes on a client
//! that has not yet learnt its circuit build times (docs/onion.md). So:
//!
//! - a failed or timed-out attempt retires the destination's token: the next attempt starts
//!   from scratch in arti (descriptor fetched again, new circuits), never behind the old task;
//! - an attempt that has not succeeded after a while gets a second one beside it, on a fresh
//!   token, and the first success wins.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use arti_client::IsolationToken;
use futures::future;
use tracing::info;

/// One isolation token per destination domain, replaced when an attempt with it fails.
#[derive(Default)]
pub(crate) struct Isolation {
    tokens: Mutex<HashMap<String, Entry>>,
}

/// A destination's token, and whether an attempt used it (arti may then hold state for it).
#[derive(Clone, Copy)]
struct Entry {
    token: IsolationToken,
    used: bool,
}

impl Isolation {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token for an attempt to `domain` starting now, and whether an earlier attempt
    /// already used it.
    pub(crate) fn take(&self, domain: &str) -> (IsolationToken, bool) {
        let mut map = self.lock();
        let entry = map.entry(domain.to_owned()).or_insert_with(|| Entry {
            token: IsolationToken::new(),
            used: false,
        });
        let before = *entry;
        entry.used = true;
        (before.token, before.used)
    }

    /// Retires `stale` for `domain` and returns its replacement, marked used if `use_now`
    /// (an attempt starts with it at once). If another attempt already replaced `stale`, its
    /// replacement is kept (concurrent sessions to one peer keep sharing one fresh arti task).
    pub(crate) fn renew(
        &self,
        domain: &str,
        stale: IsolationToken,
        use_now: bool,
    ) -> IsolationToken {
        let mut map = self.lock();
        let entry = map.entry(domain.to_owned()).or_insert(Entry {
            token: stale,
            used: true,
        });
        if entry.token == stale {
            *entry = Entry {
                token: IsolationToken::new(),
                used: false,
            };
        }
        entry.used |= use_now;
        entry.token
    }

    /// Makes `token`, which just reached `domain`, the one later streams use: its circuit is
    /// open and known to work.
    pub(crate) fn keep(&self, domain: &str, token: IsolationToken) {
        self.lock()
            .insert(domain.to_owned(), Entry { token, used: true });
    }
}

/// How an outbound attempt ended without a stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure<E> {
    /// Every attempt failed; the error of the last one.
    Failed(E),
    /// No attempt succeeded within the connect timeout.
    TimedOut,
}

/// Connects to `domain` with `attempt(token)`, all of it within `timeout`:
///
/// - if the attempt has not finished after `fresh_after`, a second one starts beside it on
///   a fresh token; the first success wins, and a failure waits for the other attempt;
/// - if it fails with a token that an earlier attempt used without failing (arti may have
///   answered from what it remembered: a circuit, a descriptor, a task), it is retried at
///   once on a fresh token. After a failure there is nothing to forget (arti also drops a
///   failed task's descriptor), so a failure on a fresh token is returned as it is;
/// - any failure retires the token used last, so the next call starts afresh.
pub(crate) async fn connect<T, E, F, Fut>(
    isolation: &Isolation,
    domain: &str,
    fresh_after: Duration,
    timeout: Duration,
    attempt: F,
) -> Result<T, Failure<E>>
where
    F: Fn(IsolationToken) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let (first_token, reused) = isolation.take(domain);
    let mut last_token = first_token;
    let tagged = |token: IsolationToken| {
        let fut = attempt(token);
        async move { fut.await.map(|value| (value, token)) }
    };
    let race = async {
        let mut first = Box::pin(tagged(first_token));
        let first_failed = tokio::select! {
            done = &mut first => match done {
                Ok(won) => return Ok(won),
                Err(e) if !reused => return Err(e),
                Err(_) => true,
            },
            () = tokio::time::sleep(fresh_after) => false,
        };
        let second_token = isolation.renew(domain, first_token, true);
        last_token = second_token;
        let second = Box::pin(tagged(second_token));
        if first_failed {
            info!(
                domain,
                "onion connection failed with what Tor remembered of this peer; retrying at once afresh"
            );
            return second.await;
        }
        info!(
            domain,
            after_secs = fresh_after.as_secs_f64(),
            "no onion connection yet; starting a fresh attempt beside it (new circuits, descriptor fetched again)"
        );
        future::select_ok([first, second])
            .await
            .map(|(won, _still_running)| won)
    };
    let outcome = tokio::time::timeout(timeout, race).await;
    match outcome {
        Ok(Ok((value, token))) => {
            isolation.keep(domain, token);
            Ok(value)
        }
        Ok(Err(e)) => {
            isolation.renew(domain, last_token, false);
            Err(Failure::Failed(e))
        }
        Err(_) => {
            isolation.renew(domain, last_token, false);
            Err(Failure::TimedOut)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    /// The token the next attempt to `domain` would use, if any.
    fn peek(iso: &Isolation, domain: &str) -> Option<IsolationToken> {
        iso.lock().get(domain).map(|e| e.token)
    }

    /// Records the tokens tried, in order.
    #[derive(Default)]
    struct Tried(Mutex<Vec<IsolationToken>>);

    impl Tried {
        /// Records `t`; returns its position (0 for the first attempt).
        fn push(&self, t: IsolationToken) -> usize {
            let mut v = self.0.lock().unwrap();
            v.push(t);
            v.len() - 1
        }
        fn all(&self) -> Vec<IsolationToken> {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn a_domain_keeps_its_token_until_renewed() {
        let iso = Isolation::default();
        let (a, used) = iso.take("a.onion");
        assert!(!used);
        assert_eq!(iso.take("a.onion"), (a, true));
        assert_ne!(iso.take("b.onion").0, a);
        let fresh = iso.renew("a.onion", a, false);
        assert_ne!(fresh, a);
        assert_eq!(iso.take("a.onion"), (fresh, false));
        // A second session renewing the same stale token joins the first renewal.
        assert_eq!(iso.renew("a.onion", a, true), fresh);
        assert_eq!(iso.take("a.onion"), (fresh, true));
    }

    #[tokio::test]
    async fn a_quick_success_keeps_the_token() {
        let iso = Isolation::default();
        let got = connect(
            &iso,
            "a.onion",
            LONG,
            LONG,
            |t| async move { Ok::<_, ()>(t) },
        )
        .await;
        let token = got.unwrap();
        assert_eq!(peek(&iso, "a.onion"), Some(token));
        // The next connection reuses it (and arti its circuit).
        let again = connect(
            &iso,
            "a.onion",
            LONG,
            LONG,
            |t| async move { Ok::<_, ()>(t) },
        )
        .await;
        assert_eq!(again, Ok(token));
    }

    #[tokio::test]
    async fn a_failure_makes_the_next_attempt_start_fresh() {
        let iso = Isolation::default();
        let tried = Tried::default();
        let attempt = |t| {
            tried.push(t);
            async { Err::<(), _>("nack") }
        };
        let got = connect(&iso, "a.onion", LONG, LONG, attempt).await;
        assert_eq!(got, Err(Failure::Failed("nack")));
        // A first attempt on a fresh token is not repeated at once: nothing was stale.
        assert_eq!(tried.all().len(), 1);
        assert_ne!(peek(&iso, "a.onion"), Some(tried.all()[0]));
    }

    #[tokio::test]
    async fn after_a_failure_the_next_call_makes_one_attempt() {
        let iso = Isolation::default();
        let tried = Tried::default();
        let attempt = |t| {
            tried.push(t);
            async { Err::<(), _>("service down") }
        };
        for _ in 0..3 {
            let got = connect(&iso, "a.onion", LONG, LONG, attempt).await;
            assert_eq!(got, Err(Failure::Failed("service down")));
        }
        let all = tried.all();
        assert_eq!(all.len(), 3);
        assert!(all[0] != all[1] && all[1] != all[2] && all[0] != all[2]);
    }

    #[tokio::test]
    async fn a_failure_with_a_used_token_is_retried_at_once_afresh() {
        let iso = Isolation::default();
        let (old, _) = iso.take("a.onion"); // an earlier delivery used it
        let tried = Tried::default();
        let attempt = |t: IsolationToken| {
            tried.push(t);
            async move {
                if t == old {
                    Err("stale state")
                } else {
                    Ok(t)
                }
            }
        };
        let fresh = connect(&iso, "a.onion", LONG, LONG, attempt).await.unwrap();
        assert_ne!(fresh, old);
        assert_eq!(tried.all(), vec![old, fresh]);
        assert_eq!(peek(&iso, "a.onion"), Some(fresh));
    }

    #[tokio::test]
    async fn a_timeout_makes_the_next_attempt_start_fresh() {
        let iso = Isolation::default();
        let tried = Tried::default();
        let never = |t| {
            tried.push(t);
            future::pending::<Result<(), ()>>()
        };
        let got = connect(&iso, "a.onion", LONG, Duration::from_millis(10), never).await;
        assert_eq!(got, Err(Failure::TimedOut));
        assert_eq!(tried.all().len(), 1);
        assert_ne!(peek(&iso, "a.onion"), Some(tried.all()[0]));
    }

    #[tokio::test]
    async fn a_stuck_attempt_gets_a_fresh_one_beside_it_and_the_fresh_one_wins() {
        let iso = Isolation::default();
        let tried = Tried::default();
        let attempt = |t: IsolationToken| {
            let stuck = tried.push(t) == 0;
            async move {
                if stuck {
                    future::pending::<()>().await;
                }
                Ok::<_, ()>(t)
            }
        };
        let got = connect(&iso, "a.onion", Duration::from_millis(1), LONG, attempt).await;
        let fresh = got.unwrap();
        let all = tried.all();
        assert_eq!(all.len(), 2);
        assert_ne!(all[0], fresh);
        assert_eq!(all[1], fresh);
        // Later streams use the connection that works.
        assert_eq!(peek(&iso, "a.onion"), Some(fresh));
    }

    #[tokio::test]
    async fn when_the_fresh_attempt_fails_the_first_may_still_succeed() {
        let iso = Isolation::default();
        let tried = Tried::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = (Mutex::new(Some(tx)), Mutex::new(Some(rx)));
        // The first attempt finishes only once the fresh one has failed.
        let attempt = |t: IsolationToken| {
            let first = tried.push(t) == 0;
            let rx = if first {
                rx.lock().unwrap().take()
            } else {
                None
            };
            let tx = if first {
                None
            } else {
                tx.lock().unwrap().take()
            };
            async move {
                match (rx, tx) {
                    (Some(rx), _) => {
                        rx.await.unwrap();
                        Ok(t)
                    }
                    (None, Some(tx)) => {
                        tx.send(()).unwrap();
                        Err("fresh attempt failed")
                    }
                    (None, None) => Err("a third attempt"),
                }
            }
        };
        let got = connect(&iso, "a.onion", Duration::from_millis(1), LONG, attempt).await;
        let first = tried.all()[0];
        assert_eq!(got, Ok(first));
        assert_eq!(peek(&iso, "a.onion"), Some(first));
    }
}
