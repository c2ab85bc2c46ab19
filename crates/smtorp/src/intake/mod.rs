//! The one way into the queue (Postfix's `cleanup`): every entry point — SMTP sessions,
//! the maildrop pickup, later bounces — calls [`Intake::enqueue`], which validates the
//! envelope, adds our Received header, writes the message and returns only once it is on
//! stable storage (group commit). Then it wakes the delivery scheduler.

pub mod bounce;
pub mod headers;
pub mod privacy;

use std::sync::Arc;

use smtorp_queue::{NewMessage, Origin, Queue, QueueError, QueueId};
use smtorp_smtp::{Address, Handler, Reply, Transaction};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use self::headers::Via;
use crate::policy::{self, Directory, Side};

/// Why a message was not enqueued.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The envelope is unacceptable (permanent).
    #[error("{0}")]
    Rejected(String),
    /// The store failed: the message is not accepted, the sender must retry (temporary).
    #[error("queue: {0}")]
    Store(#[from] QueueError),
}

/// A message arriving at the queue.
#[derive(Debug)]
pub struct Arrival<'a> {
    /// The envelope sender, empty for `<>`.
    pub sender: &'a str,
    /// The envelope recipients.
    pub recipients: &'a [String],
    /// The client's EHLO name (SMTP only), for Received.
    pub helo: Option<&'a str>,
    /// How it came.
    pub origin: Origin,
    /// The message, CRLF line endings.
    pub data: &'a [u8],
}

/// The intake: queue, directory, and the scheduler's wake-up.
pub struct Intake {
    queue: Arc<Queue>,
    directory: Arc<Directory>,
    waker: Arc<Notify>,
}

impl Intake {
    /// An intake writing to `queue` and waking `waker` after each commit.
    pub fn new(queue: Arc<Queue>, directory: Arc<Directory>, waker: Arc<Notify>) -> Intake {
        Intake {
            queue,
            directory,
            waker,
        }
    }

    /// Validates, adds Received, writes and flushes. Returns the queue id once durable.
    pub async fn enqueue(&self, arrival: Arrival<'_>) -> Result<QueueId, IntakeError> {
        self.commit(arrival, None).await?.ok_or_else(|| {
            IntakeError::Store(QueueError::Corrupt(
                "enqueue without a token was refused".into(),
            ))
        })
    }

    /// [`Intake::enqueue`] for a source that may offer the same message again (a maildrop
    /// file after a crash): `token` names it, and if it was enqueued before, nothing is
    /// written and `None` is returned.
    pub async fn enqueue_once(
        &self,
        arrival: Arrival<'_>,
        token: &str,
    ) -> Result<Option<QueueId>, IntakeError> {
        self.commit(arrival, Some(token)).await
    }

    /// The queue, for the token bookkeeping of once-only sources.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    async fn commit(
        &self,
        arrival: Arrival<'_>,
        token: Option<&str>,
    ) -> Result<Option<QueueId>, IntakeError> {
        self.validate(&arrival)?;
        let id = self.queue.next_id()?;
        let now = headers::unix_now();
        let via = match arrival.origin {
            Origin::Smtp | Origin::Submission => Via::Smtp,
            Origin::Maildrop | Origin::Bounce => Via::Local,
        };
        let received = headers::received(
            arrival.helo,
            self.directory.primary_domain(),
            via,
            &id.to_string(),
            now,
        );
        let mut body = Vec::with_capacity(received.len() + arrival.data.len());
        body.extend_from_slice(received.as_bytes());
        body.extend_from_slice(arrival.data);
        let message = NewMessage {
            id,
            sender: arrival.sender,
            recipients: arrival.recipients,
            origin: arrival.origin,
            arrival: now,
            body: &body,
        };
        match token {
            None => {
                self.queue.insert(&message)?;
            }
            Some(token) => {
                if self.queue.insert_once(&message, token)?.is_none() {
                    info!(token, "already queued earlier; not queued again");
                    return Ok(None);
                }
            }
        }
        self.queue.sync().await?;
        info!(queue_id = %id, size = body.len(), recipients = arrival.recipients.len(), origin = ?arrival.origin, "queued");
        debug!(queue_id = %id, sender = %arrival.sender, recipients = ?arrival.recipients, "envelope");
        self.waker.notify_one();
        Ok(Some(id))
    }

    fn validate(&self, arrival: &Arrival<'_>) -> Result<(), IntakeError> {
        if arrival.recipients.is_empty() {
            return Err(IntakeError::Rejected("no recipients".into()));
        }
        if !arrival.sender.is_empty() {
            Address::parse(arrival.sender, true)
                .map_err(|e| IntakeError::Rejected(format!("sender {}: {e}", arrival.sender)))?;
        }
        for rcpt in arrival.recipients {
            let address = Address::parse(rcpt, true)
                .map_err(|e| IntakeError::Rejected(format!("recipient {rcpt}: {e}")))?;
            policy::check(&self.directory.classify(&address), Side::Submission).map_err(
                |reply| IntakeError::Rejected(format!("recipient {rcpt}: {}", reply.text)),
            )?;
        }
        Ok(())
    }
}

/// The SMTP sessions' handler: hands finished transactions to the intake.
pub struct SmtpHandler {
    /// The intake.
    pub intake: Arc<Intake>,
    /// Recorded as the message's origin.
    pub origin: Origin,
}

impl Handler for SmtpHandler {
    async fn enqueue(&self, tx: Transaction) -> Result<String, Reply> {
        let arrival = Arrival {
            sender: &tx.sender,
            recipients: &tx.recipients,
            helo: Some(&tx.helo),
            origin: self.origin,
            data: &tx.data,
        };
        match self.intake.enqueue(arrival).await {
            Ok(id) => Ok(id.to_string()),
            Err(IntakeError::Rejected(why)) => Err(Reply::new(554, [5, 6, 0], why)),
            Err(IntakeError::Store(e)) => {
                warn!(error = %e, "cannot queue a message: answering 451");
                Err(Reply::new(
                    451,
                    [4, 3, 0],
                    "Queue temporarily unavailable, try again later",
                ))
            }
        }
    }
}
