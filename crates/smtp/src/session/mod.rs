//! The sans-IO SMTP session: bytes in, replies out, a transaction to enqueue when DATA ends.
//!
//! The session owns an input buffer framed into CRLF lines (module `framer`), dispatches each
//! command line to its verb group (`ehlo`, `mail`, `rcpt`, `data`, `misc`) and collects the
//! replies in an output buffer that the driver writes when the session needs more input.

use std::time::Duration;

use crate::address::Address;
use crate::reply::Reply;

mod data;
mod ehlo;
mod framer;
mod mail;
mod misc;
mod onion_auth;
mod rcpt;
mod submission;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_garbage;
#[cfg(test)]
mod tests_onion_auth;
#[cfg(test)]
mod tests_submission;

use data::DataState;
use framer::{Frame, Framer};
use submission::AuthState;

pub use smtorp_onionauth::{AuthResult, Onion};

/// Whether the onion side offers and checks XONIONAUTH (docs/sender-auth.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SenderAuthMode {
    /// Not offered, nothing checked.
    Off,
    /// Offered and checked; the policy decides what an unauthenticated sender may do.
    #[default]
    Verify,
    /// Every transaction must come from an authenticated session (530 5.7.0 otherwise).
    Require,
}

/// Which rules a session applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SessionKind {
    /// The onion side (and `[smtp] listen`): no STARTTLS, no AUTH (both 502), mail only
    /// for our own users, as the policy says.
    #[default]
    OnionSide,
    /// The submission port (RFC 6409): STARTTLS, then AUTH PLAIN/LOGIN, and MAIL only once
    /// authenticated (530 5.7.0 before).
    Submission,
}

/// Bytes of unframed input beyond the longest line that [`Session::receive`] keeps before it
/// processes input by itself (for callers that feed a lot without calling `step`).
const SOFT_INPUT_SLACK: usize = 64 * 1024;
/// Output kept before processing pauses until the driver takes it.
const MAX_OUTPUT: usize = 1024 * 1024;

/// Limits and names of a session. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our domain: the only name in the banner and the EHLO reply (no software, no host name).
    pub hostname: String,
    /// Largest message in bytes, announced with SIZE and enforced while reading DATA (552).
    pub max_message_size: usize,
    /// Most recipients per transaction (452 4.5.3 after that).
    pub max_recipients: usize,
    /// Longest command line in octets including CRLF (500 5.5.2 beyond).
    pub max_command_line: usize,
    /// Longest text line in DATA in octets including CRLF (5xx beyond).
    pub max_text_line: usize,
    /// Errors allowed in one session before we say 421 and close.
    pub max_errors: usize,
    /// Time allowed for a whole command line to arrive (not only between two reads: a
    /// client that sends one byte now and then does not hold its slot longer).
    pub command_timeout: Duration,
    /// Idle time allowed while reading DATA.
    pub data_timeout: Duration,
    /// `command_timeout` under stress (most of the listener's slots taken).
    pub stress_command_timeout: Duration,
    /// `data_timeout` under stress.
    pub stress_data_timeout: Duration,
    /// The lowest average rate, in bytes per second, at which a client may send message
    /// text once DATA has run for `min_data_rate_after` (0: no minimum).
    pub min_data_rate: u64,
    /// How long DATA may run before the minimum rate applies.
    pub min_data_rate_after: Duration,
    /// Onion side or submission port.
    pub kind: SessionKind,
    /// Failed AUTH attempts allowed in one session; the last one is followed by 421 4.7.0.
    pub max_auth_failures: usize,
    /// XONIONAUTH on the onion side.
    pub sender_auth: SenderAuthMode,
    /// Our own onions (any of them may be the one a client signed for); without any,
    /// XONIONAUTH is not offered.
    pub own_onions: Vec<Onion>,
    /// The driver waits this long times the number of failures so far before it answers a
    /// failed AUTH (1 s, 2 s, 3 s, ...; at most 10 s).
    pub auth_failure_delay: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_command_line: 512,
            max_text_line: 1000,
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            stress_command_timeout: Duration::from_secs(10),
            stress_data_timeout: Duration::from_secs(30),
            min_data_rate: 1024,
            min_data_rate_after: Duration::from_secs(30),
            kind: SessionKind::OnionSide,
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(1),
            sender_auth: SenderAuthMode::Verify,
            own_onions: Vec::new(),
        }
    }
}

