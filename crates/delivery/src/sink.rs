//! One delivery shape for every sink (maddy's `StartDelivery -> AddRcpt -> Body -> Commit`,
//! folded into one call because every sink here finishes a job in one go): a [`Job`] is a
//! message, the recipients to deliver it to and where they go; the [`Sink`] answers with one
//! [`Outcome`] per recipient. Every failure carries an SMTP [`Reply`] (code, enhanced code,
//! text) and is temporary or permanent, whether it came from a peer or from a local disk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use smtorp_queue::{Body, Envelope, Queue, QueueError, QueueId};
pub use smtorp_reply::Reply;

use crate::Route;

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (or found already delivered).
    Delivered,
    /// Try again later.
    Temporary(Reply),
    /// Never try again; bounce.
    Permanent(Reply),
    /// Not tried: the destination is known to be down until the given time (Unix seconds);
    /// the attempt is not counted and the message waits with the destination.
    Waiting(Reply, u64),
}

impl Outcome {
    /// A temporary failure `451 4.x.y`.
    pub fn temporary(enhanced: [u8; 3], text: impl Into<String>) -> Outcome {
        Outcome::Temporary(Reply::new(451, enhanced, one_line(text.into())))
    }

    /// A permanent failure `550 5.x.y`.
    pub fn permanent(enhanced: [u8; 3], text: impl Into<String>) -> Outcome {
        Outcome::Permanent(Reply::new(550, enhanced, one_line(text.into())))
    }

    /// The outcome of a reply: 2xx delivered, 5xx permanent, anything else temporary.
    pub fn from_reply(reply: Reply) -> Outcome {
        match reply.code {
            200..=299 => Outcome::Delivered,
            500..=599 => Outcome::Permanent(reply),
            _ => Outcome::Temporary(reply),
        }
    }

    /// True when the destination could not be reached at all (X.4.1, "no answer from
    /// host"): the scheduler then holds back the destination's other mail for a while.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Outcome::Temporary(r) if r.enhanced == [4, 4, 1])
    }

    /// The reply of a failure.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Outcome::Delivered => None,
            Outcome::Temporary(r) | Outcome::Permanent(r) | Outcome::Waiting(r, _) => Some(r),
        }
    }
}

/// Text fit for one reply line (CR and LF become spaces).
pub(crate) fn one_line(text: String) -> String {
    if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], " ")
    } else {
        text
    }
}

/// The content of a queued message: where sinks read it from (its spool file), opened
/// afresh by each reader.
#[derive(Clone)]
pub struct Content {
    queue: Arc<Queue>,
    id: QueueId,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content").field("id", &self.id).finish()
    }
}

impl Content {
    /// The content of message `id` of `queue`.
    pub fn new(queue: Arc<Queue>, id: QueueId) -> Content {
        Content { queue, id }
    }

    /// Opens it for reading. Blocking (file system): call it off the async runtime or
    /// through [`Content::open_async`].
    pub fn open(&self) -> Result<Body, QueueError> {
        self.queue
            .open_body(self.id)?
            .ok_or_else(|| QueueError::Corrupt(format!("message {} has no content", self.id)))
    }

    /// Opens it on the blocking pool, as an async reader.
    pub async fn open_async(&self) -> Result<tokio::fs::File, QueueError> {
        let me = self.clone();
        let body = tokio::task::spawn_blocking(move || me.open())
            .await
            .map_err(|e| QueueError::Unavailable(format!("opening message content: {e}")))??;
        Ok(tokio::fs::File::from_std(body.into_file()))
    }
}

/// One message for some of its recipients, all routed the same way.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The queued message's envelope.
    pub envelope: &'a Envelope,
    /// The message.
    pub content: &'a Content,
    /// Indices into `envelope.recipients` (all pending).
    pub recipients: &'a [usize],
    /// Where they go (the same for all of them).
    pub route: &'a Route,
    /// True if an earlier attempt may have delivered some of them without its result
    /// being recorded (a crash, a failed queue update): sinks that can tell look first.
    pub maybe_done: bool,
}

/// The future a [`Sink`] returns: one outcome per recipient of the job, in order.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>>;

/// Somewhere mail can be delivered: a Maildir, a remote SMTP server.
pub trait Sink: Send + Sync + 'static {
    /// Delivers `job`; never panics, never loses the failure's reason.
    fn deliver<'a>(&'a self, job: Job<'a>) -> SinkFuture<'a>;

    /// Upkeep the scheduler runs now and then (e.g. closing idle cached sessions).
    fn upkeep(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            Outcome::from_reply(Reply::new(250, [2, 0, 0], "ok")),
            Outcome::Delivered
        );
        assert!(matches!(
            Outcome::from_reply(Reply::new(421, [4, 3, 2], "x")),
            Outcome::Temporary(_)
        ));
        assert!(matches!(
            Outcome::from_reply(Reply::new(554, [5, 0, 0], "x")),
            Outcome::Permanent(_)
        ));
        assert!(Outcome::temporary([4, 4, 1], "down").is_unreachable());
        assert!(!Outcome::temporary([4, 4, 2], "cut").is_unreachable());
        assert_eq!(
            Outcome::temporary([4, 3, 0], "a\r\nb")
                .reply()
                .unwrap()
                .text,
            "a  b"
        );
    }
}
