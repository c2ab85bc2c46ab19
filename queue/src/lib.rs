//! The durable mail queue: the hub between receiving and delivering.
//!
//! CONTRACT (the binary and the delivery crate are written against exactly this API):
//! see the doc comment of each item. Implementation notes are in README.md.
#![doc = include_str!("../README.md")]

mod bounded;
mod flusher;
mod keys;
mod recovery;
mod spool;

pub use spool::{Body, Spool};

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
pub use smtorp_reply::Reply;

use crate::flusher::Flusher;
use crate::keys::{due_key, id_key, parse_due_key};

/// A queue id: unique among the queued messages, shown as 16 upper-case hex digits.
///
/// Ids are random (64 bits from the operating system's generator), never sequential: they
/// appear in our Received header, and sequential ids would tell every recipient how much
/// mail the server handled between two messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub u64);

impl QueueId {
    /// A fresh random id (never 0).
    pub fn random() -> QueueId {
        loop {
            let id = rand::random::<u64>();
            if id != 0 {
                return QueueId(id);
            }
        }
    }
}

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
#[serde(from = "StoredRecipient")]
pub struct Recipient {
    /// The envelope recipient address as accepted (`local@domain`).
    pub address: String,
    /// Where this recipient stands.
    pub state: RecipientState,
    /// How many delivery attempts were made for it.
    pub attempts: u32,
    /// The reply of the last failed attempt (a peer's, or ours for a local failure), if any.
    pub last_reply: Option<Reply>,
}

/// A recipient as stored: the current form, or the one of earlier versions, which kept
/// the last error as text (`last_error`).
#[derive(Deserialize)]
struct StoredRecipient {
    address: String,
    state: RecipientState,
    attempts: u32,
    #[serde(default)]
    last_reply: Option<Reply>,
    #[serde(default)]
    last_error: Option<String>,
}

impl From<StoredRecipient> for Recipient {
    fn from(r: StoredRecipient) -> Self {
        // Earlier versions stored only the text: keep it whole, with the class its state
        // implies (the text alone decides nothing any more).
        let legacy = r.last_error.map(|text| {
            let code = if r.state == RecipientState::Failed {
                550
            } else {
                451
            };
            Reply::new(code, [0, 0, 0], text)
        });
        Recipient {
            address: r.address,
            state: r.state,
            attempts: r.attempts,
            last_reply: r.last_reply.or(legacy),
        }
    }
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
    /// A spool file could not be written or read (I/O error, disk full).
    #[error("queue spool: {0}")]
    Spool(#[from] std::io::Error),
    /// The store did not answer in time (a full disk, a hung device): the call was given up
    /// and the store is treated as unavailable until the stuck call returns.
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
}

/// A message to add to the queue.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The id, from [`Queue::next_id`].
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

/// The envelope of a message whose content is in a [`Spool`] (see [`Queue::commit`]).
#[derive(Debug, Clone)]
pub struct NewEnvelope<'a> {
    /// The envelope sender, empty for `<>`.
    pub sender: &'a str,
    /// The recipients (all start as pending).
    pub recipients: &'a [String],
    /// Where it came from.
    pub origin: Origin,
    /// Arrival time, Unix seconds.
    pub arrival: u64,
}

/// What crash recovery repaired when the queue was opened (see [`Queue::recovery`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Envelopes removed because their content (spool file) was missing.
    pub envelopes_without_body: u64,
    /// Spool files removed because no envelope names them (a session that never committed,
    /// or a message whose removal was not recorded).
    pub bodies_without_envelope: u64,
    /// Message bodies moved from the `bodies` tree of an older queue into spool files.
    pub bodies_migrated: u64,
    /// Messages with no pending recipient left, removed (envelope and body).
    pub finished_removed: u64,
    /// Pending messages whose due time was moved to "now" (it was later, or missing).
    pub made_due: u64,
    /// Due-index keys removed: malformed, pointing to no message, or to a time other than
    /// the message's due time.
    pub stale_due_keys: u64,
    /// Due-index keys added for pending messages that had none.
    pub due_keys_added: u64,
    /// Envelopes that could not be decoded, moved (with their body) to the `quarantine`
    /// tree for a human to look at.
    pub quarantined: u64,
}

