//! Store calls with a bound: sled (0.34) can block for good when its disk fills (a write
//! waits for a log flush that never succeeds, and its concurrency lock then stops every
//! reader). No store call may hold an async worker thread that way, so async callers use
//! [`Queue::call`]: the call runs on the blocking pool, and a call that takes longer than
//! [`STORE_TIMEOUT`] is answered with [`QueueError::Unavailable`] (a 451 for an SMTP
//! client). Until it returns, every new call is refused at once instead of piling up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{Queue, QueueError, STORE_TIMEOUT};

/// Stuck calls, shared by the queue's callers.
#[derive(Debug)]
pub(crate) struct Health {
    /// Calls that went over the time limit and have not returned yet.
    stuck: AtomicUsize,
    /// The time limit, in milliseconds.
    limit_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            stuck: AtomicUsize::new(0),
            limit_ms: AtomicU64::new(STORE_TIMEOUT.as_millis() as u64),
        }
    }
}

impl Health {
    /// `Err` while a call is stuck.
    pub(crate) fn check(&self) -> Result<(), QueueError> {
        match self.stuck.load(Ordering::SeqCst) {
            0 => Ok(()),
            n => Err(QueueError::Unavailable(format!(
                "{n} queue store call(s) went over the time limit and have not returned"
            ))),
        }
    }

    /// The time limit of one call.
    pub(crate) fn limit(&self) -> Duration {
        Duration::from_millis(self.limit_ms.load(Ordering::Relaxed))
    }
}

impl Queue {
    /// Sets the time limit of store calls and flushes (default [`STORE_TIMEOUT`]).
    pub fn set_store_timeout(&self, limit: Duration) {
        self.health
            .limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// Runs `f` on tokio's blocking pool with the store time limit: the way async code calls
    /// the queue (never directly on a worker thread).
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, QueueError>
    where
        F: FnOnce(&Queue) -> Result<T, QueueError> + Send + 'static,
        T: Send + 'static,
    {
        self.health.check()?;
        let limit = self.health.limit();
        if self.flusher.stuck_for() > limit {
            return Err(QueueError::Unavailable(
                "the queue flush has not returned".into(),
            ));
        }
        let queue = Arc::clone(self);
        let mut task = tokio::task::spawn_blocking(move || f(&queue));
        match tokio::time::timeout(limit, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(QueueError::Unavailable(format!(
                "queue store call failed: {join}"
            ))),
            Err(_elapsed) => {
                self.health.stuck.fetch_add(1, Ordering::SeqCst);
                tracing::error!(
                    seconds = limit.as_secs_f64(),
                    "a queue store call did not return in time; the queue is unavailable until it does"
                );
                let queue = Arc::clone(self);
                tokio::spawn(async move {
                    let _ = task.await;
                    queue.health.stuck.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!("the stuck queue store call returned");
                });
                Err(QueueError::Unavailable(format!(
                    "no answer from the queue store in {} s",
                    limit.as_secs_f64()
                )))
            }
        }
    }

    /// True while the queue answers (no stuck call or flush): for `status`.
    pub fn is_available(&self) -> bool {
        self.health.check().is_ok() && self.flusher.stuck_for() <= self.health.limit()
    }
}
