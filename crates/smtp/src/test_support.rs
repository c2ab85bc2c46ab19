//! Test helpers shared by the session and driver tests: a policy for one onion domain and
//! an expect-style dialogue driver.
#![allow(unreachable_pub)]

use std::sync::LazyLock;

use crate::address::{onion_v3_from_key, Address};
use crate::reply::Reply;
use crate::session::{Policy, SenderContext, Session, SessionConfig, Step, Transaction};

/// Our onion domain in tests (built from a fixed key, so it has a valid checksum).
pub static DOMAIN: LazyLock<String> = LazyLock::new(|| onion_v3_from_key(&[7u8; 32]));

/// Another valid onion domain we do not serve.
pub static OTHER: LazyLock<String> = LazyLock::new(|| onion_v3_from_key(&[9u8; 32]));

/// Accepts alice, bob and postmaster at [`DOMAIN`]; refuses the sender `spammer@...`.
#[derive(Debug, Clone, Copy)]
pub struct TestPolicy;

impl Policy for TestPolicy {
    fn check_sender(
        &self,
        sender: Option<&Address>,
        context: &SenderContext<'_>,
    ) -> Result<(), Reply> {
        let auth_user = context.auth_user;
        match sender {
            Some(a) if a.local_part == "spammer" => {
                Err(Reply::new(550, [5, 7, 1], "Sender rejected"))
            }
            Some(a) if auth_user.is_some_and(|u| u != a.local_part) => {
                Err(Reply::new(553, [5, 7, 1], "Not your address"))
            }
            _ => Ok(()),
        }
    }

    fn check_recipient(&self, recipient: &Address) -> Result<(), Reply> {
        if recipient.domain != *DOMAIN {
            return Err(Reply::new(550, [5, 7, 1], "Relay access denied"));
        }
        match recipient.local_part.as_str() {
            "alice" | "bob" | "postmaster" => Ok(()),
            _ => Err(Reply::new(550, [5, 1, 1], "User unknown")),
        }
    }
}

/// The test configuration: our onion domain, default limits.
pub fn config() -> SessionConfig {
    SessionConfig {
        hostname: DOMAIN.clone(),
        ..SessionConfig::default()
    }
}

/// An expect-style dialogue: feed lines, check reply codes.
pub struct Dialogue {
    pub session: Session<TestPolicy>,
    /// Transactions handed out by `Step::Enqueue`.
    pub enqueued: Vec<Transaction>,
    /// The text of each enqueued message (what `Step::Write` handed out for it).
    pub messages: Vec<Vec<u8>>,
    /// The text of the message being received.
    pub current: Option<Vec<u8>>,
    /// Messages dropped by `Step::DiscardData`.
    pub discarded: usize,
    /// Largest chunk handed out by `Step::Write`.
    pub largest_write: usize,
    /// What `data_started` is told; `None` gives `Ok(())`.
    pub begin_outcome: Option<Result<(), Reply>>,
    /// What `written` is told; `None` gives `Ok(())`.
    pub write_outcome: Option<Result<(), Reply>>,
    /// What `enqueued` is told; `None` gives `Ok("Q<n>")`.
    pub enqueue_outcome: Option<Result<String, Reply>>,
    /// The session said `Close`.
    pub closed: bool,
    /// Output collected by `send`, one `take_output` per `NeedInput`/`Close`.
    pub writes: Vec<Vec<u8>>,
    /// `Step::StartTls` seen (each answered with `tls_started`).
    pub starttls: usize,
    /// Credentials handed out by `Step::Authenticate` (alice/secret is right).
    pub credentials: Vec<crate::session::Credentials>,
}

impl Dialogue {
    /// A session with the test config; checks the banner.
    pub fn new() -> Dialogue {
        Dialogue::with(config())
    }

    /// A session with `config`; checks the banner.
    pub fn with(config: SessionConfig) -> Dialogue {
        let host = config.hostname.clone();
        let mut d = Dialogue {
            session: Session::new(config, TestPolicy),
            enqueued: Vec::new(),
            messages: Vec::new(),
            current: None,
            discarded: 0,
            largest_write: 0,
            begin_outcome: None,
            write_outcome: None,
            enqueue_outcome: None,
            closed: false,
            writes: Vec::new(),
            starttls: 0,
            credentials: Vec::new(),
        };
        let out = d.drive();
        assert_eq!(out, format!("220 {host} ESMTP\r\n"));
        d
    }

