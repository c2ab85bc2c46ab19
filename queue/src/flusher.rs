//! Group commit: one thread owns the fsync of the store and lets every caller that is
//! waiting at the same moment share one `flush()`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::QueueError;

/// The answer of the flusher: `Err` carries the text of the sled error.
pub(crate) type FlushResult = Result<(), String>;

/// One caller waiting for a flush that starts after its request was sent.
pub(crate) type Waiter = oneshot::Sender<FlushResult>;

/// The handle on the flusher thread. Dropping it closes the channel; the thread does a
/// final flush and ends, and the drop waits for it.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
    flushes: Arc<AtomicU64>,
}

impl Flusher {
    /// Starts the flusher thread on a clone of `db`.
    pub(crate) fn start(db: sled::Db) -> Result<Flusher, QueueError> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&flushes);
        let thread = std::thread::Builder::new()
            .name("smtorp-queue-flush".into())
            .spawn(move || run(&db, &rx, &counter))
            .map_err(|e| QueueError::Store(sled::Error::Io(e)))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            flushes,
        })
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
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("queue flusher thread panicked");
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

/// The flusher loop: block for the first request, take every other request already
/// queued, flush once, answer them all.
fn run(db: &sled::Db, rx: &mpsc::Receiver<Waiter>, flushes: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiters.push(more);
        }
        let result: FlushResult = db.flush().map(drop).map_err(|e| e.to_string());
        let n = flushes.fetch_add(1, Ordering::Relaxed) + 1;
        match &result {
            Ok(()) => tracing::debug!(waiters = waiters.len(), flush = n, "queue group commit"),
            Err(e) => tracing::error!(waiters = waiters.len(), error = %e, "queue flush failed"),
        }
        for waiter in waiters {
            // A waiter that went away (cancelled sync) does not matter.
            let _ = waiter.send(result.clone());
        }
    }
    // The queue is being dropped: one last flush for writes nobody waited for.
    if let Err(e) = db.flush() {
        tracing::error!(error = %e, "final queue flush failed");
    }
}
