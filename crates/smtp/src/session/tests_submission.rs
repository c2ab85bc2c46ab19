//! Dialogue tests of the submission rules: STARTTLS, AUTH PLAIN/LOGIN, MAIL only once
//! authenticated, and the STARTTLS command-injection defence.

use std::time::Duration;

use super::{Credentials, SessionConfig, SessionKind, Step};
use crate::test_support::{codes, config, Dialogue, DOMAIN};

fn submission_config() -> SessionConfig {
    SessionConfig {
        kind: SessionKind::Submission,
        ..config()
    }
}

fn b64(text: &str) -> String {
    data_encoding::BASE64.encode(text.as_bytes())
}

/// A submission session after EHLO (plaintext).
fn plain() -> Dialogue {
    let mut d = Dialogue::with(submission_config());
    let out = d.send("EHLO client.example\r\n");
    assert!(out.ends_with("250 ENHANCEDSTATUSCODES\r\n"), "{out}");
    d
}

/// A submission session after EHLO, STARTTLS and EHLO again.
fn tls() -> Dialogue {
    let mut d = plain();
    d.cmd("STARTTLS", "220 2.0.0");
    assert_eq!(d.starttls, 1);
    assert!(d.session.is_tls());
    let out = d.send("EHLO client.example\r\n");
    assert!(out.contains("250-AUTH PLAIN LOGIN\r\n"), "{out}");
    d
}

/// A submission session authenticated as alice.
fn authed() -> Dialogue {
    let mut d = tls();
    d.cmd(
        &format!("AUTH PLAIN {}", b64("\0alice\0secret")),
        "235 2.7.0",
    );
    assert_eq!(d.session.auth_user(), Some("alice"));
    d
}

fn ehlo_lines(out: &str) -> Vec<&str> {
    out.split_terminator("\r\n").map(|l| &l[4..]).collect()
}

#[test]
fn ehlo_lists_in_both_modes() {
    let size = format!("SIZE {}", SessionConfig::default().max_message_size);
    // Onion side: exactly as before, no STARTTLS, no AUTH.
    let mut d = Dialogue::new();
    let out = d.send("EHLO c\r\n");
    assert_eq!(
        ehlo_lines(&out),
        [
            DOMAIN.as_str(),
            "PIPELINING",
            &size,
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES"
        ]
    );
    // Submission before TLS: STARTTLS, no AUTH.
    let mut d = Dialogue::with(submission_config());
    let out = d.send("EHLO c\r\n");
    assert_eq!(
        ehlo_lines(&out),
        [
            DOMAIN.as_str(),
            "PIPELINING",
            &size,
            "8BITMIME",
            "SMTPUTF8",
            "STARTTLS",
            "ENHANCEDSTATUSCODES"
        ]
    );
    // After TLS: AUTH, and no STARTTLS again.
    d.cmd("STARTTLS", "220 2.0.0");
    let out = d.send("EHLO c\r\n");
    assert_eq!(
        ehlo_lines(&out),
        [
            DOMAIN.as_str(),
            "PIPELINING",
            &size,
            "8BITMIME",
            "SMTPUTF8",
            "AUTH PLAIN LOGIN",
            "ENHANCEDSTATUSCODES"
        ]
    );
}

#[test]
fn onion_side_still_refuses_starttls_and_auth() {
    let mut d = Dialogue::ehlo();
    d.cmd("STARTTLS", "502 5.5.1");
    d.cmd(
        &format!("AUTH PLAIN {}", b64("\0alice\0secret")),
        "502 5.5.1",
    );
    d.cmd("AUTH LOGIN", "502 5.5.1");
    assert_eq!(d.starttls, 0);
    assert!(d.credentials.is_empty());
    // MAIL needs no AUTH there.
    d.envelope();
}

#[test]
fn mail_before_auth_is_refused() {
    let mut d = plain();
    d.cmd("MAIL FROM:<alice@example.org>", "530 5.7.0");
    let mut d = tls();
    let out = d.cmd(&format!("MAIL FROM:<alice@{}>", *DOMAIN), "530 5.7.0");
    assert!(out.contains("Authentication required"), "{out}");
    d.cmd(&format!("RCPT TO:<bob@{}>", *DOMAIN), "503 5.5.1");
    d.cmd("DATA", "503 5.5.1");
}

#[test]
fn auth_before_starttls_is_refused() {
    let mut d = plain();
    let out = d.cmd(
        &format!("AUTH PLAIN {}", b64("\0alice\0secret")),
        "530 5.7.0",
    );
    assert!(out.contains("Must issue a STARTTLS command first"), "{out}");
    d.cmd("AUTH LOGIN", "530 5.7.0");
    assert!(d.credentials.is_empty());
    // STARTTLS needs EHLO first.
    let mut d = Dialogue::with(submission_config());
    d.cmd("STARTTLS", "503 5.5.1");
}

