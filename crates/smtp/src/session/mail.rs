//! MAIL FROM: sequence checks, parameters (SIZE, BODY, SMTPUTF8), sender validation and policy.

use std::borrow::Cow;

use smtp_proto::{MailFrom, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8};

use super::{AuthResult, Policy, Session};
use crate::address::Address;
use crate::reply::Reply;

/// True if the path in a MAIL/RCPT line is literally `<>` (smtp-proto returns an empty address
/// both for `<>` and for `<postmaster>`).
pub(super) fn is_empty_path(line: &[u8]) -> bool {
    line.iter()
        .position(|&b| b == b'<')
        .is_some_and(|i| line.get(i + 1) == Some(&b'>'))
}

impl<P: Policy> Session<P> {
    /// MAIL FROM:<reverse-path> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8].
    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>, line: &[u8]) {
        if self.helo.is_none() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: send HELO/EHLO first"));
            return;
        }
        if self.submission() && self.auth_user.is_none() {
            self.respond(Reply::new(530, [5, 7, 0], "Authentication required"));
            return;
        }
        if self.sender.is_some() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: nested MAIL command"));
            return;
        }
        let known = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
        let unsupported = from.flags & !known != 0
            || from.trans_id.is_some()
            || from.env_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
            // AUTH= (RFC 4954 5) is accepted, and ignored, where AUTH is offered.
            || (from.auth.is_some() && !self.submission())
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0;
        if unsupported {
            self.respond(Reply::new(
                555,
                [5, 5, 4],
                "Error: unsupported MAIL parameter",
            ));
            return;
        }
        if from.size > self.config.max_message_size {
            let text = "Error: message size exceeds fixed maximum message size";
            self.respond(Reply::new(552, [5, 3, 4], text));
            return;
        }
        if let Err(reply) = self.policy.check_resources(from.size) {
            self.push(&reply);
            return;
        }
        let utf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let sender = if from.address.is_empty() {
            if !is_empty_path(line) {
                // `<postmaster>` is no reverse-path.
                self.respond(Reply::new(501, [5, 1, 7], "Bad sender address syntax"));
                return;
            }
            None
        } else {
            match Address::from_unquoted(&from.address, utf8) {
                Ok(address) => Some(address),
                Err(error) => {
                    self.respond(Reply::new(
                        501,
                        [5, 1, 7],
                        format!("Bad sender address: {error}"),
                    ));
                    return;
                }
            }
        };
        let tx_auth = match self.onion_auth.as_mut() {
            Some(auth) => auth.on_mail(sender.as_ref().map(|a| a.domain.as_str())),
            None => AuthResult::None,
        };
        if self.config.sender_auth == super::SenderAuthMode::Require && self.onion_auth.is_some() {
            match &tx_auth {
                AuthResult::Pass(_) => {}
                AuthResult::None => {
                    self.respond(Reply::new(530, [5, 7, 0], "Authentication required"));
                    return;
                }
                AuthResult::Fail => {
                    let text = "Sender domain not authenticated";
                    self.respond(Reply::new(550, [5, 7, 1], text));
                    return;
                }
            }
        }
        let session_auth = self
            .onion_auth
            .as_ref()
            .map(|a| a.result().clone())
            .unwrap_or(AuthResult::None);
        let context = super::SenderContext {
            auth_user: self.auth_user.as_deref(),
            onion_auth: &session_auth,
        };
        if let Err(reply) = self.policy.check_sender(sender.as_ref(), &context) {
            self.respond(reply);
            return;
        }
        self.tx_auth = tx_auth;
        self.sender = Some(sender.map(|a| a.to_string()).unwrap_or_default());
        self.smtputf8 = utf8;
        self.recipients.clear();
        self.respond(Reply::new(250, [2, 1, 0], "Ok"));
    }
}
