//! The durable mail queue: the hub between receiving and delivering.
//!
//! CONTRACT (the binary and the delivery crate are written against exactly this API):
//! see the doc comment of each item. Implementation notes are in README.md.
#![doc = include_str!("../README.md")]

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A queue id: unique for the life of a queue, shown as 16 upper-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl FromStr for QueueId {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16)
            .map(QueueId)
            .map_err(|_| QueueError::BadId(s.to_owned()))
    }
}

/// Where a message entered the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The onion side: an onion-service stream or an `[smtp] listen` TCP listener.
    Smtp,
    /// The authenticated submission port.
    Submission,
    /// `smtorp sendmail` through the maildrop folder.
    Maildrop,
    /// A delivery status notification we generated.
    Bounce,
}

/// The delivery state of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    /// Not delivered yet; will be tried (again) when the message is due.
    Pending,
    /// Delivered; never tried again.
    Delivered,
    /// Failed permanently (or expired); never tried again.
    Failed,
}

/// One recipient of a queued message with its own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The envelope recipient address as accepted (`local@domain`).
    pub address: String,
    /// Where this recipient stands.
    pub state: RecipientState,
    /// How many delivery attempts were made for it.
    pub attempts: u32,
    /// The last error text (an SMTP reply or a local error), if any.
    pub last_error: Option<String>,
}

/// The envelope of a queued message: everything but the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The queue id.
    pub id: QueueId,
    /// The envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// The recipients, each with its own state.
    pub recipients: Vec<Recipient>,
    /// Arrival time, seconds since the Unix epoch (UTC).
    pub arrival: u64,
    /// Where it came from.
    pub origin: Origin,
    /// Body size in bytes.
    pub size: u64,
    /// When the message is next due for delivery (Unix seconds); `None` once no recipient is pending.
    pub next_due: Option<u64>,
}

impl Envelope {
    /// True while at least one recipient is still pending.
    pub fn has_pending(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| r.state == RecipientState::Pending)
    }
}

/// Everything that can go wrong in the queue. Callers map any of these to 451 4.3.0.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store failed (I/O error, disk full, corruption).
    #[error("queue store error: {0}")]
    Store(#[from] sled::Error),
    /// A stored record could not be decoded.
    #[error("corrupt queue record: {0}")]
    Corrupt(String),
    /// A queue id that is not 16 hex digits.
    #[error("not a queue id: {0}")]
    BadId(String),
    /// The flusher thread is gone (the queue is shutting down).
    #[error("queue is closed")]
    Closed,
}

/// A message to add to the queue.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The id, from [`Queue::next_id`] (so a Received header can name it before insertion).
    pub id: QueueId,
    /// The envelope sender, empty for `<>`.
    pub sender: &'a str,
    /// The recipients (all start as pending).
    pub recipients: &'a [String],
    /// Where it came from.
    pub origin: Origin,
    /// Arrival time, Unix seconds.
    pub arrival: u64,
    /// The complete message (headers and body, CRLF line endings).
    pub body: &'a [u8],
}

/// The durable queue. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Queue {
    _private: (),
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, runs crash recovery and starts the group-commit
    /// flusher. Fails if another process holds the store (sled's lock).
    pub fn open(dir: &Path) -> Result<Queue, QueueError> {
        let _ = dir;
        unimplemented!()
    }

    /// A fresh queue id (persistently unique).
    pub fn next_id(&self) -> Result<QueueId, QueueError> {
        unimplemented!()
    }

    /// Atomically writes envelope, body and due entry (due now). Not yet durable: call
    /// [`Queue::sync`] before acknowledging.
    pub fn insert(&self, msg: &NewMessage<'_>) -> Result<Envelope, QueueError> {
        let _ = msg;
        unimplemented!()
    }

    /// Group commit: returns once everything written before the call is on stable storage.
    /// Concurrent callers share one flush.
    pub async fn sync(&self) -> Result<(), QueueError> {
        unimplemented!()
    }

    /// [`Queue::sync`] for synchronous callers (CLI commands).
    pub fn sync_blocking(&self) -> Result<(), QueueError> {
        unimplemented!()
    }

    /// Up to `limit` ids whose due time is `<= now`, earliest first. Reads only the due index.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<QueueId>, QueueError> {
        let _ = (now, limit);
        unimplemented!()
    }

    /// The earliest due time in the index, if any.
    pub fn next_due(&self) -> Result<Option<u64>, QueueError> {
        unimplemented!()
    }

    /// The envelope of `id`, if queued.
    pub fn envelope(&self, id: QueueId) -> Result<Option<Envelope>, QueueError> {
        let _ = id;
        unimplemented!()
    }

    /// The body of `id`, if queued.
    pub fn body(&self, id: QueueId) -> Result<Option<Vec<u8>>, QueueError> {
        let _ = id;
        unimplemented!()
    }

    /// Atomically stores a changed envelope and moves its due entry to `env.next_due`.
    /// When no recipient is pending, removes the message (envelope, body, due entry) instead.
    /// Not durable until the next [`Queue::sync`].
    pub fn update(&self, env: &Envelope) -> Result<(), QueueError> {
        let _ = env;
        unimplemented!()
    }

    /// Removes a message entirely; false if it was not there.
    pub fn remove(&self, id: QueueId) -> Result<bool, QueueError> {
        let _ = id;
        unimplemented!()
    }

    /// Every envelope, oldest id first (for `smtorp queue list`).
    pub fn list(&self) -> Result<Vec<Envelope>, QueueError> {
        unimplemented!()
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        unimplemented!()
    }

    /// True when no message is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
