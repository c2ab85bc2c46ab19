//! The local deliverer: one message for one recipient into a Maildir, with the
//! Return-Path and Delivered-To header fields prepended.

use std::path::Path;

use smtorp_maildir::{unique_name, Delivered, Maildir, MaildirError};
use smtorp_queue::Envelope;
use tracing::info;

use crate::sink::{Job, Outcome, Sink, SinkFuture};
use crate::Route;

/// Writes `body` for recipient number `index` of `envelope` into `maildir`. The file name
/// is derived from the queue id and the recipient index, so a retry after a crash finds the
/// earlier copy and writes nothing ([`Delivered::AlreadyThere`]). Blocking (fsync).
pub fn deliver_to_maildir(
    maildir: &Path,
    host: &str,
    envelope: &Envelope,
    index: usize,
    body: &[u8],
) -> Result<Delivered, MaildirError> {
    let recipient = envelope
        .recipients
        .get(index)
        .map(|r| r.address.as_str())
        .unwrap_or_default();
    let trace = format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        envelope.sender, recipient
    );
    let name = unique_name(envelope.arrival, &envelope.id.to_string(), index, host);
    Maildir::new(maildir).deliver(&name, &[trace.as_bytes(), body])
}

/// The Maildir sink: each recipient of a local route gets its own file.
pub struct MaildirSink {
    /// The host part of Maildir file names (our primary domain).
    pub host: String,
}

impl Sink for MaildirSink {
    fn deliver<'a>(&'a self, job: Job<'a>) -> SinkFuture<'a> {
        Box::pin(async move {
            let Route::Local { maildir, user } = job.route else {
                return vec![
                    Outcome::permanent([5, 3, 5], "not a local route");
                    job.recipients.len()
                ];
            };
            let mut outcomes = Vec::with_capacity(job.recipients.len());
            for &index in job.recipients {
                let (host, maildir, envelope, body) = (
                    self.host.clone(),
                    maildir.clone(),
                    job.envelope.clone(),
                    job.body.to_vec(),
                );
                let id = envelope.id;
                let result = tokio::task::spawn_blocking(move || {
                    deliver_to_maildir(&maildir, &host, &envelope, index, &body)
                })
                .await;
                outcomes.push(match result {
                    Ok(Ok(Delivered::New(_))) => Outcome::Delivered,
                    Ok(Ok(Delivered::AlreadyThere(_))) => {
                        info!(queue_id = %id, "already in the Maildir (earlier attempt)");
                        Outcome::Delivered
                    }
                    // X.3.0: the local mail system failed (disk full, permissions): retry.
                    Ok(Err(e)) => Outcome::temporary([4, 3, 0], format!("Maildir of {user}: {e}")),
                    Err(e) => Outcome::temporary([4, 3, 0], format!("delivery task failed: {e}")),
                });
            }
            outcomes
        })
    }
}
