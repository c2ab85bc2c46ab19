//! Local submission: how messages from programs on this machine (`smtorp sendmail`) reach
//! the queue, and the security boundary between local users and the daemon.
//!
//! While the daemon runs, `sendmail` hands the message over the Unix socket
//! `<data_dir>/submit.sock` ([`socket`]): the kernel tells the daemon who is on the other end
//! (`SO_PEERCRED`), the daemon queues the message durably and only then answers, so
//! `sendmail` exits 0 exactly when the message is safe. When the daemon does not run,
//! `sendmail` writes the message into the `maildrop/` folder ([`maildrop`]), and the daemon
//! picks it up at its next start, knowing the submitter by the file's owner.
//!
//! Both carry the same request: the line `SMTORP-SUBMIT 1`, one line of JSON
//! ([`Request`]), then the message with CRLF line endings. The token names the submission:
//! it is recorded with the queued message, so a message handed over the socket and then
//! (the answer lost) written to the maildrop too is queued once.

pub(crate) mod maildrop;
pub(crate) mod socket;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smtorp_queue::{Origin, QueueId};
use smtorp_smtp::Reply;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{info, warn};

use crate::intake::{Arrival, Intake, IntakeError};
use crate::policy::{local, Directory, Submitter};

/// The first line of a request (socket and maildrop file).
pub(crate) const MAGIC: &[u8] = b"SMTORP-SUBMIT 1\n";
/// The first line of maildrop files written by earlier versions.
const MAGIC_V0: &[u8] = b"SMTORP-MAILDROP 1\n";
/// The longest request line (the JSON envelope).
const MAX_REQUEST_LINE: usize = 64 * 1024;
/// The size of the pieces the message is read in.
const PIECE: usize = 64 * 1024;

/// The envelope of a local submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    /// The sender asked for with `-f` (`Some("")` for `<>`), `None` without `-f`. The
    /// daemon decides the real sender from who submits ([`local::envelope_sender`]).
    pub(crate) sender: Option<String>,
    /// The envelope recipients (checked and qualified by `sendmail`, checked again here).
    pub(crate) recipients: Vec<String>,
    /// A random name for this submission (also the maildrop file name).
    pub(crate) token: String,
}

/// The envelope of a maildrop file of earlier versions.
#[derive(Debug, Deserialize)]
struct RequestV0 {
    sender: String,
    recipients: Vec<String>,
}

/// The daemon's answer on the socket: one line of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Answer {
    /// Queued durably under this id (or queued before, from the same token).
    Queued(String),
    /// Not queued: try again later (a full disk, an unavailable queue).
    Deferred(String),
    /// Not queued, never will be (a refused sender or recipient, a malformed request).
    Refused(String),
}

impl Answer {
    /// The answer for an intake error.
    pub(crate) fn from_error(e: &IntakeError) -> Answer {
        let reply = e.reply();
        if e.is_temporary() {
            Answer::Deferred(reply.to_string())
        } else {
            Answer::Refused(reply.to_string())
        }
    }
}

/// A new random token (128 bits, hex): the maildrop file name of a submission.
pub(crate) fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    data_encoding::HEXLOWER.encode(&bytes)
}

/// True if `name` can be a token (so also a safe file name in the maildrop).
pub(crate) fn is_token(name: &str) -> bool {
    (8..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
}

/// Writes the request lines (magic and JSON) of `request`.
pub(crate) fn request_lines(request: &Request) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    // Serialising strings and a vector cannot fail.
    out.extend_from_slice(&serde_json::to_vec(request).unwrap_or_default());
    out.push(b'\n');
    out
}

