//! The local sink: one message for each recipient of a job into its Maildir, read from the
//! message's spool file and written with the Return-Path and Delivered-To header fields
//! prepended (each copy gains its own, so copies cannot share a file).

use std::path::Path;

use smtorp_maildir::{unique_name, Delivered, Lookup, Maildir, MaildirError};
use smtorp_queue::Envelope;
use tracing::info;

use crate::sink::{Content, Job, Outcome, Sink, SinkFuture};
use crate::Route;

/// Writes the message for recipient number `index` of `envelope` into `maildir`. The file
/// name is derived from the queue id and the recipient index, so a retry after a crash
/// finds the earlier copy and writes nothing ([`Delivered::AlreadyThere`]); `lookup` says
/// whether such a copy may exist. Blocking (file system, fsync).
pub fn deliver_to_maildir(
    maildir: &Path,
    host: &str,
    envelope: &Envelope,
    index: usize,
    content: &Content,
    lookup: Lookup,
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
    let mut body = content.open().map_err(|e| MaildirError::Io {
        path: maildir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Maildir::new(maildir).deliver_from(&name, trace.as_bytes(), &mut body, lookup)
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
            let lookup = if job.maybe_done {
                Lookup::Full
            } else {
                Lookup::NewOnly
            };
            let mut outcomes = Vec::with_capacity(job.recipients.len());
            for &index in job.recipients {
                let (host, maildir, envelope, content) = (
                    self.host.clone(),
                    maildir.clone(),
                    job.envelope.clone(),
                    job.content.clone(),
                );
                let id = envelope.id;
                let result = tokio::task::spawn_blocking(move || {
                    deliver_to_maildir(&maildir, &host, &envelope, index, &content, lookup)
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