#[test]
fn starttls_hands_out_a_step_and_resets_the_session() {
    let mut d = plain();
    d.session.receive(b"STARTTLS\r\n");
    assert!(matches!(d.session.step(), Step::StartTls));
    assert_eq!(
        String::from_utf8(d.session.take_output()).unwrap(),
        "220 2.0.0 Ready to start TLS\r\n"
    );
    // Until the handshake is done, nothing is processed.
    assert!(matches!(d.session.step(), Step::NeedInput));
    d.session.tls_started();
    assert!(d.session.is_tls());
    // The client must greet again (RFC 3207).
    d.cmd("AUTH LOGIN", "503 5.5.1");
    d.cmd("MAIL FROM:<alice@example.org>", "503 5.5.1");
    d.send("EHLO again.example\r\n");
    // Only once.
    d.cmd("STARTTLS", "503 5.5.1");
}

#[test]
fn plaintext_pipelined_after_starttls_is_discarded() {
    // The CVE-2011-0411 pattern: commands after STARTTLS in the same packet.
    let mut d = plain();
    let out = d.send(format!(
        "STARTTLS\r\nAUTH PLAIN {}\r\nMAIL FROM:<alice@{d}>\r\nRCPT TO:<bob@{d}>\r\n",
        b64("\0alice\0secret"),
        d = *DOMAIN
    ));
    assert_eq!(out, "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(d.starttls, 1);
    assert!(d.credentials.is_empty());
    assert_eq!(d.session.auth_user(), None);
    // Input that arrives between the 220 and the end of the handshake is dropped too.
    let mut d = plain();
    d.session.receive(b"STARTTLS\r\n");
    assert!(matches!(d.session.step(), Step::StartTls));
    d.session.receive(b"EHLO evil\r\nAUTH LOGIN\r\n");
    assert!(matches!(d.session.step(), Step::NeedInput));
    d.session.tls_started();
    d.session.take_output();
    assert!(matches!(d.session.step(), Step::NeedInput));
    assert!(d.session.take_output().is_empty());
    d.cmd("MAIL FROM:<alice@example.org>", "503 5.5.1");
}

#[test]
fn auth_plain_with_initial_response_and_with_a_challenge() {
    let mut d = authed();
    assert_eq!(
        d.credentials,
        vec![Credentials {
            user: "alice".into(),
            password: "secret".into()
        }]
    );
    d.cmd("AUTH PLAIN", "503 5.5.1"); // already authenticated

    let mut d = tls();
    let out = d.send("AUTH PLAIN\r\n");
    assert_eq!(out, "334 \r\n");
    d.cmd(&b64("alice\0alice\0secret"), "235 2.7.0");
    assert_eq!(d.credentials[0].user, "alice");

    // An empty initial response (`=`) is malformed for PLAIN.
    let mut d = tls();
    d.cmd("AUTH PLAIN =", "501 5.5.2");
}

#[test]
fn auth_login_both_forms() {
    let mut d = tls();
    assert_eq!(d.send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        d.send(format!("{}\r\n", b64("alice"))),
        "334 UGFzc3dvcmQ6\r\n"
    );
    d.cmd(&b64("secret"), "235 2.7.0");
    assert_eq!(d.session.auth_user(), Some("alice"));

    let mut d = tls();
    let out = d.send(format!("AUTH LOGIN {}\r\n", b64("alice")));
    assert_eq!(out, "334 UGFzc3dvcmQ6\r\n");
    d.cmd(&b64("wrong"), "535 5.7.8");
    assert_eq!(
        d.credentials,
        vec![Credentials {
            user: "alice".into(),
            password: "wrong".into()
        }]
    );
    assert_eq!(d.session.auth_user(), None);
}

#[test]
fn star_cancels_the_exchange() {
    let mut d = tls();
    d.send("AUTH LOGIN\r\n");
    d.cmd("*", "501 5.7.0");
    d.send("AUTH PLAIN\r\n");
    d.cmd("*", "501 5.7.0");
    d.send(format!("AUTH LOGIN {}\r\n", b64("alice")));
    d.cmd("*", "501 5.7.0");
    assert!(d.credentials.is_empty());
    // The session goes on: commands are commands again.
    d.cmd("NOOP", "250 2.0.0");
    d.cmd(
        &format!("AUTH PLAIN {}", b64("\0alice\0secret")),
        "235 2.7.0",
    );
}

#[test]
fn bad_base64_and_malformed_plain() {
    let mut d = tls();
    d.cmd("AUTH PLAIN !!!notbase64", "501 5.5.2");
    d.send("AUTH LOGIN\r\n");
    d.cmd("abc", "501 5.5.2"); // bad padding
    d.cmd(&format!("AUTH PLAIN {}", b64("alice\0secret")), "501 5.5.2"); // two parts
    d.cmd(&format!("AUTH PLAIN {}", b64("\0\0secret")), "501 5.5.2"); // no user
    d.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0")), "501 5.5.2"); // no password
    d.cmd(&format!("AUTH PLAIN {}", b64("\0a\0b\0c")), "501 5.5.2"); // four parts
    d.cmd("AUTH CRAM-MD5", "504 5.5.4");
    assert!(d.credentials.is_empty());
    // Acting as someone else (authzid) is refused.
    d.cmd(
        &format!("AUTH PLAIN {}", b64("bob\0alice\0secret")),
        "535 5.7.8",
    );
    assert!(d.credentials.is_empty());
}

#[test]
fn repeated_auth_failures_close_the_session() {
    let mut d = tls();
    assert_eq!(d.session.auth_failure_delay(), Duration::from_secs(1));
    d.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0x")), "535 5.7.8");
    assert_eq!(d.session.auth_failure_delay(), Duration::from_secs(2));
    d.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0y")), "535 5.7.8");
    let out = d.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0secret")));
    // Below the limit, the right password still works.
    assert!(out.starts_with("235 2.7.0"), "{out}");

    let mut d = tls();
    for pw in ["a", "b"] {
        d.cmd(
            &format!("AUTH PLAIN {}", b64(&format!("\0alice\0{pw}"))),
            "535 5.7.8",
        );
    }
    let out = d.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0c")));
    assert_eq!(codes(&out), ["535 5.7.8", "421 4.7.0"]);
    assert!(d.closed);
}

#[test]
fn auth_lines_count_towards_max_errors() {
    let mut d = Dialogue::with(SessionConfig {
        max_errors: 3,
        max_auth_failures: 100,
        ..submission_config()
    });
    d.send("EHLO c\r\n");
    d.cmd("STARTTLS", "220 2.0.0");
    d.send("EHLO c\r\n");
    d.cmd("AUTH PLAIN %%%", "501 5.5.2");
    d.send("AUTH LOGIN\r\n");
    d.cmd("*", "501 5.7.0");
    let out = d.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0bad")));
    assert_eq!(codes(&out), ["535 5.7.8", "421 4.7.0"]);
    assert!(d.closed);
}

#[test]
fn authenticated_user_sends_as_themselves_only() {
    let mut d = authed();
    d.cmd(&format!("MAIL FROM:<bob@{}>", *DOMAIN), "553 5.7.1");
    // AUTH= is accepted where AUTH is offered.
    d.cmd(
        &format!("MAIL FROM:<alice@{}> AUTH=<>", *DOMAIN),
        "250 2.1.0",
    );
    d.cmd(&format!("RCPT TO:<bob@{}>", *DOMAIN), "250 2.1.5");
    d.cmd("DATA", "354");
    d.cmd("Subject: x\r\n\r\nhi\r\n.", "250 2.0.0");
    assert_eq!(d.enqueued.len(), 1);
    assert_eq!(d.enqueued[0].auth_user.as_deref(), Some("alice"));
    // EHLO keeps the authentication (RFC 4954 4).
    d.send("EHLO c\r\n");
    d.cmd(&format!("MAIL FROM:<alice@{}>", *DOMAIN), "250 2.1.0");
}

#[test]
fn the_password_never_shows_in_debug_output() {
    let mut d = tls();
    d.session
        .receive(format!("AUTH PLAIN {}\r\n", b64("\0alice\0hunter2")).as_bytes());
    let step = d.session.step();
    let text = format!("{step:?}");
    assert!(
        text.contains("alice") && !text.contains("hunter2"),
        "{text}"
    );
}

#[test]
fn shutdown_waits_for_the_auth_outcome() {
    let mut d = tls();
    d.session
        .receive(format!("AUTH PLAIN {}\r\n", b64("\0alice\0secret")).as_bytes());
    assert!(matches!(d.session.step(), Step::Authenticate(_)));
    d.session.shutting_down();
    d.session.authenticated(Ok("alice".into()));
    assert!(matches!(d.session.step(), Step::Close));
    let out = String::from_utf8(d.session.take_output()).unwrap();
    assert_eq!(codes(&out), ["235 2.7.0", "421 4.3.2"]);
}

#[test]
fn malformed_onion_recipients_name_the_onion_rule() {
    let mut d = authed();
    d.cmd(&format!("MAIL FROM:<alice@{}>", *DOMAIN), "250 2.1.0");
    let mut bad = DOMAIN.clone();
    bad.replace_range(3..4, if &bad[3..4] == "a" { "b" } else { "a" });
    let out = d.cmd(&format!("RCPT TO:<x@{bad}>"), "553 5.1.3");
    assert!(
        out.contains("smtorp delivers only to onion addresses"),
        "{out}"
    );
    let out = d.cmd("RCPT TO:<x@bad_domain.example>", "553 5.1.3");
    assert!(out.contains("only to onion addresses"), "{out}");
}
