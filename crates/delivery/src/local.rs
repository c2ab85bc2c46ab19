//! The local deliverer: one message for one recipient into a Maildir, with the
//! Return-Path and Delivered-To header fields prepended.

use std::path::Path;

use smtorp_maildir::{unique_name, Delivered, Maildir, MaildirError};
use smtorp_queue::Envelope;

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
