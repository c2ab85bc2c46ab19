//! DATA: the command, then the message text up to `<CRLF>.<CRLF>` with dot-unstuffing and
//! the size and line-length limits. End of data is recognised only on a line of its own
//! that is exactly `.` CRLF; the framer has already refused bare CR and LF.

use super::{Mode, Policy, Session, Step, Transaction};
use crate::reply::Reply;

/// The message being received after 354.
#[derive(Debug, Default)]
pub(super) struct DataState {
    /// The unstuffed text so far (emptied once the message is known to be refused).
    data: Vec<u8>,
    /// The message went over `max_message_size`.
    too_big: bool,
    /// A text line went over `max_text_line`.
    long_line: bool,
}

impl DataState {
    /// A line over the limit was seen (and discarded by the framer).
    pub(super) fn line_too_long(&mut self) {
        self.long_line = true;
        self.data = Vec::new();
    }

    /// Adds one unstuffed line (CRLF included) within the limits.
    fn add(&mut self, line: &[u8], max_line: usize, max_size: usize) {
        if line.len() > max_line {
            self.line_too_long();
        }
        if self.too_big || self.long_line {
            return;
        }
        if self.data.len().saturating_add(line.len()) > max_size {
            self.too_big = true;
            self.data = Vec::new();
            return;
        }
        self.data.extend_from_slice(line);
    }
}

impl<P: Policy> Session<P> {
    /// DATA: needs EHLO/HELO, MAIL and at least one accepted RCPT.
    pub(super) fn data_command(&mut self) {
        if self.helo.is_none() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: send HELO/EHLO first"));
        } else if self.sender.is_none() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: need MAIL command"));
        } else if self.recipients.is_empty() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: need RCPT command"));
        } else {
            self.respond(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
            self.mode = Mode::Data(DataState::default());
        }
    }

    /// One line of message text at `start..end` in the input buffer (CRLF included).
    /// Returns the step to hand out when the data ended and the message is accepted.
    pub(super) fn data_line(&mut self, start: usize, end: usize) -> Option<Step> {
        let Mode::Data(state) = &mut self.mode else {
            return None;
        };
        let line = self.framer.bytes(start, end);
        if line == b".\r\n" {
            return self.end_of_data();
        }
        let unstuffed = line.strip_prefix(b".").unwrap_or(line);
        state.add(
            unstuffed,
            self.config.max_text_line,
            self.config.max_message_size,
        );
        None
    }

    /// The final dot: refuse an oversized or malformed message, or hand the transaction out.
    fn end_of_data(&mut self) -> Option<Step> {
        let Mode::Data(state) = std::mem::replace(&mut self.mode, Mode::Command) else {
            return None;
        };
        if state.too_big {
            self.reset_transaction();
            self.respond(Reply::new(552, [5, 3, 4], "Error: message too big"));
            return None;
        }
        if state.long_line {
            self.reset_transaction();
            self.respond(Reply::new(
                500,
                [5, 5, 2],
                "Error: line too long in message text",
            ));
            return None;
        }
        let transaction = Transaction {
            helo: self.helo.clone().unwrap_or_default(),
            sender: self.sender.take().unwrap_or_default(),
            recipients: std::mem::take(&mut self.recipients),
            data: state.data,
            auth_user: self.auth_user.clone(),
        };
        self.reset_transaction();
        tracing::debug!(
            recipients = transaction.recipients.len(),
            size = transaction.data.len(),
            "end of data"
        );
        self.awaiting_enqueue = true;
        Some(Step::Enqueue(transaction))
    }
}
