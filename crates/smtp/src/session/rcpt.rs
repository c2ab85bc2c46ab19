//! RCPT TO: sequence checks, recipient validation, duplicates, the recipient limit, policy.

use std::borrow::Cow;

use smtp_proto::RcptTo;

use super::mail::is_empty_path;
use super::{Policy, Session};
use crate::address::{Address, AddressError};
use crate::reply::Reply;

impl<P: Policy> Session<P> {
    /// RCPT TO:<forward-path>. `<postmaster>` means postmaster at our domain.
    pub(super) fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>, line: &[u8]) {
        if self.sender.is_none() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: need MAIL command"));
            return;
        }
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            self.respond(Reply::new(
                555,
                [5, 5, 4],
                "Error: unsupported RCPT parameter",
            ));
            return;
        }
        let recipient = if to.address.is_empty() {
            if is_empty_path(line) {
                self.respond(Reply::new(501, [5, 1, 3], "Bad recipient address syntax"));
                return;
            }
            Address {
                local_part: "postmaster".to_owned(),
                domain: self.config.hostname.to_ascii_lowercase(),
            }
        } else {
            match Address::from_unquoted(&to.address, self.smtputf8) {
                Ok(address) => address,
                Err(error @ (AddressError::BadOnion | AddressError::BadDomain))
                    if self.submission() =>
                {
                    let text = format!(
                        "Bad recipient address: {error}; smtorp delivers only to onion addresses (user@<56 characters>.onion)"
                    );
                    self.respond(Reply::new(553, [5, 1, 3], text));
                    return;
                }
                Err(error) => {
                    let text = format!("Bad recipient address: {error}");
                    self.respond(Reply::new(501, [5, 1, 3], text));
                    return;
                }
            }
        };
        let text = recipient.to_string();
        if self.recipients.contains(&text) {
            // Accepted once already: say yes, keep one copy.
            self.respond(Reply::new(250, [2, 1, 5], "Ok"));
            return;
        }
        if self.recipients.len() >= self.config.max_recipients {
            self.respond(Reply::new(452, [4, 5, 3], "Too many recipients"));
            return;
        }
        if let Err(reply) = self.policy.check_recipient(&recipient) {
            self.respond(reply);
            return;
        }
        self.recipients.push(text);
        self.respond(Reply::new(250, [2, 1, 5], "Ok"));
    }
}
