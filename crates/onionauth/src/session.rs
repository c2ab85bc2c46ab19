//! The per-session rules on the server side: one nonce per session, one attempt, only
//! before the first MAIL, and a result that holds for the rest of the session (across RSET
//! and repeated EHLO); plus the result for each transaction's sender.

use crate::verify::{ehlo_keyword, parse_command_argument, verify};
use crate::{AuthError, ClientOnion, Nonce, Onion};

/// The outcome for a session or one of its transactions, as written in the
/// `Authentication-Results` header field (`x-onion-auth=pass|none|fail`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// No attempt.
    None,
    /// The client proved it holds this onion's key (and, for a transaction, the sender's
    /// domain is that onion or the reverse-path is null).
    Pass(ClientOnion),
    /// An attempt failed, or the transaction's sender domain is not the onion that passed.
    Fail,
}

impl AuthResult {
    /// `pass`, `none` or `fail`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthResult::None => "none",
            AuthResult::Pass(_) => "pass",
            AuthResult::Fail => "fail",
        }
    }

    /// The body of an `Authentication-Results` header field (RFC 8601):
    /// `<authserv_id>; x-onion-auth=pass smtp.mailfrom=<onion>`, or `...=none`/`...=fail`
    /// with no property. `authserv_id` is the receiving server's own onion address.
    pub fn authentication_results(&self, authserv_id: &str) -> String {
        match self {
            AuthResult::Pass(client) => {
                format!("{authserv_id}; x-onion-auth=pass smtp.mailfrom={client}")
            }
            other => format!("{authserv_id}; x-onion-auth={}", other.as_str()),
        }
    }
}

/// Server-side state for one SMTP session. The engine makes one per connection, calls
/// [`ServerAuth::ehlo_keyword`] for each EHLO reply, [`ServerAuth::attempt`] for each
/// XONIONAUTH command and [`ServerAuth::on_mail`] for each MAIL command. Nothing here is
/// reset by RSET or a repeated EHLO.
#[derive(Debug)]
pub struct ServerAuth {
    /// The server's own onions: any of them may be the signed server key.
    own: Vec<Onion>,
    /// This session's nonce.
    nonce: Nonce,
    /// An EHLO reply carried the nonce.
    advertised: bool,
    /// A MAIL command was seen.
    mail_seen: bool,
    /// The outcome so far.
    result: AuthResult,
}

impl ServerAuth {
    /// A session with a fresh nonce from the OS RNG. `own` lists every onion this server
    /// answers for (with none, every attempt fails).
    pub fn new(own: Vec<Onion>) -> ServerAuth {
        ServerAuth::with_nonce(own, Nonce::generate())
    }

    /// A session with a given nonce: for tests and test vectors only. A real session uses
    /// [`ServerAuth::new`], a nonce must never be reused.
    pub fn with_nonce(own: Vec<Onion>, nonce: Nonce) -> ServerAuth {
        ServerAuth {
            own,
            nonce,
            advertised: false,
            mail_seen: false,
            result: AuthResult::None,
        }
    }

    /// This session's nonce.
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }

    /// The EHLO keyword line (`XONIONAUTH <nonce>`, without `250-`). Every EHLO of the
    /// session shows the same nonce. Call it only when the line is sent.
    pub fn ehlo_keyword(&mut self) -> String {
        self.advertised = true;
        ehlo_keyword(&self.nonce)
    }

    /// Handles `XONIONAUTH <argument>` (`argument` without the verb and without CRLF).
    /// `Ok` means reply `235 2.7.0`. Sequence errors (no EHLO yet, a second attempt, after
    /// MAIL) change nothing; any other error makes the session's result `fail`.
    pub fn attempt(&mut self, argument: &str) -> Result<ClientOnion, AuthError> {
        if !self.advertised {
            return Err(AuthError::NotAdvertised);
        }
        if self.result != AuthResult::None {
            return Err(AuthError::AlreadyAttempted);
        }
        if self.mail_seen {
            return Err(AuthError::AfterMail);
        }
        let outcome = parse_command_argument(argument)
            .and_then(|(client, signature)| verify(&self.own, client, signature, &self.nonce));
        self.result = match &outcome {
            Ok(client) => AuthResult::Pass(client.clone()),
            Err(_) => AuthResult::Fail,
        };
        outcome
    }

    /// The session's result: `None` before an attempt, then `Pass` or `Fail` for good.
    pub fn result(&self) -> &AuthResult {
        &self.result
    }

    /// Call at every MAIL command, before the policy decides; XONIONAUTH is refused from
    /// then on. Returns the result for this transaction: `Pass` only if the sender's domain
    /// (`None` for the null reverse-path `<>`) is the onion that passed, compared without
    /// regard to case; a pass for another domain is `Fail`.
    pub fn on_mail(&mut self, sender_domain: Option<&str>) -> AuthResult {
        self.mail_seen = true;
        match (&self.result, sender_domain) {
            (AuthResult::Pass(client), Some(domain))
                if !domain.eq_ignore_ascii_case(&client.to_string()) =>
            {
                AuthResult::Fail
            }
            (result, _) => result.clone(),
        }
    }
}
