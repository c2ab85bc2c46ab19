//! The one way into the queue (Postfix's `cleanup`): every entry point — SMTP sessions,
//! the submission port, local submission, bounces — goes through [`Intake`]. It checks the
//! envelope and the free space ([`Intake::begin`]), takes the text while it arrives
//! ([`Intake::write`]: the header section is held to rewrite it; after it, the first
//! [`IN_MEMORY`] bytes stay in the session's buffer and a longer message streams into its
//! spool file), and commits it ([`Intake::commit`]): the spool file written if it was not
//! yet and made durable, then the envelope, then the group commit; only then may the caller
//! say 250. Then it wakes the delivery scheduler.
//!
//! Why a small message is written only at commit: one hand-over to the blocking pool
//! (create, write, fdatasync, envelope) instead of one to create the file, one per write and
//! one to commit; at hundreds of messages a second those hand-overs were a large part of the
//! intake's cost. Memory stays bounded per session ([`IN_MEMORY`] plus the header section).
//!
//! What the header gains or loses, by origin: every message gets our Received header
//! first and loses any `Authentication-Results` field in our name; mail from the onion side
//! gets our `Authentication-Results` (its XONIONAUTH result) and its `From` checked
//! against it ([`SenderRules`]); submitted mail (submission port, `sendmail`) also gets
//! the privacy hygiene of [`privacy`].

pub(crate) mod bounce;
pub(crate) mod headers;
pub(crate) mod privacy;
pub(crate) mod space;

use std::sync::Arc;

use smtorp_queue::{NewEnvelope, Origin, Queue, QueueError, QueueId, Spool};
use smtorp_smtp::{Address, AuthResult, Reply};
use tracing::{debug, info, warn};

use self::headers::Via;
use self::space::DiskSpace;
use crate::config::PrivacyConfig;
use crate::policy::{self, Directory, SenderRules, Side};

/// The longest header section we hold to rewrite it. Longer: refused (552 5.3.4).
pub(crate) const MAX_HEADER: usize = 256 * 1024;

/// The message text (after the header section) a session keeps in memory before it opens
/// the spool file and streams into it.
pub(crate) const IN_MEMORY: usize = 64 * 1024;

/// How often, in bytes written, a message being received checks the free space.
const SPACE_CHECK_EVERY: u64 = 1024 * 1024;

/// Why a message was not enqueued.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntakeError {
    /// The envelope or the message is unacceptable: this reply (permanent, 5xx).
    #[error("{0}")]
    Rejected(Reply),
    /// Not now: this reply (4xx; a full disk, an unavailable store).
    #[error("{0}")]
    Deferred(Reply),
}

impl IntakeError {
    /// The SMTP reply for this error (the one mapping every entry point uses).
    pub(crate) fn reply(&self) -> Reply {
        match self {
            IntakeError::Rejected(reply) | IntakeError::Deferred(reply) => reply.clone(),
        }
    }

    /// True for a temporary failure (the sender should try again).
    pub(crate) fn is_temporary(&self) -> bool {
        matches!(self, IntakeError::Deferred(_))
    }
}

impl From<QueueError> for IntakeError {
    fn from(e: QueueError) -> Self {
        warn!(error = %e, "cannot queue a message: answering 451");
        IntakeError::Deferred(Reply::new(
            451,
            [4, 3, 0],
            "Queue temporarily unavailable, try again later",
        ))
    }
}

/// Who is told that a message was queued (the delivery scheduler).
pub(crate) trait Wake: Send + Sync {
    /// A message was queued.
    fn wake(&self);
}

impl Wake for smtorp_delivery::SchedulerHandle {
    fn wake(&self) {
        smtorp_delivery::SchedulerHandle::wake(self);
    }
}

impl Wake for tokio::sync::Notify {
    fn wake(&self) {
        self.notify_one();
    }
}

/// A message arriving at the queue: everything but its text.
#[derive(Debug, Clone)]
pub(crate) struct Arrival {
    /// The envelope sender in RFC 5321 form, empty for `<>`.
    pub(crate) sender: String,
    /// The envelope recipients in RFC 5321 form.
    pub(crate) recipients: Vec<String>,
    /// The client's EHLO name (onion side only), for Received.
    pub(crate) helo: Option<String>,
    /// How it came.
    pub(crate) origin: Origin,
    /// The transaction's XONIONAUTH result (onion side, `[smtp] sender_auth` not off).
    pub(crate) onion_auth: Option<AuthResult>,
}

