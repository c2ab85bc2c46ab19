//! EHLO and HELO: greet, announce the extensions we implement, reset the transaction.

use super::{Policy, Session};
use crate::reply::Reply;

/// True if `host` is a plausible EHLO argument: printable ASCII, no spaces, 1..=255 octets.
fn valid_helo(host: &str) -> bool {
    (1..=255).contains(&host.len()) && host.bytes().all(|b| b.is_ascii_graphic())
}

impl<P: Policy> Session<P> {
    /// EHLO (`extended`) or HELO.
    pub(super) fn ehlo(&mut self, host: &str, extended: bool) {
        if !valid_helo(host) {
            self.respond(Reply::new(
                501,
                [5, 5, 4],
                "Error: invalid EHLO/HELO argument",
            ));
            return;
        }
        self.reset_transaction();
        self.helo = Some(host.to_owned());
        if !extended {
            let reply = Reply::plain(250, self.config.hostname.clone());
            self.respond(reply);
            return;
        }
        // Written by hand: smtp-proto's EhloResponse adds a software fingerprint.
        let mut lines = vec![
            self.config.hostname.clone(),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
        ];
        if self.submission() {
            // AUTH only inside TLS; STARTTLS only before it.
            lines.push(
                if self.tls {
                    "AUTH PLAIN LOGIN"
                } else {
                    "STARTTLS"
                }
                .to_owned(),
            );
        }
        if let Some(auth) = self.onion_auth.as_mut() {
            lines.push(auth.ehlo_keyword());
        }
        lines.push("ENHANCEDSTATUSCODES".to_owned());
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let text: String = line.chars().filter(|c| !c.is_control()).collect();
            self.output
                .extend_from_slice(format!("250{sep}{text}\r\n").as_bytes());
        }
        tracing::debug!(code = 250, "smtp reply");
    }
}
