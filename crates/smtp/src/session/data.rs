//! DATA: the command, then the message text up to `<CRLF>.<CRLF>` with dot-unstuffing and
//! the size, line-length and NUL rules. The text never sits whole in the session: it leaves
//! in chunks of at most [`CHUNK`] bytes ([`Step::Write`]) that the driver appends to the
//! message's spool file. End of data is recognised only on a line of its own that is
//! exactly `.` CRLF; the framer has already refused bare CR and LF.

use super::{Mode, Policy, Session, Step, Transaction};
use crate::reply::Reply;

/// Message text collected before it is handed to the driver ([`Step::Write`]).
pub(super) const CHUNK: usize = 64 * 1024;

/// Why a message being received is refused (the first reason wins).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Over `max_message_size`.
    TooBig,
    /// A text line over `max_text_line`.
    LongLine,
    /// A NUL byte: no SMTP text has one (RFC 5321 4.1.1.4, RFC 6152), and a downstream
    /// that strips NULs could see an end of data where we saw none (a smuggling variant).
    Nul,
    /// Writing the text failed (our side, e.g. a full disk): this reply.
    Write(Reply),
}

/// The message being received after 354.
#[derive(Debug, Default)]
pub(super) struct DataState {
    /// Unstuffed text not yet handed to the driver (at most [`CHUNK`] plus one line).
    buf: Vec<u8>,
    /// Bytes of text so far (handed out and buffered).
    size: usize,
    /// Set once the message is known to be refused; the rest is read and dropped.
    refused: Option<Refusal>,
    /// Bytes received in this DATA phase (for the driver's minimum-rate check).
    received: u64,
}

impl DataState {
    /// A line over the limit was seen (and discarded by the framer).
    pub(super) fn line_too_long(&mut self) {
        self.refuse(Refusal::LongLine);
    }

    fn refuse(&mut self, why: Refusal) {
        if self.refused.is_none() {
            self.refused = Some(why);
        }
        self.buf = Vec::new();
    }

    /// Adds one unstuffed line (CRLF included) within the limits.
    fn add(&mut self, line: &[u8], max_line: usize, max_size: usize) {
        self.received += line.len() as u64;
        if line.len() > max_line {
            self.refuse(Refusal::LongLine);
        }
        if line.contains(&0) {
            self.refuse(Refusal::Nul);
        }
        if self.refused.is_some() {
            return;
        }
        if self.size.saturating_add(line.len()) > max_size {
            self.refuse(Refusal::TooBig);
            return;
        }
        self.size += line.len();
        self.buf.extend_from_slice(line);
    }

    /// Bytes of text received so far in this DATA phase.
    pub(super) fn received(&self) -> u64 {
        self.received
    }
}