/// Where the text of a message being received is.
#[derive(Debug)]
enum Text {
    /// All of it so far (at most [`IN_MEMORY`] bytes); no spool file yet.
    Memory(Vec<u8>),
    /// In its spool file.
    Spool(Spool),
    /// Away while a write runs on the blocking pool, or lost by a failed write.
    Gone,
}

/// A message being received: its text (buffered or in its spool file), and its header
/// section until that is complete and rewritten.
#[derive(Debug)]
pub(crate) struct Incoming {
    arrival: Arrival,
    text: Text,
    /// Chosen at [`Intake::begin`] (our Received header names it); the spool file gets
    /// this name.
    id: QueueId,
    /// The header section so far; `None` once it was rewritten and written.
    header: Option<Vec<u8>>,
    /// Bytes of text received (before rewriting).
    received: u64,
    /// `received` at which the free space is checked next.
    next_space_check: u64,
}

/// The intake: queue, directory, free-space rules and the scheduler's wake-up.
pub(crate) struct Intake {
    queue: Arc<Queue>,
    directory: Arc<Directory>,
    waker: Arc<dyn Wake>,
    space: DiskSpace,
    privacy: PrivacyConfig,
    max_size: u64,
    senders: Arc<SenderRules>,
    /// Our domains: an `Authentication-Results` field naming one is removed.
    ours: Vec<String>,
}

impl Intake {
    /// An intake writing to `queue` and waking `waker` after each commit.
    pub(crate) fn new(
        queue: Arc<Queue>,
        directory: Arc<Directory>,
        waker: Arc<dyn Wake>,
        space: DiskSpace,
        senders: Arc<SenderRules>,
    ) -> Intake {
        let settings = directory.settings();
        let privacy = settings.config.privacy.clone();
        let max_size = settings.config.smtp.max_message_size as u64;
        Intake {
            queue,
            ours: directory.domains(),
            directory,
            waker,
            space,
            privacy,
            max_size,
            senders,
        }
    }

    /// The queue, for the token bookkeeping of once-only sources.
    pub(crate) fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// The onion side's sender rules.
    pub(crate) fn senders(&self) -> &Arc<SenderRules> {
        &self.senders
    }

    /// The free-space rules.
    pub(crate) fn space(&self) -> &DiskSpace {
        &self.space
    }

    /// Checks the envelope and the free space and picks the message's queue id (random; the
    /// spool file is created when it is first needed, and a 64-bit id taken meanwhile is a
    /// 451 then).
    pub(crate) async fn begin(&self, arrival: Arrival) -> Result<Incoming, IntakeError> {
        self.validate(&arrival)?;
        self.space.check(0).map_err(IntakeError::Deferred)?;
        Ok(Incoming {
            arrival,
            id: QueueId::random(),
            text: Text::Memory(Vec::new()),
            header: Some(Vec::new()),
            received: 0,
            next_space_check: SPACE_CHECK_EVERY,
        })
    }

    /// Appends message text (CRLF line endings). The header section is held (at most
    /// [`MAX_HEADER`]) until it is complete, then rewritten; what follows is kept in memory
    /// up to [`IN_MEMORY`] bytes, beyond that it goes to the spool file.
    pub(crate) async fn write(
        &self,
        incoming: &mut Incoming,
        text: &[u8],
    ) -> Result<(), IntakeError> {
        if text.contains(&0) {
            // No mail text has a NUL (RFC 5321 4.1.1.4): a downstream that strips NULs could
            // see an end of data where we saw none. Refused on every path, never passed on.
            return Err(IntakeError::Rejected(Reply::new(
                554,
                [5, 6, 0],
                "Error: message contains a NUL character",
            )));
        }
        incoming.received += text.len() as u64;
        if incoming.received > self.max_size {
            return Err(IntakeError::Rejected(Reply::new(
                552,
                [5, 3, 4],
                "Error: message too big",
            )));
        }
        if incoming.received >= incoming.next_space_check {
            incoming.next_space_check = incoming.received + SPACE_CHECK_EVERY;
            self.space.check_writing().map_err(IntakeError::Deferred)?;
        }
        let out = match incoming.header.as_mut() {
            None => text.to_vec(),
            Some(header) => {
                header.extend_from_slice(text);
                match headers::header_end(header, false) {
                    Some(end) => {
                        let section = incoming.header.take().unwrap_or_default();
                        self.rewrite(&incoming.arrival, incoming.id, &section, end)?
                    }
                    None if header.len() > MAX_HEADER => {
                        return Err(IntakeError::Rejected(Reply::new(
                            552,
                            [5, 3, 4],
                            "Error: message header too large",
                        )))
                    }
                    None => return Ok(()),
                }
            }
        };
        self.put(incoming, out).await
    }