/// What a session knows about who is sending, for [`Policy::check_sender`].
#[derive(Debug, Clone, Copy)]
pub struct SenderContext<'a> {
    /// The user who authenticated with AUTH (submission port only).
    pub auth_user: Option<&'a str>,
    /// The session's XONIONAUTH result (onion side; `None` when not offered or not tried).
    pub onion_auth: &'a AuthResult,
}

/// Who may send to whom: implemented by the binary (onion-side rules, submission rules).
pub trait Policy {
    /// MAIL FROM with a validated sender (`None` for the null sender `<>`).
    fn check_sender(
        &self,
        sender: Option<&Address>,
        context: &SenderContext<'_>,
    ) -> Result<(), Reply>;
    /// MAIL FROM, before the sender: can we take a message of the announced `size` (0 when
    /// not announced) now? (E.g. 452 4.3.1 when the disk is nearly full.) Our state, not
    /// the client's fault: not counted as an error.
    fn check_resources(&self, size: usize) -> Result<(), Reply> {
        let _ = size;
        Ok(())
    }
    /// RCPT TO with a validated recipient. `Ok` accepts it (250 2.1.5).
    fn check_recipient(&self, recipient: &Address) -> Result<(), Reply>;
}

/// The envelope of a mail transaction: handed out when DATA starts ([`Step::StartData`])
/// and again when the message is complete ([`Step::Enqueue`]). The message text itself
/// leaves the session in chunks ([`Step::Write`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The EHLO/HELO argument the client gave.
    pub helo: String,
    /// The envelope sender in RFC 5321 form (a local part that needs it is quoted), empty
    /// for `<>`.
    pub sender: String,
    /// The accepted recipients in RFC 5321 form, `local@domain` (domain lower-cased).
    pub recipients: Vec<String>,
    /// The user who authenticated (submission port), `None` on the onion side.
    pub auth_user: Option<String>,
    /// The XONIONAUTH result for this transaction (onion side): `Pass` only if the sender's
    /// domain is the onion that authenticated, or the sender is `<>`.
    pub onion_auth: AuthResult,
}

/// A user name and password from AUTH. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity the client gave (a user name or `user@domain`).
    pub user: String,
    /// The password, as given.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Write out [`Session::take_output`] if not empty, then read more input
    /// (or time out after [`Session::timeout`]).
    NeedInput,
    /// DATA passed the session's checks: prepare where the message goes (a spool file),
    /// then call [`Session::data_started`] (354, or the reply that refuses it).
    StartData(Transaction),
    /// Message text (dot-unstuffed, CRLF line endings, at most a chunk): append it to the
    /// message, then call [`Session::written`].
    Write(Vec<u8>),
    /// The message being received is refused (too big, a line too long, a NUL, a failed
    /// write): drop what was written of it. The reply is already in the output.
    DiscardData,
    /// DATA ended and all its text was written: enqueue the message, then call
    /// [`Session::enqueued`] with the outcome.
    Enqueue(Transaction),
    /// Write out what is pending and close the connection.
    Close,
    /// STARTTLS was accepted (submission only): write out [`Session::take_output`] (the 220),
    /// run the TLS handshake on the stream, then call [`Session::tls_started`]; close the
    /// connection if the handshake fails.
    StartTls,
    /// AUTH gave credentials (submission only): check them, then call
    /// [`Session::authenticated`] with the user name or the reply to give (535 5.7.8).
    Authenticate(Credentials),
}

/// Where the session is in the dialogue.
#[derive(Debug)]
enum Mode {
    /// Reading command lines.
    Command,
    /// Reading message text after 354.
    Data(DataState),
}