/// Reads the request lines from `input`: the request and the message bytes read past them.
/// `token` is used for files of earlier versions, which have none.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(
    input: &mut R,
    fallback_token: &str,
) -> Result<(Request, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut piece = [0u8; 4096];
    let end = loop {
        if let Some(first) = buf.iter().position(|&b| b == b'\n') {
            if let Some(second) = buf[first + 1..].iter().position(|&b| b == b'\n') {
                break (first, first + 1 + second);
            }
        }
        if buf.len() > MAX_REQUEST_LINE {
            return Err("the request line is too long".into());
        }
        let n = input
            .read(&mut piece)
            .await
            .map_err(|e| format!("cannot read the request: {e}"))?;
        if n == 0 {
            return Err("the request ends before its envelope".into());
        }
        buf.extend_from_slice(&piece[..n]);
    };
    let (first, second) = end;
    let magic = &buf[..=first];
    let json = &buf[first + 1..second];
    let request = if magic == MAGIC {
        serde_json::from_slice::<Request>(json).map_err(|e| format!("bad envelope: {e}"))?
    } else if magic == MAGIC_V0 {
        let old: RequestV0 =
            serde_json::from_slice(json).map_err(|e| format!("bad envelope: {e}"))?;
        Request {
            sender: Some(old.sender),
            recipients: old.recipients,
            token: fallback_token.to_owned(),
        }
    } else {
        return Err("not a smtorp submission".into());
    };
    if !is_token(&request.token) {
        return Err("bad token".into());
    }
    Ok((request, buf[second + 1..].to_vec()))
}

/// Queues a local submission: binds the sender to `submitter`, streams the message from
/// `input` (after `head`, the bytes already read) into the intake and commits it with the
/// request's token. `Ok(None)`: queued before under the same token.
pub(crate) async fn submit<R: AsyncRead + Unpin>(
    intake: &Arc<Intake>,
    directory: &Directory,
    submitter: &Submitter,
    request: &Request,
    head: Vec<u8>,
    input: &mut R,
) -> Result<Option<QueueId>, IntakeError> {
    let sender = local::envelope_sender(directory, submitter, request.sender.as_deref())
        .map_err(IntakeError::Rejected)?;
    if request
        .sender
        .as_deref()
        .is_some_and(|asked| asked != sender)
    {
        info!(submitter = %submitter.label(), "sendmail -f replaced by the submitter's own address");
    }
    let token = request.token.clone();
    if intake.queue().call(move |q| q.has_token(&token)).await? {
        // Handed over before (the answer was lost): already queued.
        return Ok(None);
    }
    let arrival = Arrival {
        sender,
        recipients: request.recipients.clone(),
        helo: None,
        origin: Origin::Maildrop,
        onion_auth: None,
    };
    let mut incoming = intake.begin(arrival).await?;
    if !head.is_empty() {
        intake.write(&mut incoming, &head).await?;
    }
    let mut piece = vec![0u8; PIECE];
    loop {
        let n = input.read(&mut piece).await.map_err(|e| {
            warn!(error = %e, "cannot read a local submission");
            IntakeError::Deferred(Reply::new(
                451,
                [4, 3, 0],
                format!("cannot read the message: {e}"),
            ))
        })?;
        if n == 0 {
            break;
        }
        intake.write(&mut incoming, &piece[..n]).await?;
    }
    let queued = intake.commit(incoming, Some(request.token.clone())).await?;
    if let Some(id) = queued {
        info!(queue_id = %id, submitter = %submitter.label(), "local submission queued");
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_lines_round_trip() {
        let request = Request {
            sender: None,
            recipients: vec!["bob@b.onion".into()],
            token: new_token(),
        };
        let mut bytes = request_lines(&request);
        bytes.extend_from_slice(b"Subject: x\r\n\r\nhi\r\n");
        let mut input = &bytes[..];
        let (got, head) = read_request(&mut input, "unused-token").await.unwrap();
        assert_eq!(got, request);
        let mut rest = head;
        input.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"Subject: x\r\n\r\nhi\r\n");
    }

    #[tokio::test]
    async fn garbage_and_old_files() {
        let mut input = &b"hello\nworld\n"[..];
        assert!(read_request(&mut input, "t0000000").await.is_err());
        let mut input =
            &b"SMTORP-MAILDROP 1\n{\"sender\":\"a@b.onion\",\"recipients\":[\"c@d.onion\"]}\nbody"
                [..];
        let (old, head) = read_request(&mut input, "t0000000").await.unwrap();
        assert_eq!(old.sender.as_deref(), Some("a@b.onion"));
        assert_eq!(old.token, "t0000000");
        assert_eq!(head, b"body");
        let long = vec![b'x'; MAX_REQUEST_LINE * 2];
        let mut input = &long[..];
        assert!(read_request(&mut input, "t0000000").await.is_err());
        assert!(!is_token("../x") && !is_token(".hidden") && is_token(&new_token()));
    }
}
