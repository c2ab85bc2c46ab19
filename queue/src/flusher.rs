//! Group commit: one thread owns the fsync of the store and lets every caller that is
//! waiting at the same moment share one: sled's `flush()`, then the spool folder (new
//! files' entries, and the disk cache's flush).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::spool::{SpoolDir, POOL_LINGER};
use crate::QueueError;

/// How long dropping the queue waits for the flusher's final flush before it leaves the
/// thread behind (a flush stuck on a full or dead disk must not stop a shutdown).
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// How often an idle flusher looks for pooled spool files to empty.
const POOL_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The answer of the flusher: `Err` carries the text of the sled error.
pub(crate) type FlushResult = Result<(), String>;

/// One caller waiting for a flush that starts after its request was sent.
pub(crate) type Waiter = oneshot::Sender<FlushResult>;

/// The handle on the flusher thread. Dropping it closes the channel; the thread does a
/// final flush and ends, and the drop waits for it.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
    done: std::sync::Mutex<mpsc::Receiver<()>>,
    flushes: Arc<AtomicU64>,
    /// When the flush in progress started (ms since `epoch`), 0 when idle.
    busy_since: Arc<AtomicU64>,
    epoch: Instant,
}

impl Flusher {
    /// Starts the flusher thread on a clone of `db`.
    pub(crate) fn start(db: sled::Db, spool: SpoolDir) -> Result<Flusher, QueueError> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let (done_tx, done) = mpsc::channel::<()>();
        let flushes = Arc::new(AtomicU64::new(0));
        let busy_since = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let state = State {
            db,
            spool,
            flushes: Arc::clone(&flushes),
            busy_since: Arc::clone(&busy_since),
            epoch,
        };
        let thread = std::thread::Builder::new()
            .name("smtorp-queue-flush".into())
            .spawn(move || {
                run(&state, &rx);
                let _ = done_tx.send(());
            })
            .map_err(|e| QueueError::Store(sled::Error::Io(e)))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            done: std::sync::Mutex::new(done),
            flushes,
            busy_since,
            epoch,
        })
    }

    /// How long the flush in progress has been running (zero when idle).
    pub(crate) fn stuck_for(&self) -> Duration {
        match self.busy_since.load(Ordering::SeqCst) {
            0 => Duration::ZERO,
            since => {
                let now = self.epoch.elapsed().as_millis() as u64;
                Duration::from_millis(now.saturating_sub(since))
            }
        }
    }

    /// Queues a request; the answer arrives on the receiver.
    pub(crate) fn request(&self) -> Result<oneshot::Receiver<FlushResult>, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(QueueError::Closed)?
            .send(tx)
            .map_err(|_| QueueError::Closed)?;
        Ok(rx)
    }

    /// How many group-commit flushes ran so far.
    pub(crate) fn count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        match done.recv_timeout(FINAL_FLUSH_WAIT) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() {
                    tracing::error!("queue flusher thread panicked");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::error!("the final queue flush did not finish; leaving it behind");
            }
        }
    }
}

/// Maps the answer of the flusher to the result of `sync`.
pub(crate) fn answer(
    got: Result<FlushResult, oneshot::error::RecvError>,
) -> Result<(), QueueError> {
    match got {
        Ok(Ok(())) => Ok(()),
        Ok(Err(msg)) => Err(QueueError::Store(sled::Error::Io(std::io::Error::other(
            format!("queue flush failed: {msg}"),
        )))),
        Err(_) => Err(QueueError::Closed),
    }
}

/// What the flusher thread works with.
struct State {
    db: sled::Db,
    spool: SpoolDir,
    flushes: Arc<AtomicU64>,
    busy_since: Arc<AtomicU64>,
    epoch: Instant,
}

impl State {
    /// One flush: sled, then the spool folders (whose fsync also flushes the disk's
    /// cache for sled's writes: see `SpoolDir::sync`).
    fn flush(&self) -> FlushResult {
        let started = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.busy_since.store(started, Ordering::SeqCst);
        let result = self
            .db
            .flush()
            .map(drop)
            .map_err(|e| e.to_string())
            .and_then(|()| self.spool.sync().map_err(|e| format!("spool folder: {e}")));
        self.busy_since.store(0, Ordering::SeqCst);
        result
    }
}

/// The flusher loop: block for the first request, take every other request already
/// queued, flush once, answer them all; between requests, empty the pooled spool files
/// that have lingered.
fn run(state: &State, rx: &mpsc::Receiver<Waiter>) {
    loop {
        let first = match rx.recv_timeout(POOL_SWEEP_EVERY) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                state.spool.empty_idle_pool_files(POOL_LINGER);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut waiters = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiters.push(more);
        }
        let result = state.flush();
        let n = state.flushes.fetch_add(1, Ordering::Relaxed) + 1;
        match &result {
            Ok(()) => tracing::debug!(waiters = waiters.len(), flush = n, "queue group commit"),
            Err(e) => tracing::error!(waiters = waiters.len(), error = %e, "queue flush failed"),
        }
        for waiter in waiters {
            // A waiter that went away (cancelled sync) does not matter.
            let _ = waiter.send(result.clone());
        }
        state.spool.empty_idle_pool_files(POOL_LINGER);
    }
    // The queue is being dropped: one last flush for writes nobody waited for.
    if let Err(e) = state.flush() {
        tracing::error!(error = %e, "final queue flush failed");
    }
}
