//! One delivery shape for every sink (maddy's `StartDelivery -> AddRcpt -> Body -> Commit`,
//! folded into one call because every sink here finishes a job in one go): a [`Job`] is a
//! message, the recipients to deliver it to and where they go; the [`Sink`] answers with one
//! [`Outcome`] per recipient. Every failure carries an SMTP reply (code, enhanced code, text)
//! and is temporary or permanent, whether it came from a peer or from a local disk.

use std::future::Future;
use std::pin::Pin;

use smtorp_queue::Envelope;

use crate::Route;

/// An SMTP reply: what a failure says, in the form bounces and `queue list` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    /// The three-digit code (4xx temporary, 5xx permanent).
    pub code: u16,
    /// The enhanced status code (RFC 3463), e.g. `[5, 1, 1]`.
    pub enhanced: [u8; 3],
    /// Human text (one line).
    pub text: String,
}

impl SmtpReply {
    /// A reply from its parts; CR and LF in `text` become spaces.
    pub fn new(code: u16, enhanced: [u8; 3], text: impl Into<String>) -> SmtpReply {
        SmtpReply {
            code,
            enhanced,
            text: text.into().replace(['\r', '\n'], " "),
        }
    }

    /// Parses `"550 5.1.1 text"` (the form routers use); anything else becomes
    /// `550 5.0.0 <text>`.
    pub fn parse(text: &str) -> SmtpReply {
        let mut words = text.splitn(3, ' ');
        let code = words
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c));
        let enhanced = words.next().and_then(|e| {
            let parts: Vec<u8> = e.split('.').filter_map(|p| p.parse().ok()).collect();
            (parts.len() == 3).then(|| [parts[0], parts[1], parts[2]])
        });
        match (code, enhanced, words.next()) {
            (Some(code), Some(enhanced), Some(rest)) => SmtpReply::new(code, enhanced, rest),
            _ => SmtpReply::new(550, [5, 0, 0], text),
        }
    }
}

impl std::fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c] = self.enhanced;
        write!(f, "{} {a}.{b}.{c} {}", self.code, self.text)
    }
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (or found already delivered).
    Delivered,
    /// Try again later.
    Temporary(SmtpReply),
    /// Never try again; bounce.
    Permanent(SmtpReply),
    /// Not tried: the destination is known to be down until the given time (Unix seconds);
    /// the attempt is not counted and the message waits with the destination.
    Waiting(SmtpReply, u64),
}

impl Outcome {
    /// A temporary failure with `code 4.x.y`.
    pub fn temporary(enhanced: [u8; 3], text: impl Into<String>) -> Outcome {
        Outcome::Temporary(SmtpReply::new(451, enhanced, text))
    }

    /// A permanent failure with `code 5.x.y`.
    pub fn permanent(enhanced: [u8; 3], text: impl Into<String>) -> Outcome {
        Outcome::Permanent(SmtpReply::new(550, enhanced, text))
    }

    /// The outcome of a peer's reply: 2xx delivered, 5xx permanent, anything else temporary.
    pub fn from_reply(reply: SmtpReply) -> Outcome {
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
}

/// One message for some of its recipients, all routed the same way.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The queued message's envelope.
    pub envelope: &'a Envelope,
    /// The message.
    pub body: &'a [u8],
    /// Indices into `envelope.recipients` (all pending).
    pub recipients: &'a [usize],
    /// Where they go (the same for all of them).
    pub route: &'a Route,
}

/// The future a [`Sink`] returns: one outcome per recipient of the job, in order.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>>;

/// Somewhere mail can be delivered: a Maildir, a remote SMTP server.
pub trait Sink: Send + Sync + 'static {
    /// Delivers `job`; never panics, never loses the failure's reason.
    fn deliver<'a>(&'a self, job: Job<'a>) -> SinkFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_print() {
        let r = SmtpReply::parse("550 5.1.1 No such user here");
        assert_eq!(
            (r.code, r.enhanced, r.text.as_str()),
            (550, [5, 1, 1], "No such user here")
        );
        assert_eq!(r.to_string(), "550 5.1.1 No such user here");
        let r = SmtpReply::parse("something odd");
        assert_eq!(r.to_string(), "550 5.0.0 something odd");
        assert_eq!(SmtpReply::new(451, [4, 3, 0], "a\r\nb").text, "a  b");
    }

    #[test]
    fn classification() {
        assert_eq!(
            Outcome::from_reply(SmtpReply::new(250, [2, 0, 0], "ok")),
            Outcome::Delivered
        );
        assert!(matches!(
            Outcome::from_reply(SmtpReply::new(421, [4, 3, 2], "x")),
            Outcome::Temporary(_)
        ));
        assert!(matches!(
            Outcome::from_reply(SmtpReply::new(554, [5, 0, 0], "x")),
            Outcome::Permanent(_)
        ));
        assert!(Outcome::temporary([4, 4, 1], "down").is_unreachable());
        assert!(!Outcome::temporary([4, 4, 2], "cut").is_unreachable());
    }
}