    /// Adds rewritten text: to the buffer while it stays within [`IN_MEMORY`], else to the
    /// spool file (created now if it does not exist yet, with the buffer written first).
    async fn put(&self, incoming: &mut Incoming, out: Vec<u8>) -> Result<(), IntakeError> {
        if out.is_empty() {
            return Ok(());
        }
        match &mut incoming.text {
            Text::Memory(buffer) if buffer.len() + out.len() <= IN_MEMORY => {
                buffer.extend_from_slice(&out);
                Ok(())
            }
            Text::Memory(_) => {
                let Text::Memory(buffer) = std::mem::replace(&mut incoming.text, Text::Gone) else {
                    return Err(lost());
                };
                let id = incoming.id;
                let spool = self
                    .queue
                    .call(move |q| {
                        let mut spool = open_spool(q, id)?;
                        spool.write_all(&buffer)?;
                        spool.write_all(&out)?;
                        Ok(spool)
                    })
                    .await
                    .map_err(spool_error)?;
                incoming.text = Text::Spool(spool);
                Ok(())
            }
            Text::Spool(_) => write_spool(&mut incoming.text, out).await,
            Text::Gone => Err(lost()),
        }
    }

    /// The message is complete: writes what is left, makes it durable with its envelope
    /// (and `token`, for sources that may offer the same message again) and returns its
    /// queue id; `None` if `token` was seen before (nothing queued).
    pub(crate) async fn commit(
        &self,
        mut incoming: Incoming,
        token: Option<String>,
    ) -> Result<Option<QueueId>, IntakeError> {
        if let Some(section) = incoming.header.take() {
            let end = headers::header_end(&section, true).unwrap_or(headers::HeaderEnd {
                fields: section.len(),
                body: section.len(),
                blank_line: false,
            });
            let out = self.rewrite(&incoming.arrival, incoming.id, &section, end)?;
            self.put(&mut incoming, out).await?;
        }
        let Incoming {
            arrival, text, id, ..
        } = incoming;
        if matches!(text, Text::Gone) {
            return Err(lost());
        }
        let now = headers::unix_now();
        let meta = arrival.clone();
        // One hand-over to the blocking pool: for a buffered message, the spool file is
        // created and written here, then made durable with its envelope.
        let committed = self
            .queue
            .call(move |q| {
                let spool = match text {
                    Text::Spool(spool) => spool,
                    Text::Memory(buffer) => {
                        let mut spool = open_spool(q, id)?;
                        spool.write_all(&buffer)?;
                        spool
                    }
                    Text::Gone => return Err(QueueError::Unavailable(LOST.into())),
                };
                let envelope = NewEnvelope {
                    sender: &meta.sender,
                    recipients: &meta.recipients,
                    origin: meta.origin,
                    arrival: now,
                };
                q.commit(spool, &envelope, token.as_deref())
            })
            .await
            .map_err(spool_error)?;
        let Some(envelope) = committed else {
            info!(queue_id = %id, "already queued earlier; not queued again");
            return Ok(None);
        };
        let size = envelope.size;
        self.queue.sync().await?;
        info!(queue_id = %id, size, recipients = arrival.recipients.len(), origin = ?arrival.origin, onion_auth = arrival.onion_auth.as_ref().map(AuthResult::as_str), "queued");
        if let (Some(AuthResult::Pass(client)), Some(peers)) =
            (&arrival.onion_auth, self.senders.peers())
        {
            peers.record(&client.to_string(), now).await;
        }
        debug!(queue_id = %id, sender = %arrival.sender, recipients = ?arrival.recipients, "envelope");
        self.waker.wake();
        Ok(Some(id))
    }

    /// A whole message at once (bounces, tests): [`Intake::begin`], [`Intake::write`],
    /// [`Intake::commit`].
    pub(crate) async fn enqueue(
        &self,
        arrival: Arrival,
        text: &[u8],
    ) -> Result<QueueId, IntakeError> {
        let mut incoming = self.begin(arrival).await?;
        for piece in text.chunks(WHOLE_CHUNK) {
            self.write(&mut incoming, piece).await?;
        }
        self.commit(incoming, None).await?.ok_or_else(|| {
            IntakeError::from(QueueError::Corrupt(
                "enqueue without a token was refused".into(),
            ))
        })
    }