    /// A session after `EHLO client.onion`.
    pub fn ehlo() -> Dialogue {
        let mut d = Dialogue::new();
        let out = d.send("EHLO client.example\r\n");
        assert!(out.ends_with("250 ENHANCEDSTATUSCODES\r\n"), "{out}");
        d
    }

    /// Steps until input is needed or the session closes, like the driver; returns the output
    /// written meanwhile.
    pub fn drive(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            match self.session.step() {
                Step::NeedInput => {
                    let out = self.session.take_output();
                    all.extend_from_slice(&out);
                    self.writes.push(out);
                    break;
                }
                Step::StartData(_) => {
                    let outcome = self.begin_outcome.clone().unwrap_or(Ok(()));
                    if outcome.is_ok() {
                        self.current = Some(Vec::new());
                    }
                    self.session.data_started(outcome);
                }
                Step::Write(text) => {
                    self.largest_write = self.largest_write.max(text.len());
                    let message = self.current.as_mut().expect("a write without a message");
                    message.extend_from_slice(&text);
                    let outcome = self.write_outcome.clone().unwrap_or(Ok(()));
                    self.session.written(outcome);
                }
                Step::DiscardData => {
                    self.current = None;
                    self.discarded += 1;
                }
                Step::Enqueue(tx) => {
                    let text = self.current.take().expect("an enqueue without a message");
                    self.messages.push(text);
                    self.enqueued.push(tx);
                    let outcome = self
                        .enqueue_outcome
                        .clone()
                        .unwrap_or_else(|| Ok(format!("Q{}", self.enqueued.len())));
                    self.session.enqueued(outcome);
                }
                Step::StartTls => {
                    // The driver writes the 220, then shakes hands.
                    let out = self.session.take_output();
                    all.extend_from_slice(&out);
                    self.writes.push(out);
                    self.starttls += 1;
                    self.session.tls_started();
                }
                Step::Authenticate(credentials) => {
                    let ok = credentials.user == "alice" && credentials.password == "secret";
                    self.credentials.push(credentials);
                    self.session.authenticated(if ok {
                        Ok("alice".into())
                    } else {
                        Err(Reply::new(
                            535,
                            [5, 7, 8],
                            "Authentication credentials invalid",
                        ))
                    });
                }
                Step::Close => {
                    let out = self.session.take_output();
                    all.extend_from_slice(&out);
                    self.writes.push(out);
                    self.closed = true;
                    break;
                }
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    /// Feeds raw bytes as the driver does (reads of at most 8 KiB, stepping after each),
    /// returns the output.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) -> String {
        assert!(!self.closed, "session already closed");
        let bytes = bytes.as_ref();
        if bytes.is_empty() {
            return self.drive();
        }
        let mut out = String::new();
        for piece in bytes.chunks(8 * 1024) {
            if self.closed {
                break;
            }
            self.session.receive(piece);
            out += &self.drive();
        }
        out
    }

    /// Sends `line` + CRLF and checks that the one reply starts with `expect`
    /// (e.g. `"250 2.1.5"`). Returns the reply.
    pub fn cmd(&mut self, line: &str, expect: &str) -> String {
        let out = self.send(format!("{line}\r\n"));
        assert!(
            out.starts_with(&format!("{expect} ")),
            "{line:?}: expected {expect}, got {out:?}"
        );
        assert_eq!(
            out.matches("\r\n").count(),
            1,
            "{line:?}: one reply expected: {out:?}"
        );
        out
    }

    /// MAIL FROM + RCPT TO alice, both accepted.
    pub fn envelope(&mut self) {
        self.cmd("MAIL FROM:<carol@example.org>", "250 2.1.0");
        self.cmd(&format!("RCPT TO:<alice@{}>", *DOMAIN), "250 2.1.5");
    }
}

/// The reply codes (`"250 2.1.0"`, or `"354"`) of each line of `out`.
pub fn codes(out: &str) -> Vec<String> {
    out.split_terminator("\r\n")
        .map(|line| {
            let mut parts = line.splitn(3, [' ', '-']);
            let code = parts.next().unwrap_or_default();
            match parts.next() {
                Some(e) if e.len() >= 5 && e.as_bytes()[1] == b'.' => format!("{code} {e}"),
                _ => code.to_owned(),
            }
        })
        .collect()
}