impl<P: Policy> Session<P> {
    /// DATA: needs EHLO/HELO, MAIL and at least one accepted RCPT; then the driver prepares
    /// where the message goes ([`Step::StartData`]) before we say 354.
    pub(super) fn data_command(&mut self) {
        if self.helo.is_none() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: send HELO/EHLO first"));
        } else if self.sender.is_none() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: need MAIL command"));
        } else if self.recipients.is_empty() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: need RCPT command"));
        } else {
            self.awaiting_start = true;
            self.next_step = Some(Step::StartData(self.transaction()));
        }
    }

    /// The transaction as it stands (the envelope of the message being received).
    fn transaction(&self) -> Transaction {
        Transaction {
            helo: self.helo.clone().unwrap_or_default(),
            sender: self.sender.clone().unwrap_or_default(),
            recipients: self.recipients.clone(),
            auth_user: self.auth_user.clone(),
            onion_auth: self.tx_auth.clone(),
        }
    }

    /// The outcome of preparing the message after [`Step::StartData`]: `Ok` says 354 and
    /// reads the text; `Err` gives the reply (e.g. 452 4.3.1 on a full disk) and ends the
    /// transaction. Our own failure: not counted as the client's error.
    pub fn data_started(&mut self, outcome: Result<(), Reply>) {
        if !self.awaiting_start {
            tracing::debug!("data_started() without DATA, ignored");
            return;
        }
        self.awaiting_start = false;
        match outcome {
            Ok(()) => {
                self.push(&Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
                self.mode = Mode::Data(DataState::default());
            }
            Err(reply) => {
                tracing::debug!(code = reply.code, "cannot start DATA");
                self.push(&reply);
                self.reset_transaction();
            }
        }
    }

    /// The outcome of the last [`Step::Write`]. A failure (e.g. a full disk) is kept: the
    /// rest of the text is read and dropped, and the final reply is this one.
    pub fn written(&mut self, outcome: Result<(), Reply>) {
        if !self.awaiting_write {
            tracing::debug!("written() without a write, ignored");
            return;
        }
        self.awaiting_write = false;
        let finished = self.finishing.take();
        match (outcome, finished) {
            (Ok(()), Some(transaction)) => {
                self.awaiting_enqueue = true;
                self.pending = Some(Step::Enqueue(transaction));
            }
            (Ok(()), None) => {}
            (Err(reply), Some(_)) => {
                tracing::debug!(code = reply.code, "the last write of a message failed");
                self.push(&reply);
                self.reset_transaction();
                self.pending = Some(Step::DiscardData);
            }
            (Err(reply), None) => {
                if let Mode::Data(state) = &mut self.mode {
                    state.refuse(Refusal::Write(reply));
                }
            }
        }
    }

    /// One line of message text at `start..end` in the input buffer (CRLF included).
    /// Returns the step to hand out: a chunk to write, or the end of the message.
    pub(super) fn data_line(&mut self, start: usize, end: usize) -> Option<Step> {
        let Mode::Data(state) = &mut self.mode else {
            return None;
        };
        let line = self.framer.bytes(start, end);
        if line == b".\r\n" {
            return Some(self.end_of_data());
        }
        let unstuffed = line.strip_prefix(b".").unwrap_or(line);
        state.add(
            unstuffed,
            self.config.max_text_line,
            self.config.max_message_size,
        );
        if state.buf.len() >= CHUNK {
            let chunk = std::mem::take(&mut state.buf);
            self.awaiting_write = true;
            return Some(Step::Write(chunk));
        }
        None
    }

    /// The final dot: refuse a message that broke a rule, or hand out its last chunk and
    /// then the transaction.
    fn end_of_data(&mut self) -> Step {
        let Mode::Data(mut state) = std::mem::replace(&mut self.mode, Mode::Command) else {
            return Step::NeedInput;
        };
        if let Some(refusal) = state.refused.take() {
            self.reset_transaction();
            match refusal {
                Refusal::TooBig => {
                    self.respond(Reply::new(552, [5, 3, 4], "Error: message too big"));
                }
                Refusal::LongLine => self.respond(Reply::new(
                    500,
                    [5, 5, 2],
                    "Error: line too long in message text",
                )),
                Refusal::Nul => self.respond(Reply::new(
                    554,
                    [5, 6, 0],
                    "Error: message contains a NUL character",
                )),
                // Our failure, not the client's.
                Refusal::Write(reply) => self.push(&reply),
            }
            return Step::DiscardData;
        }
        let transaction = self.transaction();
        self.reset_transaction();
        tracing::debug!(
            recipients = transaction.recipients.len(),
            size = state.size,
            "end of data"
        );
        if state.buf.is_empty() {
            self.awaiting_enqueue = true;
            return Step::Enqueue(transaction);
        }
        self.finishing = Some(transaction);
        self.awaiting_write = true;
        Step::Write(std::mem::take(&mut state.buf))
    }

    /// Bytes of message text received in the DATA phase under way (0 outside DATA): for the
    /// driver's minimum data rate.
    pub fn data_received(&self) -> Option<u64> {
        match &self.mode {
            Mode::Data(state) => Some(state.received()),
            Mode::Command => None,
        }
    }
}
