//! The submission port's commands (RFC 6409): STARTTLS (RFC 3207) and AUTH PLAIN (RFC 4616)
//! / LOGIN (RFC 4954). On the onion side both stay `502 5.5.1`.
//!
//! STARTTLS discards every byte buffered after the command line (pipelined plaintext must
//! never be executed inside the TLS session: the CVE-2011-0411 class of command injection),
//! and [`Session::tls_started`] resets the session to the state after the banner. AUTH is
//! refused before TLS. Credentials leave the session as [`Step::Authenticate`]; the password
//! is never logged.

use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

use super::{Credentials, Policy, Session, SessionKind, Step};
use crate::reply::Reply;

/// An AUTH exchange waiting for the client's next (base64) line.
#[derive(Debug)]
pub(super) enum AuthState {
    /// AUTH PLAIN without an initial response: we sent `334 `.
    Plain,
    /// AUTH LOGIN: we asked for the user name.
    LoginUser,
    /// AUTH LOGIN: we asked for the password of this user.
    LoginPassword {
        /// The user name already given.
        user: String,
    },
}

/// Longest time the driver waits before answering a failed AUTH.
const MAX_AUTH_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

/// Decodes one base64 AUTH response (`=` is the empty response).
fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text == "=" {
        return Some(Vec::new());
    }
    data_encoding::BASE64.decode(text.as_bytes()).ok()
}