impl RecoveryReport {
    /// True when recovery changed nothing but due times (a clean shutdown).
    pub fn is_clean(&self) -> bool {
        self.envelopes_without_body == 0
            && self.bodies_without_envelope == 0
            && self.bodies_migrated == 0
            && self.finished_removed == 0
            && self.stale_due_keys == self.made_due
            && self.due_keys_added == self.made_due
            && self.quarantined == 0
    }
}

/// The durable queue. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Queue {
    db: sled::Db,
    envelopes: sled::Tree,
    due: sled::Tree,
    tokens: sled::Tree,
    peers: sled::Tree,
    spool: spool::SpoolDir,
    recovery: RecoveryReport,
    flusher: Flusher,
    health: bounded::Health,
    /// Serializes the writers of `envelopes` and `due` (commit, update, remove): each
    /// reads an envelope and then changes it and its due key, and must not interleave with
    /// another writer of the same message. See [`Queue::update`] for why these are not sled
    /// transactions.
    writes: std::sync::Mutex<()>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("messages", &self.envelopes.len())
            .field("flushes", &self.flusher.count())
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The error of a multi-tree transaction as a queue error.
fn tx_err(e: TransactionError<QueueError>) -> QueueError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => QueueError::Store(e),
    }
}

/// Decodes a stored envelope.
fn decode(id: QueueId, bytes: &[u8]) -> Result<Envelope, QueueError> {
    serde_json::from_slice(bytes).map_err(|e| QueueError::Corrupt(format!("envelope {id}: {e}")))
}

/// Encodes an envelope for storage.
fn encode(env: &Envelope) -> Result<Vec<u8>, QueueError> {
    serde_json::to_vec(env).map_err(|e| QueueError::Corrupt(format!("envelope {}: {e}", env.id)))
}

/// True if sled could not lock the store (another process, or one that is just closing).
fn is_lock_error(io: &std::io::Error) -> bool {
    io.to_string().contains("could not acquire lock")
}