/// One SMTP server session.
pub struct Session<P: Policy> {
    config: SessionConfig,
    policy: P,
    framer: Framer,
    output: Vec<u8>,
    mode: Mode,
    /// The EHLO/HELO argument, once given.
    helo: Option<String>,
    /// The envelope sender of the open transaction (`Some("")` for `<>`).
    sender: Option<String>,
    /// The sender declared SMTPUTF8.
    smtputf8: bool,
    /// The accepted recipients of the open transaction.
    recipients: Vec<String>,
    /// Error replies given so far.
    errors: usize,
    /// A `Step::Enqueue` was handed out and `enqueued` not called yet.
    awaiting_enqueue: bool,
    /// A `Step::StartData` was handed out and `data_started` not called yet.
    awaiting_start: bool,
    /// A `Step::Write` was handed out and `written` not called yet.
    awaiting_write: bool,
    /// DATA ended while its last chunk was being written: enqueue this after `written`.
    finishing: Option<Transaction>,
    /// A step found while processing inside `receive`, returned by the next `step`.
    pending: Option<Step>,
    /// A closing reply (timeout, shutdown) to give once the enqueue in progress is answered.
    deferred_close: Option<Reply>,
    /// Input had to be dropped because the caller did not drain the session.
    overflow: bool,
    /// The session is over: `step` says `Close` from now on.
    closed: bool,
    /// TLS is active (after STARTTLS).
    tls: bool,
    /// A `Step::StartTls` was handed out and `tls_started` not called yet.
    awaiting_tls: bool,
    /// A `Step::Authenticate` was handed out and `authenticated` not called yet.
    awaiting_auth: bool,
    /// The authenticated user (submission).
    auth_user: Option<String>,
    /// An AUTH exchange in progress: the next line is a response, not a command.
    auth_state: Option<AuthState>,
    /// Failed AUTH attempts in this session.
    auth_failures: usize,
    /// A step produced by the command just processed (StartTls, Authenticate, StartData).
    next_step: Option<Step>,
    /// XONIONAUTH state (onion side, when offered).
    onion_auth: Option<smtorp_onionauth::ServerAuth>,
    /// The XONIONAUTH result of the open transaction.
    tx_auth: AuthResult,
    /// Command lines processed so far (for the driver's per-command deadline).
    commands: u64,
}

impl<P: Policy> Session<P> {
    /// A new session; its banner (`220 <hostname> ESMTP`) is already in the output.
    pub fn new(config: SessionConfig, policy: P) -> Session<P> {
        let mut session = Session {
            config,
            policy,
            framer: Framer::default(),
            output: Vec::new(),
            mode: Mode::Command,
            helo: None,
            sender: None,
            smtputf8: false,
            recipients: Vec::new(),
            errors: 0,
            awaiting_enqueue: false,
            awaiting_start: false,
            awaiting_write: false,
            finishing: None,
            pending: None,
            deferred_close: None,
            overflow: false,
            closed: false,
            tls: false,
            awaiting_tls: false,
            awaiting_auth: false,
            auth_user: None,
            auth_state: None,
            auth_failures: 0,
            next_step: None,
            commands: 0,
            onion_auth: None,
            tx_auth: AuthResult::None,
        };
        let offered = session.config.kind == SessionKind::OnionSide
            && session.config.sender_auth != SenderAuthMode::Off
            && !session.config.own_onions.is_empty();
        if offered {
            session.onion_auth = Some(smtorp_onionauth::ServerAuth::new(
                session.config.own_onions.clone(),
            ));
        }
        let banner = Reply::plain(220, format!("{} ESMTP", session.config.hostname));
        session.push(&banner);
        session
    }

    /// Feeds bytes read from the client.
    pub fn receive(&mut self, input: &[u8]) {
        let soft_cap = self.longest_line() + SOFT_INPUT_SLACK;
        for chunk in input.chunks(SOFT_INPUT_SLACK) {
            if self.closed {
                self.framer.clear();
                return;
            }
            self.framer.push(chunk);
            if self.framer.buffered() <= soft_cap {
                continue;
            }
            // The caller feeds without stepping: process now to keep memory bounded.
            if self.pending.is_none() {
                match self.run() {
                    Step::NeedInput => {}
                    other => self.pending = Some(other),
                }
            }
            if self.framer.buffered() > 2 * soft_cap {
                // Still blocked (an enqueue or the output not taken): drop, and close later.
                tracing::debug!("input overflow, dropping buffered input");
                self.framer.clear();
                if !self.closed {
                    self.overflow = true;
                }
            }
        }
    }

    /// Processes buffered input as far as possible and says what to do next. Replies to
    /// pipelined commands accumulate in the output until input runs dry (RFC 2920).
    pub fn step(&mut self) -> Step {
        if let Some(step) = self.pending.take() {
            return step;
        }
        self.run()
    }

