//! The sans-IO SMTP session: bytes in, replies out, a transaction to enqueue when DATA ends.

use std::time::Duration;

use crate::address::Address;
use crate::reply::Reply;

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
    /// Idle time allowed while waiting for a command.
    pub command_timeout: Duration,
    /// Idle time allowed while reading DATA.
    pub data_timeout: Duration,
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
        }
    }
}

/// Who may send to whom: implemented by the binary (onion-side rules, submission rules).
pub trait Policy {
    /// MAIL FROM with a validated sender (`None` for the null sender `<>`).
    fn check_sender(&self, sender: Option<&Address>) -> Result<(), Reply>;
    /// RCPT TO with a validated recipient. `Ok` accepts it (250 2.1.5).
    fn check_recipient(&self, recipient: &Address) -> Result<(), Reply>;
}

/// A complete mail transaction, ready to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The EHLO/HELO argument the client gave.
    pub helo: String,
    /// The envelope sender, empty for `<>`.
    pub sender: String,
    /// The accepted recipients, as `local@domain` (domain lower-cased).
    pub recipients: Vec<String>,
    /// The message, dot-unstuffed, CRLF line endings, ending in CRLF, without the final `.`.
    pub data: Vec<u8>,
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Write out [`Session::take_output`] if not empty, then read more input
    /// (or time out after [`Session::timeout`]).
    NeedInput,
    /// DATA ended: enqueue this, then call [`Session::enqueued`] with the outcome.
    Enqueue(Transaction),
    /// Write out what is pending and close the connection.
    Close,
}

/// One SMTP server session.
pub struct Session<P: Policy> {
    _config: SessionConfig,
    _policy: P,
}

impl<P: Policy> Session<P> {
    /// A new session; its banner (`220 <hostname> ESMTP`) is already in the output.
    pub fn new(config: SessionConfig, policy: P) -> Session<P> {
        let _ = (config, policy);
        unimplemented!()
    }

    /// Feeds bytes read from the client.
    pub fn receive(&mut self, input: &[u8]) {
        let _ = input;
        unimplemented!()
    }

    /// Processes buffered input as far as possible and says what to do next. Replies to
    /// pipelined commands accumulate in the output until input runs dry (RFC 2920).
    pub fn step(&mut self) -> Step {
        unimplemented!()
    }

    /// Takes the bytes to write to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        unimplemented!()
    }

    /// The outcome of enqueueing the last [`Step::Enqueue`]: the queue id (250) or the reply
    /// to give (e.g. 451 4.3.0).
    pub fn enqueued(&mut self, outcome: Result<String, Reply>) {
        let _ = outcome;
        unimplemented!()
    }

    /// The idle timeout in force now (command or DATA).
    pub fn timeout(&self) -> Duration {
        unimplemented!()
    }

    /// The client was idle too long: queue a 421 and close at the next step.
    pub fn timed_out(&mut self) {
        unimplemented!()
    }

    /// The server is shutting down: queue a 421 and close at the next step (not in the middle
    /// of an enqueue).
    pub fn shutting_down(&mut self) {
        unimplemented!()
    }
}
