//! Bounces: RFC 3464 delivery status notifications to the envelope sender when recipients
//! fail for good (a 5xx from the peer, an unknown local user, expiry). A bounce is a
//! `multipart/report; report-type=delivery-status` with a human-readable part, a
//! `message/delivery-status` part and the original header, sent with the null sender `<>`
//! through the one enqueue path. Like everything we write, it names no host and no IP, and
//! its dates are UTC.

use std::sync::Arc;

use rand::RngCore;
use smtorp_delivery::{BounceFuture, Bouncer, FailureReport};
use smtorp_queue::Origin;
use tracing::{info, warn};

use crate::intake::headers;
use crate::intake::{Arrival, Intake, IntakeError};

/// Text safe to put on one header-ish line of the report (no CR/LF, printable).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Builds the DSN message (CRLF line endings).
///
/// Written out here rather than with mail-builder: its MIME boundaries carry the build time
/// in nanoseconds in a shape that names the software, and without a Message-ID it asks the
/// machine's host name; what we add to mail names neither (docs/privacy.md). Every part is
/// text we compose ourselves (the human part is declared UTF-8; the report parts are the
/// plain text RFC 3464 prescribes).
pub(crate) fn build_dsn(report: &FailureReport<'_>, our_domain: &str, now: u64) -> Vec<u8> {
    let envelope = report.envelope;
    let mut random = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut random);
    let boundary = format!("=_{}", data_encoding::HEXLOWER.encode(&random));
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{our_domain}>\r\n"
    ));
    m.push_str(&format!("To: <{}>\r\n", envelope.sender));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    m.push_str(&format!("Date: {}\r\n", headers::rfc5322_date(now)));
    m.push_str(&format!(
        "Message-ID: {}\r\n",
        headers::message_id(our_domain)
    ));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    m.push_str(&format!(
        "This is the mail system at {our_domain}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         It is attached below (headers only).\r\n\r\n"
    ));
    for f in report.failed {
        m.push_str(&format!(
            "<{}>: {}\r\n",
            f.address,
            one_line(&f.reply.to_string())
        ));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {our_domain}\r\n"));
    m.push_str(&format!("Queue-ID: {}\r\n", envelope.id));
    m.push_str(&format!(
        "Arrival-Date: {}\r\n",
        headers::rfc5322_date(envelope.arrival)
    ));
    for f in report.failed {
        m.push_str("\r\n");
        m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", f.address));
        m.push_str("Action: failed\r\n");
        m.push_str(&format!("Status: {}\r\n", f.reply.status()));
        m.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            one_line(&f.reply.to_string())
        ));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let mut out = m.into_bytes();
    out.extend_from_slice(report.header);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Queues bounces through the intake.
pub(crate) struct DsnBouncer {
    /// The one way into the queue.
    pub(crate) intake: Arc<Intake>,
    /// Our name (Reporting-MTA, MAILER-DAEMON@).
    pub(crate) domain: String,
}

impl DsnBouncer {
    async fn send(&self, report: &FailureReport<'_>) -> Result<(), String> {
        let dsn = build_dsn(report, &self.domain, headers::unix_now());
        let arrival = Arrival {
            sender: String::new(),
            recipients: vec![report.envelope.sender.clone()],
            helo: None,
            origin: Origin::Bounce,
            onion_auth: None,
        };
        match self.intake.enqueue(arrival, &dsn).await {
            Ok(id) => {
                info!(queue_id = %report.envelope.id, bounce_id = %id, failed = report.failed.len(), "bounce queued");
                Ok(())
            }
            Err(IntakeError::Rejected(why)) => {
                // The sender cannot be reached (not ours, not an onion): nothing to send to.
                warn!(queue_id = %report.envelope.id, reason = %why, "cannot bounce to this sender; dropping the bounce");
                Ok(())
            }
            Err(e @ IntakeError::Deferred(_)) => Err(e.to_string()),
        }
    }
}

impl Bouncer for DsnBouncer {
    fn bounce<'a>(&'a self, report: &'a FailureReport<'a>) -> BounceFuture<'a> {
        Box::pin(self.send(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtorp_delivery::FailedRecipient;
    use smtorp_queue::{Envelope, QueueId, Recipient, RecipientState};

    #[test]
    fn dsn_shape() {
        let env = Envelope {
            id: QueueId(42),
            sender: "alice@a.onion".into(),
            recipients: vec![Recipient {
                address: "bob@b.onion".into(),
                state: RecipientState::Failed,
                attempts: 1,
                last_reply: None,
            }],
            arrival: 0,
            origin: Origin::Smtp,
            size: 10,
            next_due: None,
        };
        let failed = [
            FailedRecipient {
                address: "bob@b.onion".into(),
                reply: smtorp_delivery::Reply::new(
                    550,
                    [5, 1, 1],
                    "b.onion answered RCPT TO: No such user\r\nX-Evil: 1",
                ),
                expired: false,
            },
            FailedRecipient {
                address: "carol@c.onion".into(),
                reply: smtorp_delivery::Reply::new(451, [4, 4, 7], "expired; last attempt: busy"),
                expired: true,
            },
        ];
        let header = b"Subject: hi\r\nFrom: alice@a.onion\r\n\r\n";
        let report = FailureReport {
            envelope: &env,
            failed: &failed,
            header,
        };
        let dsn = String::from_utf8(build_dsn(&report, "a.onion", 0)).unwrap();
        assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(dsn.contains("Reporting-MTA: dns; a.onion\r\n"));
        assert!(dsn.contains(
            "Final-Recipient: rfc822; bob@b.onion\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(dsn.contains(
            "Final-Recipient: rfc822; carol@c.onion\r\nAction: failed\r\nStatus: 4.4.7\r\n"
        ));
        assert!(dsn.contains("Arrival-Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n"));
        assert!(dsn.contains("Subject: hi\r\nFrom: alice@a.onion\r\n"));
        assert!(!dsn.contains("secret body"), "only the header is returned");
        assert!(!dsn.contains("\r\nX-Evil"), "reasons cannot inject lines");
        assert!(dsn.ends_with("--\r\n"));
    }
}