    /// Takes the bytes to write to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// The outcome of enqueueing the last [`Step::Enqueue`]: the queue id (250) or the reply
    /// to give (e.g. 451 4.3.0).
    pub fn enqueued(&mut self, outcome: Result<String, Reply>) {
        if !self.awaiting_enqueue {
            tracing::debug!("enqueued() without a transaction, ignored");
            return;
        }
        self.awaiting_enqueue = false;
        let reply = match outcome {
            Ok(id) => Reply::new(250, [2, 0, 0], format!("Ok: queued as {id}")),
            // Our own failure, not the client's: not counted as an error.
            Err(reply) => reply,
        };
        tracing::debug!(code = reply.code, "enqueue outcome");
        self.push(&reply);
        self.reset_transaction();
    }

    /// The timeout in force now: for a whole command line in command mode, idle time
    /// while reading DATA. Under stress (`stressed`: most of the listener's slots taken) the
    /// shorter stress timeouts apply, as Postfix does.
    pub fn timeout_under(&self, stressed: bool) -> Duration {
        let (normal, stress) = match self.mode {
            Mode::Command => (
                self.config.command_timeout,
                self.config.stress_command_timeout,
            ),
            Mode::Data(_) => (self.config.data_timeout, self.config.stress_data_timeout),
        };
        if stressed {
            normal.min(stress)
        } else {
            normal
        }
    }

    /// The timeout in force now without stress (see [`Session::timeout_under`]).
    pub fn timeout(&self) -> Duration {
        self.timeout_under(false)
    }

    /// The session's limits and names.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Command lines processed so far: the driver restarts the command deadline when it
    /// changes.
    pub fn commands_seen(&self) -> u64 {
        self.commands
    }

    /// True while reading message text.
    pub fn in_data(&self) -> bool {
        matches!(self.mode, Mode::Data(_))
    }

    /// The listener needs this session's slot for a newcomer: queue a 421 and close at the
    /// next step (not in the middle of an enqueue).
    pub fn evicted(&mut self) {
        let text = format!(
            "{} Error: too many connections; closing an idle session",
            self.config.hostname
        );
        self.close_soon(Reply::new(421, [4, 7, 0], text));
    }

    /// The client sends message text too slowly (below the minimum data rate).
    pub fn too_slow(&mut self) {
        let text = format!("{} Error: data rate too low", self.config.hostname);
        self.close_soon(Reply::new(421, [4, 4, 2], text));
    }

    /// The client was idle too long: queue a 421 and close at the next step.
    pub fn timed_out(&mut self) {
        let text = format!("{} Error: timeout exceeded", self.config.hostname);
        self.close_soon(Reply::new(421, [4, 4, 2], text));
    }

    /// The server is shutting down: queue a 421 and close at the next step (not in the middle
    /// of an enqueue).
    pub fn shutting_down(&mut self) {
        let text = format!("{} Service shutting down", self.config.hostname);
        self.close_soon(Reply::new(421, [4, 3, 2], text));
    }

    /// Closes with `reply` now, or right after the enqueue in progress is answered.
    fn close_soon(&mut self, reply: Reply) {
        if self.closed {
            return;
        }
        let enqueue_pending =
            matches!(self.pending, Some(Step::Enqueue(_) | Step::Authenticate(_)));
        if self.awaiting_enqueue
            || self.awaiting_auth
            || self.waiting_for_driver()
            || enqueue_pending
        {
            self.deferred_close = Some(reply);
        } else {
            self.close_with(&reply);
        }
    }

    /// True while a DATA start or a write is with the driver.
    fn waiting_for_driver(&self) -> bool {
        self.awaiting_start || self.awaiting_write
    }

    /// The longest line the framer may hold in any mode.
    fn longest_line(&self) -> usize {
        self.config
            .max_command_line
            .max(self.config.max_text_line.saturating_add(1))
    }