    /// The rewritten header section (our Received first, then our Authentication-Results
    /// for the onion side; any in our name removed; the privacy hygiene for submitted mail)
    /// followed by what came after it in `section`. Refused (550 5.7.1) when the onion
    /// side's header `From` is not allowed by the session's XONIONAUTH result.
    fn rewrite(
        &self,
        arrival: &Arrival,
        id: QueueId,
        section: &[u8],
        end: headers::HeaderEnd,
    ) -> Result<Vec<u8>, IntakeError> {
        let via = match arrival.origin {
            Origin::Smtp | Origin::Submission => Via::Smtp,
            Origin::Maildrop | Origin::Bounce => Via::Local,
        };
        let received = headers::received(
            arrival.helo.as_deref(),
            self.directory.primary_domain(),
            via,
            &id.to_string(),
            headers::unix_now(),
        );
        let fields = section.get(..end.fields).unwrap_or_default();
        let fields = headers::without_our_auth_results(fields, &self.ours);
        let auth_results = match &arrival.onion_auth {
            Some(result) => {
                self.senders
                    .check_header_from(&fields, result)
                    .map_err(IntakeError::Rejected)?;
                format!(
                    "Authentication-Results: {}\r\n",
                    result.authentication_results(self.directory.primary_domain())
                )
            }
            None => String::new(),
        };
        let fields = match arrival.origin {
            Origin::Submission | Origin::Maildrop => {
                std::borrow::Cow::Owned(privacy::clean_header(
                    &fields,
                    &arrival.sender,
                    self.directory.primary_domain(),
                    &self.privacy,
                ))
            }
            Origin::Smtp | Origin::Bounce => fields,
        };
        let rest = section.get(end.body..).unwrap_or_default();
        let mut out =
            Vec::with_capacity(received.len() + auth_results.len() + fields.len() + rest.len() + 2);
        out.extend_from_slice(received.as_bytes());
        out.extend_from_slice(auth_results.as_bytes());
        out.extend_from_slice(&fields);
        if end.blank_line || !rest.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(rest);
        Ok(out)
    }

    fn validate(&self, arrival: &Arrival) -> Result<(), IntakeError> {
        let reject = |code: u16, enhanced: [u8; 3], text: String| {
            IntakeError::Rejected(Reply::new(code, enhanced, text))
        };
        if arrival.recipients.is_empty() {
            return Err(reject(554, [5, 5, 1], "no recipients".into()));
        }
        if !arrival.sender.is_empty() {
            Address::parse(&arrival.sender, true)
                .map_err(|e| reject(553, [5, 1, 7], format!("sender {}: {e}", arrival.sender)))?;
        }
        for rcpt in &arrival.recipients {
            let address = Address::parse(rcpt, true)
                .map_err(|e| reject(553, [5, 1, 3], format!("recipient {rcpt}: {e}")))?;
            policy::check(&self.directory.classify(&address), Side::Submission).map_err(
                |reply| {
                    reject(
                        reply.code,
                        reply.enhanced,
                        format!("recipient {rcpt}: {}", reply.text),
                    )
                },
            )?;
        }
        Ok(())
    }
}

/// The size of the pieces whole messages are written in.
const WHOLE_CHUNK: usize = 64 * 1024;

/// Why a message's text is not there: an earlier write failed (or was given up).
const LOST: &str = "a failed spool write";

fn lost() -> IntakeError {
    QueueError::Unavailable(LOST.into()).into()
}

/// The spool file named after the message's id (blocking). An id taken meanwhile by another
/// message (a 64-bit random collision) is a temporary failure.
fn open_spool(q: &Queue, id: QueueId) -> Result<Spool, QueueError> {
    q.create_spool_for(id)?
        .ok_or_else(|| QueueError::Unavailable(format!("queue id {id} is already in use")))
}

/// A failure to write or commit a spool file: a full disk is 452 4.3.1, another failure
/// 451 4.3.0.
fn spool_error(e: QueueError) -> IntakeError {
    match e {
        QueueError::Spool(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            warn!(error = %io, "disk full while writing a spool file");
            IntakeError::Deferred(space::insufficient_storage())
        }
        other => IntakeError::from(other),
    }
}

