//! The one way into the queue (Postfix's `cleanup`): every entry point — SMTP sessions,
//! the submission port, local submission, bounces — goes through [`Intake`]. It checks the
//! envelope and the free space ([`Intake::begin`]), streams the text into a spool file while
//! it arrives ([`Intake::write`]: only the header section is held, to rewrite it), and
//! commits it ([`Intake::commit`]): the content made durable, then the envelope, then the
//! group commit; only then may the caller say 250. Then it wakes the delivery scheduler.
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

/// A message being received: its spool file, and its header section until that is
/// complete and rewritten.
#[derive(Debug)]
pub(crate) struct Incoming {
    arrival: Arrival,
    /// The spool file (away only while a write runs on the blocking pool).
    spool: Option<Spool>,
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

    /// Checks the envelope and the free space and opens the spool file.
    pub(crate) async fn begin(&self, arrival: Arrival) -> Result<Incoming, IntakeError> {
        self.validate(&arrival)?;
        self.space.check(0).map_err(IntakeError::Deferred)?;
        let spool = self.queue.call(|q| q.create_spool()).await?;
        Ok(Incoming {
            arrival,
            id: spool.id(),
            spool: Some(spool),
            header: Some(Vec::new()),
            received: 0,
            next_space_check: SPACE_CHECK_EVERY,
        })
    }

    /// Appends message text (CRLF line endings). The header section is held (at most
    /// [`MAX_HEADER`]) until it is complete, then rewritten and written; the rest goes
    /// straight to the spool file.
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
        write_spool(&mut incoming.spool, out).await
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
            write_spool(&mut incoming.spool, out).await?;
        }
        let Incoming {
            arrival, spool, id, ..
        } = incoming;
        let spool = spool.ok_or_else(|| {
            IntakeError::from(QueueError::Unavailable("a failed spool write".into()))
        })?;
        let size = spool.len();
        let now = headers::unix_now();
        let meta = arrival.clone();
        let committed = self
            .queue
            .call(move |q| {
                let envelope = NewEnvelope {
                    sender: &meta.sender,
                    recipients: &meta.recipients,
                    origin: meta.origin,
                    arrival: now,
                };
                q.commit(spool, &envelope, token.as_deref())
            })
            .await?;
        if committed.is_none() {
            info!(queue_id = %id, "already queued earlier; not queued again");
            return Ok(None);
        }
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

/// Writes to the spool file on the blocking pool (the file moves there and back); a full
/// disk is 452 4.3.1, another failure 451 4.3.0.
async fn write_spool(spool: &mut Option<Spool>, bytes: Vec<u8>) -> Result<(), IntakeError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let Some(mut taken) = spool.take() else {
        return Err(QueueError::Unavailable("a failed spool write".into()).into());
    };
    let (back, result) = tokio::task::spawn_blocking(move || {
        let result = taken.write_all(&bytes);
        (taken, result)
    })
    .await
    .map_err(|e| IntakeError::from(QueueError::Unavailable(format!("spool write: {e}"))))?;
    *spool = Some(back);
    result.map_err(|e| match e {
        QueueError::Spool(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            warn!(error = %io, "disk full while writing a spool file");
            IntakeError::Deferred(space::insufficient_storage())
        }
        other => IntakeError::from(other),
    })
}
