//! The remote deliverer: one SMTP client session (with `mail-send`) to another onion domain,
//! over whatever stream the [`Connector`] opens (an arti onion stream, or TCP for a static
//! route), with a result per recipient.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mail_send::SmtpClient;
use smtp_proto::Response;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::scheduler::Outcome;

/// A bidirectional byte stream to a peer MTA.
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerStream for T {}

/// A boxed [`PeerStream`].
pub type BoxedStream = Box<dyn PeerStream>;

/// Why no stream could be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// True if a later attempt may succeed.
    pub temporary: bool,
    /// What happened (goes into the queue's last error and bounces).
    pub message: String,
}

/// The future a [`Connector`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = Result<BoxedStream, ConnectError>> + Send + 'a>>;

/// Opens streams to the SMTP service of an onion domain (implemented by the binary: static
/// routes over TCP, else arti). Never resolves names, never reaches a clearnet host.
pub trait Connector: Send + Sync + 'static {
    /// A stream to the SMTP server of `domain` (a lower-case `<name>.onion`).
    fn connect<'a>(&'a self, domain: &'a str) -> ConnectFuture<'a>;
}

/// Remote SMTP delivery.
pub struct RemoteDelivery {
    connector: Arc<dyn Connector>,
    helo: String,
    timeout: Duration,
}

/// The outcome of a reply: 2xx delivered, 4xx temporary, 5xx permanent.
fn outcome_of(domain: &str, stage: &str, reply: &Response<String>) -> Outcome {
    let [a, b, c] = reply.esc;
    let esc = if a > 0 { format!(" {a}.{b}.{c}") } else { String::new() };
    let text = format!(
        "{domain} answered {stage} with {}{esc} {}",
        reply.code,
        reply.message.replace(['\r', '\n'], " ")
    );
    match reply.code {
        200..=299 => Outcome::Delivered,
        500..=599 => Outcome::Permanent(text),
        _ => Outcome::Temporary(text),
    }
}

/// A mail-send error as a temporary outcome (I/O, timeouts, unparseable replies).
fn failed(domain: &str, stage: &str, error: &mail_send::Error) -> Outcome {
    match error {
        mail_send::Error::UnexpectedReply(reply) => outcome_of(domain, stage, reply),
        other => Outcome::Temporary(format!("{domain}: {stage} failed: {other}")),
    }
}

impl RemoteDelivery {
    /// Delivers with `connector`, greeting peers as `helo` (our onion address), with
    /// `timeout` for each command.
    pub fn new(connector: Arc<dyn Connector>, helo: String, timeout: Duration) -> RemoteDelivery {
        RemoteDelivery { connector, helo, timeout }
    }

    /// One SMTP session to `domain`: MAIL FROM `sender`, one RCPT per recipient, DATA
    /// `body` (CRLF line endings). Returns one outcome per recipient, in order.
    pub async fn deliver(&self, domain: &str, sender: &str, recipients: &[String], body: &[u8]) -> Vec<Outcome> {
        let all = |o: Outcome| vec![o; recipients.len()];
        let stream = match self.connector.connect(domain).await {
            Ok(s) => s,
            Err(e) if e.temporary => return all(Outcome::Temporary(e.message)),
            Err(e) => return all(Outcome::Permanent(e.message)),
        };
        let mut client = SmtpClient { stream, timeout: self.timeout };
        let greeting = match tokio::time::timeout(self.timeout, client.read()).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return all(failed(domain, "the connection", &e)),
            Err(_) => return all(Outcome::Temporary(format!("{domain}: no greeting in time"))),
        };
        if greeting.code != 220 {
            return all(outcome_of(domain, "the connection", &greeting));
        }
        let ehlo = match client.ehlo(&self.helo).await {
            Ok(ehlo) => ehlo,
            Err(e) => return all(failed(domain, "EHLO", &e)),
        };
        let mut mail = format!("MAIL FROM:<{sender}>");
        if body.iter().any(|b| *b >= 0x80) && ehlo.has_capability(smtp_proto::EXT_8BIT_MIME) {
            mail.push_str(" BODY=8BITMIME");
        }
        let utf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        if utf8 && ehlo.has_capability(smtp_proto::EXT_SMTP_UTF8) {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        match client.cmd(mail.as_bytes()).await {
            Ok(reply) if reply.code / 100 == 2 => {}
            Ok(reply) => return all(outcome_of(domain, "MAIL FROM", &reply)),
            Err(e) => return all(failed(domain, "MAIL FROM", &e)),
        }
        let mut outcomes = Vec::with_capacity(recipients.len());
        for rcpt in recipients {
            let outcome = match client.cmd(format!("RCPT TO:<{rcpt}>\r\n").as_bytes()).await {
                Ok(reply) => outcome_of(domain, "RCPT TO", &reply),
                Err(e) => return all(failed(domain, "RCPT TO", &e)),
            };
            outcomes.push(outcome);
        }
        if outcomes.iter().any(|o| *o == Outcome::Delivered) {
            let data = match client.data(body).await {
                Ok(reply) => outcome_of(domain, "DATA", &reply),
                Err(e) => failed(domain, "DATA", &e),
            };
            for o in outcomes.iter_mut().filter(|o| **o == Outcome::Delivered) {
                *o = data.clone();
            }
        }
        if let Err(e) = client.quit().await {
            debug!(domain, error = %e, "QUIT failed (delivery results stand)");
        }
        outcomes
    }
}