/// Opens the sled store. A store closed a moment ago may still be locked while sled's
/// background thread finishes (a restart, a reopen in the same process): wait for it, up to
/// two seconds, before reporting the lock.
fn open_store(dir: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(BACKGROUND_FLUSH_MS))
            .open()
        {
            Err(sled::Error::Io(io))
                if is_lock_error(&io) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Background flush interval of sled: only a backstop for writes nobody syncs (updates
/// after a delivery); acknowledgements rely on the explicit group-commit flushes.
const BACKGROUND_FLUSH_MS: u64 = 2_000;

impl Queue {
    /// Opens (or creates) the queue in `dir`: the sled store in `dir`, message content in
    /// `dir/spool/`. Moves the bodies of an older queue out of sled, runs crash recovery and
    /// starts the group-commit flusher. Fails if another process holds the store (sled's
    /// lock).
    pub fn open(dir: &Path) -> Result<Queue, QueueError> {
        use std::os::unix::fs::DirBuilderExt;
        // The queue holds other people's mail: private folder (only when we create it).
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    QueueError::Store(sled::Error::Io(std::io::Error::new(
                        e.kind(),
                        format!("creating queue folder {}: {e}", dir.display()),
                    )))
                })?;
        }
        let db = open_store(dir).map_err(|e| match e {
            sled::Error::Io(io) if is_lock_error(&io) => {
                QueueError::Store(sled::Error::Io(std::io::Error::new(
                    io.kind(),
                    format!(
                        "queue store {} is locked by another process \
                             (is the smtorp daemon running?): {io}",
                        dir.display()
                    ),
                )))
            }
            other => QueueError::Store(other),
        })?;
        let spool = spool::SpoolDir::open(&dir.join(keys::SPOOL_DIR), &dir.join(keys::POOL_DIR))?;
        let envelopes = db.open_tree(keys::ENVELOPES)?;
        let bodies = db.open_tree(keys::BODIES)?;
        let due = db.open_tree(keys::DUE)?;
        let quarantine = db.open_tree(keys::QUARANTINE)?;
        let tokens = db.open_tree(keys::TOKENS)?;
        let peers = db.open_tree(keys::PEERS)?;

        let migrated = recovery::migrate_bodies(&bodies, &spool)?;
        db.flush()?;
        let mut report = recovery::recover(
            &recovery::Trees {
                envelopes: &envelopes,
                due: &due,
                quarantine: &quarantine,
                spool: &spool,
            },
            now_secs(),
        )?;
        report.bodies_migrated = migrated;
        db.flush()?;
        if report.is_clean() {
            tracing::debug!(?report, messages = envelopes.len(), "queue opened");
        } else {
            tracing::warn!(
                ?report,
                messages = envelopes.len(),
                "queue opened; crash recovery repaired the store"
            );
        }

        let flusher = Flusher::start(db.clone(), spool.clone())?;
        Ok(Queue {
            db,
            envelopes,
            due,
            tokens,
            peers,
            spool,
            recovery: report,
            flusher,
            health: bounded::Health::default(),
            writes: std::sync::Mutex::new(()),
        })
    }

    /// What crash recovery did when this queue was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// How many group-commit flushes (fsyncs) the flusher made so far; each one answered
    /// every [`Queue::sync`] waiting at that moment.
    pub fn flush_count(&self) -> u64 {
        self.flusher.count()
    }

    /// The folder of the spool files (one per queued or incoming message).
    pub fn spool_dir(&self) -> &Path {
        self.spool.path()
    }

    /// A fresh random queue id that no queued message has (for [`Queue::insert`]).
    pub fn next_id(&self) -> Result<QueueId, QueueError> {
        loop {
            let id = QueueId::random();
            if !self.envelopes.contains_key(id_key(id))? && !self.spool.exists(id) {
                return Ok(id);
            }
        }
    }

    /// Starts receiving a message: a new spool file under a fresh random id. Write the
    /// content into it, then [`Queue::commit`] it; a spool that is dropped without a commit
    /// removes its file. Blocking (file system).
    pub fn create_spool(&self) -> Result<Spool, QueueError> {
        loop {
            if let Some(spool) = self.create_spool_for(QueueId::random())? {
                return Ok(spool);
            }
        }
    }

    /// Like [`Queue::create_spool`] for an id chosen beforehand (the intake picks a message's
    /// id when it starts receiving it, and creates the file only when the content no longer
    /// fits its buffer or at commit): `None` if a queued message or another spool file has
    /// that id. Blocking (file system).
    pub fn create_spool_for(&self, id: QueueId) -> Result<Option<Spool>, QueueError> {
        if self.envelopes.contains_key(id_key(id))? {
            return Ok(None);
        }
        Ok(self.spool.create(id)?)
    }

    /// Queues the message whose content is in `spool`: makes the content durable
    /// (fdatasync), then writes the envelope and its due entry (due now): two plain writes
    /// under the writer lock (see [`Queue::update`]), or, with a `token`, one transaction
    /// that records the token too. Not yet durable: call [`Queue::sync`] before
    /// acknowledging. With a `token` that was recorded before, nothing is queued and `None`
    /// is returned (the spool file is removed). Blocking (fsync).
    pub fn commit(
        &self,
        mut spool: Spool,
        msg: &NewEnvelope<'_>,
        token: Option<&str>,
    ) -> Result<Option<Envelope>, QueueError> {
        spool.sync()?;
        let env = Envelope {
            id: spool.id(),
            sender: msg.sender.to_owned(),
            recipients: msg
                .recipients
                .iter()
                .map(|address| Recipient {
                    address: address.clone(),
                    state: RecipientState::Pending,
                    attempts: 0,
                    last_reply: None,
                })
                .collect(),
            arrival: msg.arrival,
            origin: msg.origin,
            size: spool.len(),
            next_due: Some(msg.arrival),
        };
        let bytes = encode(&env)?;
        let key = id_key(env.id);
        let dkey = due_key(msg.arrival, env.id);
        let in_use = || QueueError::Corrupt(format!("queue id {} is already in use", env.id));
        let _writing = self.writing();
        let written = match token.map(str::as_bytes) {
            // Without a token: two plain writes, no sled transaction (see `update`).
            None => {
                if self.envelopes.contains_key(key)? {
                    return Err(in_use());
                }
                self.envelopes.insert(&key[..], bytes.as_slice())?;
                self.due.insert(&dkey[..], &[][..])?;
                true
            }
            // The token must be recorded if and only if the envelope is: one transaction
            // (a maildrop pickup, rare enough for its cost).
            Some(token) => {
                let mut token_value = [0u8; 16];
                token_value[..8].copy_from_slice(&key);
                token_value[8..].copy_from_slice(&now_secs().to_be_bytes());
                (&self.envelopes, &self.due, &self.tokens)
                    .transaction(|(e, d, t)| {
                        if t.get(token)?.is_some() {
                            return Ok(false);
                        }
                        t.insert(token, &token_value[..])?;
                        if e.get(key)?.is_some() {
                            return Err(ConflictableTransactionError::Abort(in_use()));
                        }
                        e.insert(&key[..], bytes.as_slice())?;
                        d.insert(&dkey[..], &[][..])?;
                        Ok(true)
                    })
                    .map_err(tx_err)?
            }
        };
        if written {
            spool.keep();
        }
        Ok(written.then_some(env))
    }

    /// Writes a whole message at once: a spool file named `msg.id` with `msg.body`, then
    /// [`Queue::commit`]. For small messages (bounces, tests); streams use
    /// [`Queue::create_spool`]. Not yet durable: call [`Queue::sync`] before acknowledging.
    pub fn insert(&self, msg: &NewMessage<'_>) -> Result<Envelope, QueueError> {
        self.insert_inner(msg, None)?
            .ok_or_else(|| QueueError::Corrupt("insert without a token was refused".into()))
    }

    /// Like [`Queue::insert`], and records `token` in the same transaction: if `token` was
    /// recorded before (the same thing was enqueued already, e.g. a maildrop file picked up
    /// again after a crash), writes nothing and returns `None`. Tokens stay until
    /// [`Queue::forget_token`].
    pub fn insert_once(
        &self,
        msg: &NewMessage<'_>,
        token: &str,
    ) -> Result<Option<Envelope>, QueueError> {
        self.insert_inner(msg, Some(token))
    }

    fn insert_inner(
        &self,
        msg: &NewMessage<'_>,
        token: Option<&str>,
    ) -> Result<Option<Envelope>, QueueError> {
        let mut spool = self
            .create_spool_for(msg.id)?
            .ok_or_else(|| QueueError::Corrupt(format!("queue id {} is already in use", msg.id)))?;
        spool.write_all(msg.body)?;
        let envelope = NewEnvelope {
            sender: msg.sender,
            recipients: msg.recipients,
            origin: msg.origin,
            arrival: msg.arrival,
        };
        self.commit(spool, &envelope, token)
    }

    /// True if `token` is recorded.
    pub fn has_token(&self, token: &str) -> Result<bool, QueueError> {
        Ok(self.tokens.contains_key(token.as_bytes())?)
    }

    /// Forgets `token` (its source is gone, so it cannot come again). Not durable until the
    /// next sync; a token that survives a crash is harmless.
    pub fn forget_token(&self, token: &str) -> Result<(), QueueError> {
        self.tokens.remove(token.as_bytes())?;
        Ok(())
    }

    /// Every recorded token with the time it was recorded (Unix seconds; 0 for tokens of
    /// older versions), for cleaning up tokens whose source is gone.
    pub fn tokens_with_time(&self) -> Result<Vec<(String, u64)>, QueueError> {
        self.tokens
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let recorded = v
                    .get(8..16)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Ok((String::from_utf8_lossy(&k).into_owned(), recorded))
            })
            .collect()
    }

    /// Every recorded token (for cleaning up tokens whose source is gone).
    pub fn tokens(&self) -> Result<Vec<String>, QueueError> {
        self.tokens
            .iter()
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).into_owned())
                    .map_err(QueueError::from)
            })
            .collect()
    }

    /// Records that the peer with this key (an opaque 32-byte keyed hash the caller makes)
    /// was seen at `when` (Unix seconds). Not durable until the next sync.
    pub fn record_peer(&self, key: &[u8; 32], when: u64) -> Result<(), QueueError> {
        self.peers.insert(key, &when.to_be_bytes()[..])?;
        Ok(())
    }

    /// Every recorded peer key with the time it was last seen.
    pub fn peers(&self) -> Result<Vec<([u8; 32], u64)>, QueueError> {
        let mut out = Vec::new();
        for item in self.peers.iter() {
            let (k, v) = item?;
            let (Ok(key), Ok(when)) = (<[u8; 32]>::try_from(&k[..]), <[u8; 8]>::try_from(&v[..]))
            else {
                continue;
            };
            out.push((key, u64::from_be_bytes(when)));
        }
        Ok(out)
    }

    /// Forgets a peer; true if it was recorded.
    pub fn forget_peer(&self, key: &[u8; 32]) -> Result<bool, QueueError> {
        Ok(self.peers.remove(key)?.is_some())
    }

    /// Group commit: returns once everything written before the call is on stable storage
    /// (new spool files' folder entries and the sled store). Concurrent callers share one
    /// flush. A flush that does not finish within the store time limit ([`STORE_TIMEOUT`]
    /// unless set otherwise) is reported as [`QueueError::Unavailable`].
    pub async fn sync(&self) -> Result<(), QueueError> {
        self.health.check()?;
        let rx = self.flusher.request()?;
        let limit = self.health.limit();
        match tokio::time::timeout(limit, rx).await {
            Ok(answer) => flusher::answer(answer),
            Err(_) => {
                tracing::error!(
                    "the queue flush did not finish in {} s",
                    limit.as_secs_f64()
                );
                Err(QueueError::Unavailable("the queue flush is stuck".into()))
            }
        }
    }

    /// [`Queue::sync`] for synchronous callers (CLI commands). Must not be called from
    /// inside an async task (tokio panics on blocking there): use [`Queue::sync`].
    pub fn sync_blocking(&self) -> Result<(), QueueError> {
        let rx = self.flusher.request()?;
        flusher::answer(rx.blocking_recv())
    }

    /// Up to `limit` ids whose due time is `<= now`, earliest first. Reads only the due index.
    pub fn due(&self, now: u64, limit: usize) -> Result<Vec<QueueId>, QueueError> {
        let mut ids = Vec::new();
        if limit == 0 {
            return Ok(ids);
        }
        let iter = match now.checked_add(1) {
            Some(end) => self.due.range(..due_key(end, QueueId(0))),
            None => self.due.iter(),
        };
        for key in iter.keys() {
            let key = key?;
            match parse_due_key(&key) {
                Some((_, id)) => ids.push(id),
                None => tracing::warn!(key = ?&key[..], "malformed key in the queue due index"),
            }
            if ids.len() >= limit {
                break;
            }
        }
        Ok(ids)
    }

    /// The earliest due time in the index, if any.
    pub fn next_due(&self) -> Result<Option<u64>, QueueError> {
        for key in self.due.iter().keys() {
            let key = key?;
            match parse_due_key(&key) {
                Some((secs, _)) => return Ok(Some(secs)),
                None => tracing::warn!(key = ?&key[..], "malformed key in the queue due index"),
            }
        }
        Ok(None)
    }

    /// The envelope of `id`, if queued.
    pub fn envelope(&self, id: QueueId) -> Result<Option<Envelope>, QueueError> {
        match self.envelopes.get(id_key(id))? {
            Some(bytes) => decode(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The content of `id` as a reader over its spool file, if queued. Blocking.
    pub fn open_body(&self, id: QueueId) -> Result<Option<Body>, QueueError> {
        if !self.envelopes.contains_key(id_key(id))? {
            return Ok(None);
        }
        Ok(self.spool.open_body(id)?)
    }

    /// The whole content of `id` in memory, if queued (for small messages and tests; use
    /// [`Queue::open_body`] to stream). Blocking.
    pub fn body(&self, id: QueueId) -> Result<Option<Vec<u8>>, QueueError> {
        match self.open_body(id)? {
            Some(body) => Ok(Some(body.read_all()?)),
            None => Ok(None),
        }
    }

    /// The first `limit` bytes of the content of `id` (its header, for `queue show` and
    /// bounces), if queued. Blocking.
    pub fn body_prefix(&self, id: QueueId, limit: usize) -> Result<Option<Vec<u8>>, QueueError> {
        match self.open_body(id)? {
            Some(body) => Ok(Some(body.read_prefix(limit)?)),
            None => Ok(None),
        }
    }

    /// Stores a changed envelope and moves its due entry to `env.next_due`. When no
    /// recipient is pending, removes the message (envelope, due entry, then its spool file)
    /// instead. Not durable until the next [`Queue::sync`].
    ///
    /// Plain sled writes, not a transaction: every sled transaction (and `apply_batch`)
    /// writes its batch marker into an I/O buffer of its own and rolls the log, two
    /// `pwrite` + `sync_file_range` each, so two per message received and two per message
    /// delivered; plain writes wait in the log buffer for the next group commit, which
    /// writes them all at once. The writers are serialized by a lock of the queue, so they
    /// never interleave. What a transaction gave beyond that, that a crash leaves all of a
    /// change or none of it, matters only for the due index, and recovery rebuilds it from
    /// the envelopes at the next open. The envelope itself is one key, written atomically.
    ///
    /// A message that is no longer queued (removed meanwhile) is left alone: `Ok(())`.
    /// A pending envelope with `next_due == None` is stored as due now.
    pub fn update(&self, env: &Envelope) -> Result<(), QueueError> {
        let key = id_key(env.id);
        let pending = env.has_pending();
        let mut stored = env.clone();
        stored.next_due = if pending {
            Some(env.next_due.unwrap_or_else(now_secs))
        } else {
            None
        };
        let bytes = encode(&stored)?;
        let new_due = stored.next_due.map(|t| due_key(t, env.id));
        let removed = {
            let _writing = self.writing();
            let Some(old) = self.envelopes.get(key)? else {
                return Ok(());
            };
            let old_due = decode(env.id, &old)?.next_due.map(|t| due_key(t, env.id));
            match new_due {
                Some(dkey) => {
                    // The envelope first: a crash between the writes leaves at worst a
                    // due key too many or too few, and recovery rebuilds the due index
                    // from the envelopes.
                    self.envelopes.insert(&key[..], bytes.as_slice())?;
                    if let Some(old_due) = old_due.filter(|k| *k != dkey) {
                        self.due.remove(&old_due[..])?;
                    }
                    self.due.insert(&dkey[..], &[][..])?;
                    false
                }
                None => {
                    self.envelopes.remove(&key[..])?;
                    if let Some(old_due) = old_due {
                        self.due.remove(&old_due[..])?;
                    }
                    true
                }
            }
        };
        if removed {
            // Every recipient is done (delivered, or failed and bounced): the content is not
            // needed whether or not this removal survives a crash. The sinks have finished
            // reading it, so the file may be reused.
            self.spool.recycle(env.id)?;
        }
        Ok(())
    }

    /// Removes a message entirely; false if it was not there.
    pub fn remove(&self, id: QueueId) -> Result<bool, QueueError> {
        let key = id_key(id);
        {
            let _writing = self.writing();
            let Some(old) = self.envelopes.remove(&key[..])? else {
                return Ok(false);
            };
            self.remove_due_keys(id, &old)?;
        }
        self.spool.remove(id)?;
        Ok(true)
    }

    /// Removes the due key of a removed envelope (`old`, as stored); when `old` cannot be
    /// decoded, every due key of `id`, found by a scan (rare).
    fn remove_due_keys(&self, id: QueueId, old: &[u8]) -> Result<(), QueueError> {
        match serde_json::from_slice::<Envelope>(old) {
            Ok(old) => {
                if let Some(t) = old.next_due {
                    self.due.remove(&due_key(t, id)[..])?;
                }
            }
            Err(_) => {
                for k in self.due.iter().keys() {
                    let k = k?;
                    if parse_due_key(&k).is_some_and(|(_, kid)| kid == id) {
                        self.due.remove(&k)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The lock of the envelope writers (see `writes`); a poisoned lock is taken anyway
    /// (the store itself is consistent after any single write).
    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every envelope, in id order (for `smtorp queue list`).
    pub fn list(&self) -> Result<Vec<Envelope>, QueueError> {
        let mut out = Vec::new();
        for item in self.envelopes.iter() {
            let (key, value) = item?;
            let id = keys::parse_id_key(&key)
                .ok_or_else(|| QueueError::Corrupt(format!("envelope key {:?}", &key[..])))?;
            out.push(decode(id, &value)?);
        }
        Ok(out)
    }

    /// The ids of every queued message (keys only: nothing is decoded).
    pub fn ids(&self) -> Result<Vec<QueueId>, QueueError> {
        let mut out = Vec::with_capacity(self.envelopes.len());
        for key in self.envelopes.iter().keys() {
            if let Some(id) = keys::parse_id_key(&key?) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.envelopes.len()
    }

    /// True when no message is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the queue takes on disk: the sled store's files and the spool files.
    pub fn disk_usage(&self) -> u64 {
        let store = self.db.size_on_disk().unwrap_or(0);
        store + self.spool.usage()
    }
}

/// How long one store call (or one group-commit flush) may take by default before it is
/// reported as [`QueueError::Unavailable`] (see [`Queue::call`],
/// [`Queue::set_store_timeout`]).
pub const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[cfg(test)]
mod tests {

    use super::*;

    fn queued(q: &Queue, arrival: u64) -> Envelope {
        let rcpts = vec!["b@b.onion".to_string()];
        q.insert(&NewMessage {
            id: q.next_id().unwrap(),
            sender: "",
            recipients: &rcpts,
            origin: Origin::Smtp,
            arrival,
            body: b"x",
        })
        .unwrap()
    }

    #[test]
    fn corrupt_record_at_runtime_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let env = queued(&q, 7);
        q.envelopes
            .insert(id_key(env.id), &b"\xff garbage"[..])
            .unwrap();
        assert!(matches!(q.envelope(env.id), Err(QueueError::Corrupt(_))));
        assert!(matches!(q.list(), Err(QueueError::Corrupt(_))));
        assert!(matches!(q.update(&env), Err(QueueError::Corrupt(_))));
        // Removing it is still possible, and also drops its due key.
        assert!(q.remove(env.id).unwrap());
        assert!(q.due.is_empty());
        assert!(!q.spool.exists(env.id));
        // A malformed due key is skipped, not fatal.
        q.due.insert(b"bad", &[][..]).unwrap();
        let other = queued(&q, 9);
        assert_eq!(q.due(100, 10).unwrap(), vec![other.id]);
        assert_eq!(q.next_due().unwrap(), Some(9));
    }

    #[test]
    fn dropping_the_queue_stops_the_flusher() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let env = queued(&q, 1);
        drop(q); // joins the flusher after its final flush
        let q = Queue::open(dir.path()).unwrap();
        assert_eq!(q.envelope(env.id).unwrap(), Some(env));
    }
}