/// Appends to the spool file on the blocking pool (the file moves there and back).
async fn write_spool(text: &mut Text, bytes: Vec<u8>) -> Result<(), IntakeError> {
    let Text::Spool(mut taken) = std::mem::replace(text, Text::Gone) else {
        return Err(lost());
    };
    let (back, result) = tokio::task::spawn_blocking(move || {
        let result = taken.write_all(&bytes);
        (taken, result)
    })
    .await
    .map_err(|e| IntakeError::from(QueueError::Unavailable(format!("spool write: {e}"))))?;
    *text = Text::Spool(back);
    result.map_err(spool_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SenderAuth;

    fn intake(dir: &std::path::Path) -> (Intake, Arc<Queue>) {
        let queue = Arc::new(Queue::open(dir).unwrap());
        let directory = Arc::new(crate::policy::tests::directory());
        let senders = Arc::new(SenderRules::new(SenderAuth::Off, directory.clone(), None));
        let intake = Intake::new(
            queue.clone(),
            directory,
            Arc::new(tokio::sync::Notify::new()),
            DiskSpace::new(dir, 0),
            senders,
        );
        (intake, queue)
    }

    fn arrival() -> Arrival {
        Arrival {
            sender: String::new(),
            recipients: vec!["alice@mail.test".into()],
            helo: Some("client.example".into()),
            origin: Origin::Smtp,
            onion_auth: None,
        }
    }

    fn spool_files(queue: &Queue) -> Vec<String> {
        std::fs::read_dir(queue.spool_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    /// A body of `len` bytes in 78-byte lines, each line different.
    fn body(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 80);
        let mut n = 0u64;
        while out.len() < len {
            out.extend_from_slice(format!("{n:076}\r\n").as_bytes());
            n += 1;
        }
        out.truncate(len - len % 78);
        out
    }

    /// Writes `header` + `body` in pieces of `piece` bytes, as a session does.
    async fn send(intake: &Intake, incoming: &mut Incoming, text: &[u8], piece: usize) {
        for chunk in text.chunks(piece) {
            intake.write(incoming, chunk).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_small_message_gets_its_spool_file_only_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, queue) = intake(dir.path());
        let mut incoming = intake.begin(arrival()).await.unwrap();
        let text = [b"Subject: small\r\n\r\n".as_slice(), &body(10 * 1024)].concat();
        send(&intake, &mut incoming, &text, 4096).await;
        assert!(spool_files(&queue).is_empty(), "buffered in memory");
        let id = intake.commit(incoming, None).await.unwrap().unwrap();
        assert_eq!(spool_files(&queue), vec![id.to_string()]);
        let stored = queue.body(id).unwrap().unwrap();
        assert!(stored.starts_with(b"Received: "));
        assert!(
            stored.ends_with(&text),
            "the text follows our Received header"
        );
        assert!(String::from_utf8_lossy(&stored).contains(&id.to_string()));
    }

    #[tokio::test]
    async fn a_large_message_spills_into_its_spool_file_and_arrives_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, queue) = intake(dir.path());
        let mut incoming = intake.begin(arrival()).await.unwrap();
        let head = b"Subject: large\r\n\r\n";
        intake.write(&mut incoming, head).await.unwrap();
        // With our Received header (well under 1 KiB), still within IN_MEMORY.
        let big = body(IN_MEMORY - 1024);
        send(&intake, &mut incoming, &big, 16 * 1024).await;
        assert!(
            spool_files(&queue).is_empty(),
            "up to IN_MEMORY bytes in memory"
        );
        let more = body(300 * 1024);
        intake.write(&mut incoming, &more[..2048]).await.unwrap();
        assert_eq!(spool_files(&queue).len(), 1, "spilled past IN_MEMORY");
        send(&intake, &mut incoming, &more[2048..], 64 * 1024).await;
        let id = intake.commit(incoming, None).await.unwrap().unwrap();
        assert_eq!(spool_files(&queue), vec![id.to_string()]);
        let stored = queue.body(id).unwrap().unwrap();
        let text = [head.as_slice(), &big, &more].concat();
        assert!(stored.ends_with(&text), "byte for byte after our header");
    }

    #[tokio::test]
    async fn an_abandoned_message_leaves_no_spool_file() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, queue) = intake(dir.path());
        for len in [1024, 200 * 1024] {
            let mut incoming = intake.begin(arrival()).await.unwrap();
            let text = [b"Subject: gone\r\n\r\n".as_slice(), &body(len)].concat();
            send(&intake, &mut incoming, &text, 64 * 1024).await;
            drop(incoming);
            assert!(spool_files(&queue).is_empty(), "{len} bytes");
        }
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_header_without_end_is_written_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, queue) = intake(dir.path());
        let mut incoming = intake.begin(arrival()).await.unwrap();
        intake
            .write(&mut incoming, b"Subject: only a header\r\n")
            .await
            .unwrap();
        let id = intake.commit(incoming, None).await.unwrap().unwrap();
        let stored = queue.body(id).unwrap().unwrap();
        assert!(stored.ends_with(b"Subject: only a header\r\n"));
    }
}
