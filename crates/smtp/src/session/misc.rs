//! The small commands: RSET, NOOP, QUIT, VRFY, EXPN, HELP, the ones we do not offer, and the
//! replies to lines smtp-proto could not parse.

use super::{Policy, Session};
use crate::reply::Reply;

impl<P: Policy> Session<P> {
    /// RSET: forget the transaction, keep the greeting.
    pub(super) fn rset(&mut self) {
        self.reset_transaction();
        self.respond(Reply::new(250, [2, 0, 0], "Ok"));
    }

    /// NOOP.
    pub(super) fn noop(&mut self) {
        self.respond(Reply::new(250, [2, 0, 0], "Ok"));
    }

    /// QUIT: 221 and close.
    pub(super) fn quit(&mut self) {
        self.close_with(&Reply::new(221, [2, 0, 0], "Bye"));
    }

    /// VRFY never says whether a user exists.
    pub(super) fn vrfy(&mut self) {
        let text = "Cannot VRFY user, but will accept message and attempt delivery";
        self.respond(Reply::new(252, [2, 5, 0], text));
    }

    /// EXPN is not offered.
    pub(super) fn expn(&mut self) {
        self.not_implemented();
    }

    /// HELP lists the commands (and nothing about the software).
    pub(super) fn help(&mut self) {
        let text = "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP";
        self.respond(Reply::new(214, [2, 0, 0], text));
    }

    /// Known commands we do not offer (AUTH, STARTTLS, BDAT, EXPN, ETRN, ...).
    pub(super) fn not_implemented(&mut self) {
        self.respond(Reply::new(502, [5, 5, 1], "Error: command not implemented"));
    }

    /// Commands we do not know.
    pub(super) fn unknown(&mut self) {
        self.respond(Reply::new(500, [5, 5, 1], "Error: command not recognized"));
    }

    /// A line smtp-proto refused.
    pub(super) fn parse_error(&mut self, error: smtp_proto::Error) {
        use smtp_proto::Error;
        let reply = match error {
            Error::UnknownCommand => {
                return self.unknown();
            }
            Error::SyntaxError { syntax } => {
                Reply::new(501, [5, 5, 4], format!("Syntax: {syntax}"))
            }
            Error::InvalidSenderAddress => Reply::new(501, [5, 1, 7], "Bad sender address syntax"),
            Error::InvalidRecipientAddress => {
                Reply::new(501, [5, 1, 3], "Bad recipient address syntax")
            }
            Error::InvalidParameter { param } => {
                Reply::new(501, [5, 5, 4], format!("Error: invalid {param} parameter"))
            }
            Error::UnsupportedParameter { .. } => {
                Reply::new(555, [5, 5, 4], "Error: unsupported parameter")
            }
            Error::NeedsMoreData { .. }
            | Error::ResponseTooLong
            | Error::InvalidResponse { .. } => Reply::new(500, [5, 5, 2], "Error: bad syntax"),
        };
        self.respond(reply);
    }
}
