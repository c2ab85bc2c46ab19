//! XONIONAUTH on the onion side (docs/sender-auth.md): the command, its replies, and the
//! rules of a session (one attempt, before MAIL; the result holds for the session). The
//! cryptography and the state are in `smtorp-onionauth`; this module only talks SMTP.

use smtorp_onionauth::{AuthError, KEYWORD};

use super::{Policy, Session};
use crate::reply::Reply;

/// The argument of an XONIONAUTH command line (without the verb and CRLF), or `None` if
/// the line is another command.
pub(super) fn argument(line: &[u8]) -> Option<&str> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let verb = line.get(..KEYWORD.len())?;
    if !verb.eq_ignore_ascii_case(KEYWORD.as_bytes()) {
        return None;
    }
    match line.get(KEYWORD.len()..)? {
        [] => Some(""),
        [b' ', rest @ ..] => std::str::from_utf8(rest).ok(),
        _ => None,
    }
}

/// The reply to a failed attempt (docs/sender-auth.md, section 6).
fn reply_of(error: &AuthError) -> Reply {
    let (code, enhanced) = match error {
        AuthError::InvalidKey | AuthError::BadSignature | AuthError::Reflection => (535, [5, 7, 8]),
        AuthError::AlreadyAttempted | AuthError::AfterMail | AuthError::NotAdvertised => {
            (503, [5, 5, 1])
        }
        AuthError::Syntax
        | AuthError::MalformedAddress
        | AuthError::BadVersion
        | AuthError::BadChecksum
        | AuthError::BadBase64
        | AuthError::BadSignatureLength
        | AuthError::BadNonce => (501, [5, 5, 4]),
    };
    Reply::new(code, enhanced, error.to_string())
}

impl<P: Policy> Session<P> {
    /// XONIONAUTH <onion> <signature>.
    pub(super) fn xonionauth(&mut self, argument: &str) {
        let Some(auth) = self.onion_auth.as_mut() else {
            // Not offered here (submission port, or sender_auth = "off").
            self.not_implemented();
            return;
        };
        match auth.attempt(argument) {
            Ok(client) => {
                tracing::info!(client = %client, "XONIONAUTH passed");
                self.respond(Reply::new(235, [2, 7, 0], "Authentication successful"));
            }
            Err(error) => {
                tracing::info!(%error, "XONIONAUTH refused");
                self.respond(reply_of(&error));
            }
        }
    }

    /// The session's XONIONAUTH result so far.
    pub fn onion_auth_result(&self) -> Option<&smtorp_onionauth::AuthResult> {
        self.onion_auth.as_ref().map(|a| a.result())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verb_is_recognised_in_any_case_and_only_whole() {
        assert_eq!(argument(b"XONIONAUTH a b\r\n"), Some("a b"));
        assert_eq!(argument(b"xonionauth a b\r\n"), Some("a b"));
        assert_eq!(argument(b"XONIONAUTH\r\n"), Some(""));
        assert_eq!(argument(b"XONIONAUTHX a\r\n"), None);
        assert_eq!(argument(b"MAIL FROM:<a@b>\r\n"), None);
    }
}