/// Splits a decoded PLAIN message `authzid NUL authcid NUL passwd`.
fn plain_parts(decoded: &[u8]) -> Option<(String, String, String)> {
    let mut parts = decoded.split(|&b| b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?;
    let authcid = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || authcid.is_empty() || password.is_empty() {
        return None;
    }
    Some((authzid.to_owned(), authcid.to_owned(), password.to_owned()))
}

impl<P: Policy> Session<P> {
    /// True on the submission port.
    pub(super) fn submission(&self) -> bool {
        self.config.kind == SessionKind::Submission
    }

    /// STARTTLS.
    pub(super) fn starttls(&mut self) {
        if !self.submission() {
            self.not_implemented();
        } else if self.tls {
            self.respond(Reply::new(503, [5, 5, 1], "Error: TLS already active"));
        } else if self.helo.is_none() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: send HELO/EHLO first"));
        } else {
            self.respond(Reply::new(220, [2, 0, 0], "Ready to start TLS"));
            // Whatever the client sent after STARTTLS in plaintext is never executed.
            self.framer.clear();
            self.reset_transaction();
            self.awaiting_tls = true;
            self.next_step = Some(Step::StartTls);
        }
    }

    /// The TLS handshake after [`Step::StartTls`] succeeded: the session starts over (the
    /// client must say EHLO again, RFC 3207) and any input buffered before is discarded.
    pub fn tls_started(&mut self) {
        if !self.awaiting_tls {
            tracing::debug!("tls_started() without STARTTLS, ignored");
            return;
        }
        self.awaiting_tls = false;
        self.tls = true;
        self.framer.clear();
        self.helo = None;
        self.auth_user = None;
        self.auth_state = None;
        self.reset_transaction();
        tracing::debug!("TLS started");
    }

    /// True once STARTTLS completed.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The authenticated user, if any.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// Failed AUTH attempts so far in this session.
    pub fn auth_failures(&self) -> usize {
        self.auth_failures
    }

    /// How long the driver should wait before answering the AUTH failure it is about to
    /// report: `auth_failure_delay` times the failures so far (this one included), at most
    /// 10 s.
    pub fn auth_failure_delay(&self) -> std::time::Duration {
        let n = u32::try_from(self.auth_failures.saturating_add(1)).unwrap_or(u32::MAX);
        self.config
            .auth_failure_delay
            .saturating_mul(n)
            .min(MAX_AUTH_DELAY)
    }

    /// AUTH mechanism [initial-response].
    pub(super) fn auth(&mut self, mechanism: u64, initial: &str) {
        if !self.submission() {
            self.not_implemented();
            return;
        }
        if !self.tls {
            let text = "Must issue a STARTTLS command first";
            self.respond(Reply::new(530, [5, 7, 0], text));
            return;
        }
        if self.helo.is_none() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: send HELO/EHLO first"));
            return;
        }
        if self.auth_user.is_some() {
            self.respond(Reply::new(503, [5, 5, 1], "Error: already authenticated"));
            return;
        }
        if self.sender.is_some() {
            let text = "Error: MAIL transaction in progress";
            self.respond(Reply::new(503, [5, 5, 1], text));
            return;
        }
        tracing::debug!(plain = mechanism == AUTH_PLAIN, "AUTH started");
        match mechanism {
            AUTH_PLAIN if initial.is_empty() => {
                self.auth_state = Some(AuthState::Plain);
                self.respond(Reply::plain(334, ""));
            }
            AUTH_PLAIN => self.auth_plain(initial),
            AUTH_LOGIN if initial.is_empty() => {
                self.auth_state = Some(AuthState::LoginUser);
                self.respond(Reply::plain(334, "VXNlcm5hbWU6"));
            }
            AUTH_LOGIN => self.auth_login_user(initial),
            _ => {
                let text = "Error: unsupported authentication mechanism";
                self.respond(Reply::new(504, [5, 5, 4], text));
            }
        }
    }

    /// A line of an AUTH exchange (CRLF included). Never logged.
    pub(super) fn auth_response(&mut self, line: &[u8]) {
        let Some(state) = self.auth_state.take() else {
            return;
        };
        let text = std::str::from_utf8(line)
            .unwrap_or("")
            .trim_end_matches("\r\n");
        if text.trim() == "*" {
            tracing::debug!("AUTH cancelled by the client");
            self.respond(Reply::new(501, [5, 7, 0], "Authentication cancelled"));
            return;
        }
        match state {
            AuthState::Plain => self.auth_plain(text),
            AuthState::LoginUser => self.auth_login_user(text),
            AuthState::LoginPassword { user } => self.auth_login_password(user, text),
        }
    }

    /// 501: the response is not base64 or not of the mechanism's form.
    fn undecodable(&mut self) {
        tracing::debug!("AUTH response cannot be decoded");
        self.respond(Reply::new(501, [5, 5, 2], "Cannot decode response"));
    }

    /// The PLAIN response.
    fn auth_plain(&mut self, text: &str) {
        let Some((authzid, user, password)) = decode(text).as_deref().and_then(plain_parts) else {
            self.undecodable();
            return;
        };
        if !authzid.is_empty() && authzid != user {
            // Acting for another identity is not offered.
            let reply = Reply::new(535, [5, 7, 8], "Authentication credentials invalid");
            self.auth_outcome(Err(reply));
            return;
        }
        self.request_auth(user, password);
    }

    /// The LOGIN user name.
    fn auth_login_user(&mut self, text: &str) {
        let Some(user) = decode(text).and_then(|d| String::from_utf8(d).ok()) else {
            self.undecodable();
            return;
        };
        self.auth_state = Some(AuthState::LoginPassword { user });
        self.respond(Reply::plain(334, "UGFzc3dvcmQ6"));
    }

    /// The LOGIN password.
    fn auth_login_password(&mut self, user: String, text: &str) {
        let Some(password) = decode(text).and_then(|d| String::from_utf8(d).ok()) else {
            self.undecodable();
            return;
        };
        self.request_auth(user, password);
    }

    /// Hands the credentials to the driver.
    fn request_auth(&mut self, user: String, password: String) {
        self.awaiting_auth = true;
        self.next_step = Some(Step::Authenticate(Credentials { user, password }));
    }

    /// The outcome of checking the credentials of the last [`Step::Authenticate`]: the user
    /// name (235 2.7.0) or the reply to give (e.g. 535 5.7.8). Failures count towards
    /// `max_errors` and `max_auth_failures`.
    pub fn authenticated(&mut self, outcome: Result<String, Reply>) {
        if !self.awaiting_auth {
            tracing::debug!("authenticated() without AUTH, ignored");
            return;
        }
        self.awaiting_auth = false;
        self.auth_outcome(outcome);
    }

    fn auth_outcome(&mut self, outcome: Result<String, Reply>) {
        match outcome {
            Ok(user) => {
                tracing::debug!("AUTH succeeded");
                self.auth_user = Some(user);
                self.respond(Reply::new(235, [2, 7, 0], "Authentication successful"));
            }
            Err(reply) => {
                self.auth_failures += 1;
                tracing::debug!(failures = self.auth_failures, "AUTH failed");
                self.respond(reply);
                if !self.closed && self.auth_failures >= self.config.max_auth_failures {
                    let text = format!(
                        "{} Error: too many authentication failures",
                        self.config.hostname
                    );
                    self.close_with(&Reply::new(421, [4, 7, 0], text));
                }
            }
        }
    }
}