    /// The processing loop behind [`Session::step`].
    fn run(&mut self) -> Step {
        loop {
            if self.closed {
                self.framer.clear();
                return Step::Close;
            }
            if self.awaiting_enqueue || self.awaiting_auth || self.awaiting_tls {
                return Step::NeedInput;
            }
            if self.waiting_for_driver() {
                return Step::NeedInput;
            }
            if let Some(reply) = self.deferred_close.take() {
                self.close_with(&reply);
                continue;
            }
            if self.overflow {
                let text = format!("{} Error: too much pipelined input", self.config.hostname);
                self.close_with(&Reply::new(421, [4, 7, 0], text));
                continue;
            }
            if self.output.len() > MAX_OUTPUT {
                // Let the driver write first (only callers that never drain get here).
                return Step::NeedInput;
            }
            let limit = match self.mode {
                Mode::Command => self.config.max_command_line,
                // One more for a stuffed dot, which does not count (RFC 5321 4.5.3.1.6).
                Mode::Data(_) => self.config.max_text_line.saturating_add(1),
            };
            match self.framer.next(limit) {
                Frame::Partial => return Step::NeedInput,
                Frame::Bare => {
                    tracing::debug!("bare CR or LF received");
                    let text = format!(
                        "{} Bare CR or LF received; lines must end with CRLF",
                        self.config.hostname
                    );
                    self.close_with(&Reply::new(521, [5, 5, 2], text));
                }
                Frame::TooLong => match &mut self.mode {
                    Mode::Command => {
                        // An over-long AUTH response ends the exchange.
                        self.auth_state = None;
                        self.respond(Reply::new(500, [5, 5, 2], "Line too long"));
                    }
                    Mode::Data(state) => state.line_too_long(),
                },
                Frame::Line { start, end } => {
                    if matches!(self.mode, Mode::Data(_)) {
                        if let Some(step) = self.data_line(start, end) {
                            return step;
                        }
                    } else {
                        let line = self.framer.bytes(start, end).to_vec();
                        if self.auth_state.is_some() {
                            self.auth_response(&line);
                        } else {
                            self.command(&line);
                        }
                        self.commands = self.commands.wrapping_add(1);
                        if let Some(step) = self.next_step.take() {
                            return step;
                        }
                    }
                }
            }
        }
    }

    /// Handles one command line (CRLF included, already checked for bare CR/LF and length).
    fn command(&mut self, line: &[u8]) {
        use smtp_proto::Request;

        if let Some(argument) = onion_auth::argument(line) {
            self.xonionauth(argument);
            return;
        }
        if line.contains(&0) {
            tracing::debug!("command with a NUL character");
            self.respond(Reply::new(
                500,
                [5, 5, 2],
                "Error: bad syntax (NUL character)",
            ));
            return;
        }
        if std::str::from_utf8(line).is_err() {
            tracing::debug!("command with invalid UTF-8");
            self.respond(Reply::new(
                500,
                [5, 5, 2],
                "Error: bad syntax (invalid UTF-8)",
            ));
            return;
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(?error, "unparsable command");
                self.parse_error(error);
                return;
            }
        };
        tracing::debug!(command = request.name(), "smtp command");
        match request {
            Request::Ehlo { host } => self.ehlo(&host, true),
            Request::Helo { host } => self.ehlo(&host, false),
            Request::Mail { from } => self.mail(from, line),
            Request::Rcpt { to } => self.rcpt(to, line),
            Request::Data => self.data_command(),
            Request::Rset => self.rset(),
            Request::Noop { .. } => self.noop(),
            Request::Quit => self.quit(),
            Request::Vrfy { .. } => self.vrfy(),
            Request::Expn { .. } => self.expn(),
            Request::Help { .. } => self.help(),
            Request::Lhlo { .. } => self.unknown(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            Request::StartTls => self.starttls(),
            Request::Bdat { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.not_implemented(),
        }
    }

    /// Appends a reply to the output without counting it.
    fn push(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    /// Replies to the client; 4xx and 5xx count towards `max_errors`, and the last one allowed
    /// is followed by 421 4.7.0 and the end of the session.
    fn respond(&mut self, reply: Reply) {
        tracing::debug!(code = reply.code, "smtp reply");
        self.push(&reply);
        if reply.is_error() {
            self.errors += 1;
            if self.errors >= self.config.max_errors {
                tracing::debug!(errors = self.errors, "too many errors");
                let text = format!("{} Error: too many errors", self.config.hostname);
                self.close_with(&Reply::new(421, [4, 7, 0], text));
            }
        }
    }

    /// Gives a last reply and ends the session; nothing after it is processed.
    fn close_with(&mut self, reply: &Reply) {
        tracing::debug!(code = reply.code, "closing session");
        self.push(reply);
        self.closed = true;
        self.mode = Mode::Command;
        self.reset_transaction();
        self.framer.clear();
    }

    /// Forgets the open mail transaction (keeps EHLO).
    fn reset_transaction(&mut self) {
        self.sender = None;
        self.smtputf8 = false;
        self.recipients.clear();
    }
}
