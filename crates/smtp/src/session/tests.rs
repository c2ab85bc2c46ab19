//! Dialogue tests of the session engine, in the expect style of Stalwart and OpenSMTPD.

use std::time::Duration;

use super::{Session, SessionConfig, Step};
use crate::reply::Reply;
use crate::test_support::{codes, config, Dialogue, TestPolicy, DOMAIN, OTHER};

fn alice() -> String {
    format!("alice@{}", *DOMAIN)
}

fn bob() -> String {
    format!("bob@{}", *DOMAIN)
}

// ---------------------------------------------------------------- greeting and EHLO

#[test]
fn greeting_names_only_our_domain() {
    let mut s = Session::new(config(), TestPolicy);
    let banner = String::from_utf8(s.take_output()).unwrap();
    assert_eq!(banner, format!("220 {} ESMTP\r\n", *DOMAIN));
    let lower = banner.to_lowercase();
    for word in [
        "smtorp",
        "rust",
        "stalwart",
        "postfix",
        "version",
        "localhost",
    ] {
        assert!(!lower.contains(word), "{word} in banner");
    }
}

#[test]
fn ehlo_capabilities_exact() {
    let mut d = Dialogue::new();
    let out = d.send("EHLO client.example\r\n");
    let expected = format!(
        "250-{}\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
         250 ENHANCEDSTATUSCODES\r\n",
        *DOMAIN
    );
    assert_eq!(out, expected);
    assert!(!out.contains("you had me"));
    assert!(!out.contains("STARTTLS") && !out.contains("AUTH") && !out.contains("CHUNKING"));
}

#[test]
fn helo() {
    let mut d = Dialogue::new();
    assert_eq!(
        d.send("HELO client.example\r\n"),
        format!("250 {}\r\n", *DOMAIN)
    );
    d.envelope();
}

#[test]
fn ehlo_needs_a_plausible_argument() {
    let mut d = Dialogue::new();
    d.cmd("EHLO", "501 5.5.4");
    d.cmd("HELO", "501 5.5.4");
    d.cmd("MAIL FROM:<carol@example.org>", "503 5.5.1");
}

// ---------------------------------------------------------------- transactions

#[test]
fn full_transaction_with_dot_unstuffing() {
    let mut d = Dialogue::ehlo();
    d.cmd(
        "MAIL FROM:<carol@example.org> BODY=8BITMIME SIZE=100",
        "250 2.1.0",
    );
    d.cmd(&format!("RCPT TO:<{}>", alice()), "250 2.1.5");
    d.cmd(
        &format!("RCPT TO:<bob@{}>", DOMAIN.to_uppercase()),
        "250 2.1.5",
    );
    d.cmd("DATA", "354");
    let out = d.send("Subject: hi\r\n\r\n..leading dot\r\n...two dots\r\n.\r\n");
    assert_eq!(out, "250 2.0.0 Ok: queued as Q1\r\n");
    assert_eq!(d.enqueued.len(), 1);
    let tx = &d.enqueued[0];
    assert_eq!(tx.helo, "client.example");
    assert_eq!(tx.sender, "carol@example.org");
    // The domain is lower-cased.
    assert_eq!(tx.recipients, vec![alice(), bob()]);
    assert_eq!(
        d.messages[0],
        b"Subject: hi\r\n\r\n.leading dot\r\n..two dots\r\n"
    );
    // A second transaction in the same session.
    d.envelope();
    d.cmd("DATA", "354");
    assert_eq!(d.send("x\r\n.\r\n"), "250 2.0.0 Ok: queued as Q2\r\n");
    d.cmd("QUIT", "221 2.0.0");
    assert!(d.closed);
}

#[test]
fn empty_message_and_eight_bit_bytes() {
    let mut d = Dialogue::ehlo();
    d.envelope();
    d.cmd("DATA", "354");
    assert_eq!(d.send(".\r\n"), "250 2.0.0 Ok: queued as Q1\r\n");
    assert_eq!(d.messages[0], b"");
    d.envelope();
    d.cmd("DATA", "354");
    d.send(b"\xff\xfe binary\r\n. not the end\r\n.\r\n");
    assert_eq!(d.messages[1], b"\xff\xfe binary\r\n not the end\r\n");
}

#[test]
fn nul_in_message_text_is_refused_never_passed_on() {
    // A downstream that strips NULs would see "\r\n.\r\n" here: an end of data we never saw.
    let mut d = Dialogue::ehlo();
    d.envelope();
    d.cmd("DATA", "354");
    let out = d.send(b"Subject: x\r\n\r\nhello\r\n\x00.\r\nMAIL FROM:<a@b.org>\r\n.\r\n");
    assert_eq!(codes(&out), ["554 5.6.0"]);
    assert!(d.enqueued.is_empty());
    assert_eq!(d.discarded, 1);
    assert!(!d.closed);
    // In a command line too.
    d.cmd("NO\0OP", "500 5.5.2");
    d.cmd("NOOP", "250 2.0.0");
}

#[test]
fn null_sender_and_postmaster() {
    let mut d = Dialogue::ehlo();
    d.cmd("MAIL FROM:<>", "250 2.1.0");
    d.cmd("RCPT TO:<postmaster>", "250 2.1.5");
    d.cmd("RCPT TO:<Postmaster>", "250 2.1.5"); // same recipient
    d.cmd("RCPT TO:<>", "501 5.1.3");
    d.cmd("DATA", "354");
    d.send(".\r\n");
    assert_eq!(d.enqueued[0].sender, "");
    assert_eq!(
        d.enqueued[0].recipients,
        vec![format!("postmaster@{}", *DOMAIN)]
    );
    // <postmaster> is no reverse-path.
    d.cmd("MAIL FROM:<postmaster>", "501 5.1.7");
}

#[test]
fn policy_replies_pass_through() {
    let mut d = Dialogue::ehlo();
    d.cmd("MAIL FROM:<spammer@example.org>", "550 5.7.1");
    d.cmd("MAIL FROM:<carol@example.org>", "250 2.1.0");
    d.cmd(&format!("RCPT TO:<mallory@{}>", *DOMAIN), "550 5.1.1");
    d.cmd(&format!("RCPT TO:<alice@{}>", *OTHER), "550 5.7.1");
    d.cmd("RCPT TO:<alice@example.org>", "550 5.7.1");
    d.cmd("DATA", "503 5.5.1");
}

#[test]
fn duplicate_recipient_stored_once() {
    let mut d = Dialogue::ehlo();
    d.envelope();
    d.cmd(&format!("RCPT TO:<{}>", alice()), "250 2.1.5");
    d.cmd(
        &format!("RCPT TO:<alice@{}>", DOMAIN.to_uppercase()),
        "250 2.1.5",
    );
    d.cmd("DATA", "354");
    d.send("x\r\n.\r\n");
    assert_eq!(d.enqueued[0].recipients, vec![alice()]);
}

#[test]
fn smtputf8() {
    let mut d = Dialogue::ehlo();
    d.cmd("MAIL FROM:<jörg@example.org>", "501 5.1.7");
    d.cmd("MAIL FROM:<jörg@example.org> SMTPUTF8", "250 2.1.0");
    d.cmd(&format!("RCPT TO:<zoë@{}>", *DOMAIN), "550 5.1.1"); // valid syntax, unknown user
    d.cmd("RSET", "250 2.0.0");
    d.cmd("MAIL FROM:<carol@example.org>", "250 2.1.0");
    d.cmd(&format!("RCPT TO:<zoë@{}>", *DOMAIN), "501 5.1.3");
    // Invalid UTF-8 in a command.
    let out = d.send(b"MAIL FROM:<\xff@example.org>\r\n");
    assert_eq!(codes(&out), ["500 5.5.2"]);
}

#[test]
fn unsupported_parameters() {
    let mut d = Dialogue::ehlo();
    d.cmd("MAIL FROM:<carol@example.org> RET=FULL", "555 5.5.4");
    d.cmd("MAIL FROM:<carol@example.org> BODY=BINARYMIME", "555 5.5.4");
    d.cmd("MAIL FROM:<carol@example.org> FOO=BAR", "555 5.5.4");
    d.cmd("MAIL FROM:<carol@example.org> BODY=9BIT", "501 5.5.4");
    d.cmd("MAIL FROM:<carol@example.org> BODY=7BIT", "250 2.1.0");
    d.cmd(&format!("RCPT TO:<{}> NOTIFY=NEVER", alice()), "555 5.5.4");
}

// ---------------------------------------------------------------- pipelining

#[test]
fn pipelined_envelope_in_one_write() {
    let mut d = Dialogue::ehlo();
    let batch = format!(
        "MAIL FROM:<carol@example.org>\r\nRCPT TO:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        alice(),
        bob()
    );
    d.session.receive(batch.as_bytes());
    // DATA is prepared (Step::StartData) before the four replies go out together.
    let out = d.drive();
    assert_eq!(codes(&out), ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"]);
    assert_eq!(
        d.writes.len(),
        3,
        "banner, EHLO, then one write: {:?}",
        d.writes
    );
    assert_eq!(d.send("hello\r\n.\r\n"), "250 2.0.0 Ok: queued as Q1\r\n");
}

#[test]
fn whole_transaction_and_quit_in_one_packet() {
    let mut d = Dialogue::new();
    let batch = format!(
        "EHLO c\r\nMAIL FROM:<carol@example.org>\r\nRCPT TO:<{}>\r\nDATA\r\nline 1\r\n..x\r\n.\r\n\
         MAIL FROM:<>\r\nRCPT TO:<{}>\r\nDATA\r\n.\r\nQUIT\r\nNOOP\r\n",
        alice(),
        bob()
    );
    let out = d.send(batch);
    let c = codes(&out);
    assert_eq!(c[..6], ["250", "250", "250", "250", "250", "250"]); // EHLO lines
    assert_eq!(
        c[6..],
        [
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    assert!(d.closed);
    // One write for the whole batch (the enqueues do not flush).
    assert_eq!(d.writes.len(), 2);
    assert_eq!(d.enqueued.len(), 2);
    assert_eq!(d.messages[0], b"line 1\r\n.x\r\n");
    assert_eq!(d.enqueued[1].recipients, vec![bob()]);
}

#[test]
fn step_needs_input_only_when_no_line_is_buffered() {
    let mut d = Dialogue::ehlo();
    d.session.receive(b"NOOP\r\nNOOP\r\nNO");
    assert!(matches!(d.session.step(), Step::NeedInput));
    assert_eq!(
        codes(&String::from_utf8(d.session.take_output()).unwrap()),
        ["250 2.0.0"; 2]
    );
    d.session.receive(b"OP\r\n");
    assert!(matches!(d.session.step(), Step::NeedInput));
    assert_eq!(d.session.take_output(), b"250 2.0.0 Ok\r\n");
}

#[test]
fn enqueue_reply_comes_before_later_pipelined_replies() {
    let mut d = Dialogue::ehlo();
    d.envelope();
    d.session.receive(b"DATA\r\nbody\r\n.\r\nNOOP\r\n");
    let Step::StartData(started) = d.session.step() else {
        panic!("expected StartData")
    };
    d.session.data_started(Ok(()));
    let Step::Write(text) = d.session.step() else {
        panic!("expected Write")
    };
    assert_eq!(text, b"body\r\n");
    d.session.written(Ok(()));
    let Step::Enqueue(tx) = d.session.step() else {
        panic!("expected Enqueue")
    };
    assert_eq!(
        tx, started,
        "the envelope handed out at DATA is the one enqueued"
    );
    d.session.enqueued(Ok("ABC".into()));
    assert!(matches!(d.session.step(), Step::NeedInput));
    let out = String::from_utf8(d.session.take_output()).unwrap();
    assert_eq!(
        out,
        "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as ABC\r\n250 2.0.0 Ok\r\n"
    );
}

// ---------------------------------------------------------------- sequence and small commands

#[test]
fn sequence_errors() {
    let mut d = Dialogue::new();
    d.cmd("MAIL FROM:<carol@example.org>", "503 5.5.1");
    d.cmd(&format!("RCPT TO:<{}>", alice()), "503 5.5.1");
    d.cmd("DATA", "503 5.5.1");
    d.send("EHLO c\r\n");
    d.cmd("DATA", "503 5.5.1");
    d.cmd(&format!("RCPT TO:<{}>", alice()), "503 5.5.1");
    d.cmd("MAIL FROM:<carol@example.org>", "250 2.1.0");
    d.cmd("DATA", "503 5.5.1");
    d.cmd("MAIL FROM:<carol@example.org>", "503 5.5.1");
}

#[test]
fn rset_and_second_ehlo_reset_the_transaction() {
    let mut d = Dialogue::ehlo();
    d.envelope();
    d.cmd("RSET", "250 2.0.0");
    d.cmd(&format!("RCPT TO:<{}>", alice()), "503 5.5.1");
    d.cmd("MAIL FROM:<carol@example.org>", "250 2.1.0"); // EHLO kept
    d.cmd(&format!("RCPT TO:<{}>", alice()), "250 2.1.5");
    d.send("EHLO again\r\n");
    d.cmd("DATA", "503 5.5.1");
    d.envelope();
    d.cmd("DATA", "354");
    d.send(".\r\n");
    assert_eq!(d.enqueued[0].helo, "again");
}

#[test]
fn small_commands() {
    let mut d = Dialogue::new();
    d.cmd("NOOP", "250 2.0.0");
    d.cmd("NOOP hello", "250 2.0.0");
    let out = d.cmd("VRFY alice", "252 2.5.0");
    assert!(!out.contains("alice"));
    d.cmd(&format!("VRFY {}", alice()), "252 2.5.0");
    d.cmd("HELP", "214 2.0.0");
    d.cmd("EXPN staff", "502 5.5.1");
    d.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "502 5.5.1");
    d.cmd("STARTTLS", "502 5.5.1");
    d.cmd("BDAT 10 LAST", "502 5.5.1");
    let mut d = Dialogue::new();
    d.cmd("FOO bar", "500 5.5.1");
    d.cmd("LHLO x", "500 5.5.1");
    d.cmd("", "500 5.5.1");
    d.cmd("MAILFROM:<a@b.org>", "500 5.5.1");
    d.cmd("QUIT", "221 2.0.0");
    assert!(d.closed);
}

#[test]
fn input_after_quit_is_ignored() {
    let mut d = Dialogue::ehlo();
    let out = d.send("QUIT\r\nNOOP\r\nNOOP\r\n");
    assert_eq!(out, "221 2.0.0 Bye\r\n");
    assert!(d.closed);
    d.session.receive(b"NOOP\r\n");
    assert!(matches!(d.session.step(), Step::Close));
    assert!(d.session.take_output().is_empty());
}

// ---------------------------------------------------------------- limits

#[test]
fn too_long_command_line() {
    let mut d = Dialogue::ehlo();
    // 512 octets with CRLF is allowed, 513 is not.
    let ok = format!("NOOP {}", "x".repeat(512 - 7));
    d.cmd(&ok, "250 2.0.0");
    let long = format!("NOOP {}", "x".repeat(512 - 6));
    d.cmd(&long, "500 5.5.2");
    d.cmd("NOOP", "250 2.0.0");
}

#[test]
fn huge_command_line_in_pieces_stays_bounded() {
    let mut d = Dialogue::ehlo();
    for _ in 0..100 {
        assert_eq!(d.send([b'A'; 1024]), "");
        assert!(d.session.framer.buffered() <= 512);
        assert!(d.session.framer.capacity() <= 64 * 1024);
    }
    assert_eq!(codes(&d.send("\r\n")), ["500 5.5.2"]);
    d.cmd("NOOP", "250 2.0.0");
}

#[test]
fn ten_megabytes_without_crlf_fed_without_stepping() {
    let mut d = Dialogue::ehlo();
    let chunk = vec![b'x'; 8192];
    for _ in 0..(10 * 1024 * 1024 / 8192) {
        d.session.receive(&chunk);
        assert!(d.session.framer.buffered() <= 512 + super::SOFT_INPUT_SLACK);
    }
    // One big receive too.
    d.session.receive(&vec![b'y'; 3 * 1024 * 1024]);
    assert!(d.session.framer.capacity() < 1024 * 1024);
    assert_eq!(codes(&d.send("\r\nNOOP\r\n")), ["500 5.5.2", "250 2.0.0"]);
}

#[test]
fn flood_of_pipelined_commands_without_draining_is_bounded() {
    let mut d = Dialogue::ehlo();
    let chunk = "NOOP\r\n".repeat(10_000);
    for _ in 0..200 {
        d.session.receive(chunk.as_bytes());
        assert!(d.session.output.len() <= super::MAX_OUTPUT + 1024);
        assert!(d.session.framer.buffered() <= 2 * (1001 + super::SOFT_INPUT_SLACK));
    }
    let out = d.drive();
    assert!(d.closed);
    assert!(
        out.ends_with("Error: too much pipelined input\r\n"),
        "{}",
        &out[out.len() - 100..]
    );
}

#[test]
fn size_parameter_too_big() {
    let mut d = Dialogue::with(SessionConfig {
        max_message_size: 1000,
        ..config()
    });
    assert!(d.send("EHLO c\r\n").contains("250-SIZE 1000\r\n"));
    d.cmd("MAIL FROM:<carol@example.org> SIZE=1001", "552 5.3.4");
    d.cmd("MAIL FROM:<carol@example.org> SIZE=1000", "250 2.1.0");
}

#[test]
fn message_too_big() {
    let mut d = Dialogue::with(SessionConfig {
        max_message_size: 100,
        ..config()
    });
    d.send("EHLO c\r\n");
    d.envelope();
    d.cmd("DATA", "354");
    for _ in 0..20 {
        assert_eq!(d.send("0123456789\r\n"), "");
    }
    assert_eq!(codes(&d.send(".\r\n")), ["552 5.3.4"]);
    assert!(d.enqueued.is_empty());
    assert!(!d.closed);
    // The transaction is gone; a new one fits exactly (100 bytes).
    d.cmd("DATA", "503 5.5.1");
    d.envelope();
    d.cmd("DATA", "354");
    let fits = "0123456789\r\n".repeat(8) + "ab\r\n";
    assert_eq!(fits.len(), 100);
    d.send(format!("{fits}x\r\n"));
    assert_eq!(codes(&d.send(".\r\n")), ["552 5.3.4"]);
    d.envelope();
    d.cmd("DATA", "354");
    d.send(&fits);
    assert_eq!(codes(&d.send(".\r\n")), ["250 2.0.0"]);
    assert_eq!(d.messages[0].len(), 100);
}

#[test]
fn long_data_line() {
    let mut d = Dialogue::ehlo();
    d.envelope();
    d.cmd("DATA", "354");
    // 1000 octets with CRLF is fine, also with a stuffed dot in front.
    let ok = "a".repeat(998) + "\r\n";
    let stuffed = ".".repeat(2) + &"b".repeat(997) + "\r\n";
    assert_eq!(
        d.send(format!("{ok}{stuffed}.\r\n")),
        "250 2.0.0 Ok: queued as Q1\r\n"
    );
    assert_eq!(d.messages[0].len(), 2000);
    d.envelope();
    d.cmd("DATA", "354");
    let long = "a".repeat(999) + "\r\n";
    assert_eq!(
        codes(&d.send(format!("x\r\n{long}y\r\n.\r\n"))),
        ["500 5.5.2"]
    );
    assert_eq!(d.enqueued.len(), 1);
    // A very long line in pieces: bounded, refused, session goes on.
    d.envelope();
    d.cmd("DATA", "354");
    for _ in 0..100 {
        d.send([b'z'; 1000]);
        assert!(d.session.framer.buffered() <= 1001);
    }
    assert_eq!(codes(&d.send("\r\n.\r\n")), ["500 5.5.2"]);
    d.cmd("NOOP", "250 2.0.0");
}

#[test]
fn too_many_recipients() {
    let mut d = Dialogue::with(SessionConfig {
        max_recipients: 2,
        ..config()
    });
    d.send("EHLO c\r\n");
    d.cmd("MAIL FROM:<carol@example.org>", "250 2.1.0");
    d.cmd(&format!("RCPT TO:<{}>", alice()), "250 2.1.5");
    d.cmd(&format!("RCPT TO:<{}>", bob()), "250 2.1.5");
    d.cmd(&format!("RCPT TO:<postmaster@{}>", *DOMAIN), "452 4.5.3");
    d.cmd(&format!("RCPT TO:<{}>", alice()), "250 2.1.5"); // duplicate: still fine
    d.cmd("DATA", "354");
    d.send(".\r\n");
    assert_eq!(d.enqueued[0].recipients, vec![alice(), bob()]);
}

#[test]
fn error_limit_closes_with_421() {
    let mut d = Dialogue::with(SessionConfig {
        max_errors: 3,
        ..config()
    });
    d.cmd("FOO", "500 5.5.1");
    d.cmd("DATA", "503 5.5.1");
    d.cmd("NOOP", "250 2.0.0");
    let out = d.send("BAR\r\nNOOP\r\n");
    assert_eq!(codes(&out), ["500 5.5.1", "421 4.7.0"]);
    assert!(d.closed);
}

#[test]
fn policy_rejections_count_as_errors_but_enqueue_failures_do_not() {
    let mut d = Dialogue::with(SessionConfig {
        max_errors: 2,
        ..config()
    });
    d.send("EHLO c\r\n");
    d.enqueue_outcome = Some(Err(Reply::new(
        451,
        [4, 3, 0],
        "Error: queue file write error",
    )));
    for _ in 0..3 {
        d.envelope();
        d.cmd("DATA", "354");
        assert_eq!(
            d.send("x\r\n.\r\n"),
            "451 4.3.0 Error: queue file write error\r\n"
        );
    }
    assert!(!d.closed);
    // The transaction was reset after the failure.
    d.cmd("DATA", "503 5.5.1");
    let out = d.send(format!(
        "MAIL FROM:<a@b.org>\r\nRCPT TO:<nobody@{}>\r\n",
        *DOMAIN
    ));
    assert_eq!(codes(&out), ["250 2.1.0", "550 5.1.1", "421 4.7.0"]);
    assert!(d.closed);
}

#[test]
fn timeouts() {
    let cfg = SessionConfig {
        command_timeout: Duration::from_secs(3),
        data_timeout: Duration::from_secs(7),
        ..config()
    };
    let mut d = Dialogue::with(cfg);
    assert_eq!(d.session.timeout(), Duration::from_secs(3));
    d.send("EHLO c\r\n");
    d.envelope();
    d.cmd("DATA", "354");
    assert_eq!(d.session.timeout(), Duration::from_secs(7));
    d.send("partial line");
    d.session.timed_out();
    let out = d.drive();
    assert_eq!(
        out,
        format!("421 4.4.2 {} Error: timeout exceeded\r\n", *DOMAIN)
    );
    assert!(d.closed);
    assert!(d.enqueued.is_empty());
}

#[test]
fn shutting_down() {
    let mut d = Dialogue::ehlo();
    d.session.shutting_down();
    assert_eq!(
        d.drive(),
        format!("421 4.3.2 {} Service shutting down\r\n", *DOMAIN)
    );
    assert!(d.closed);
}

#[test]
fn shutdown_during_enqueue_waits_for_the_outcome() {
    let mut d = Dialogue::ehlo();
    d.envelope();
    d.session.receive(b"DATA\r\nx\r\n.\r\n");
    assert!(matches!(d.session.step(), Step::StartData(_)));
    d.session.data_started(Ok(()));
    assert!(matches!(d.session.step(), Step::Write(_)));
    d.session.written(Ok(()));
    let Step::Enqueue(_) = d.session.step() else {
        panic!("expected Enqueue")
    };
    d.session.shutting_down();
    d.session.enqueued(Ok("Q9".into()));
    assert!(matches!(d.session.step(), Step::Close));
    let out = String::from_utf8(d.session.take_output()).unwrap();
    assert_eq!(codes(&out), ["354", "250 2.0.0", "421 4.3.2"]);
}

#[test]
fn enqueued_error_passes_the_reply_through() {
    let mut d = Dialogue::ehlo();
    d.enqueue_outcome = Some(Err(Reply::new(451, [4, 3, 0], "Try again later")));
    d.envelope();
    d.cmd("DATA", "354");
    assert_eq!(d.send("x\r\n.\r\n"), "451 4.3.0 Try again later\r\n");
    assert_eq!(d.enqueued.len(), 1);
    d.cmd(&format!("RCPT TO:<{}>", alice()), "503 5.5.1");
}

#[test]
fn session_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Session<TestPolicy>>();
    assert_send::<Step>();
}

// ---------------------------------------------------------------- bare CR / LF and smuggling

fn bare_reply() -> String {
    format!(
        "521 5.5.2 {} Bare CR or LF received; lines must end with CRLF\r\n",
        *DOMAIN
    )
}

#[test]
fn bare_lf_in_command() {
    let mut d = Dialogue::ehlo();
    assert_eq!(d.send("NOOP\n"), bare_reply());
    assert!(d.closed);
    let mut d = Dialogue::new();
    assert_eq!(d.send("EHLO x\nNOOP\r\n"), bare_reply());
    let mut d = Dialogue::new();
    assert_eq!(d.send("NO\rOP\r\n"), bare_reply());
    // Replies to earlier pipelined commands still go out first.
    let mut d = Dialogue::new();
    assert_eq!(codes(&d.send("NOOP\r\nNOOP\n")), ["250 2.0.0", "521 5.5.2"]);
}

fn in_data() -> Dialogue {
    let mut d = Dialogue::ehlo();
    d.envelope();
    d.cmd("DATA", "354");
    d
}

#[test]
fn bare_lf_in_data() {
    let mut d = in_data();
    assert_eq!(d.send("line one\nline two\r\n.\r\n"), bare_reply());
    assert!(d.closed && d.enqueued.is_empty());
}

#[test]
fn bare_cr_in_data() {
    let mut d = in_data();
    assert_eq!(d.send("line\rone\r\n.\r\n"), bare_reply());
    assert!(d.closed && d.enqueued.is_empty());
    let mut d = in_data();
    d.send("abc\r");
    assert_eq!(d.send("x\r\n.\r\n"), bare_reply());
    assert!(d.enqueued.is_empty());
}

#[test]
fn smuggling_attempts_are_refused() {
    let smuggled = format!(
        "MAIL FROM:<admin@bank.example>\r\nRCPT TO:<{}>\r\nDATA\r\nforged\r\n.\r\n",
        bob()
    );
    for end in [
        "\n.\n",
        "\r\n.\n",
        "\n.\r\n",
        "\r.\r",
        "\r\n.\r",
        "\r\n.\r\r\n",
    ] {
        let mut d = in_data();
        let attack = format!("Subject: hi\r\n\r\nhello{end}{smuggled}");
        let out = d.send(attack.as_bytes());
        assert_eq!(out, bare_reply(), "{end:?}");
        assert!(d.closed, "{end:?}");
        assert!(d.enqueued.is_empty(), "{end:?}");
        // The same attack split at every byte boundary.
        for cut in 0..attack.len() {
            let mut d = in_data();
            let (a, b) = attack.as_bytes().split_at(cut);
            let mut out = d.send(a);
            if !d.closed {
                out += &d.send(b);
            }
            assert_eq!(out, bare_reply(), "{end:?} cut at {cut}");
            assert!(d.enqueued.is_empty());
        }
    }
}

#[test]
fn crlf_split_across_reads_is_fine() {
    let mut d = Dialogue::new();
    assert_eq!(d.send("EHLO c\r"), "");
    assert!(d.send("\n").starts_with("250-"));
    d.cmd("MAIL FROM:<carol@example.org>", "250 2.1.0");
    d.send(format!("RCPT TO:<{}>\r", alice()));
    assert_eq!(codes(&d.send("\nDATA\r")), ["250 2.1.5"]);
    assert_eq!(codes(&d.send("\n")), ["354"]);
    assert_eq!(d.send("line\r"), "");
    assert_eq!(d.send("\n.\r"), "");
    assert_eq!(d.send("\n"), "250 2.0.0 Ok: queued as Q1\r\n");
    assert_eq!(d.messages[0], b"line\r\n");
    // Byte by byte.
    d.envelope();
    d.cmd("DATA", "354");
    let mut out = String::new();
    for b in b"..a\r\nb\r\n.\r\nNOOP\r\n" {
        out += &d.send([*b]);
    }
    assert_eq!(codes(&out), ["250 2.0.0", "250 2.0.0"]);
    assert_eq!(d.messages[1], b".a\r\nb\r\n");
}

// ---------------------------------------------------------------- addresses in the dialogue

#[test]
fn path_tricks_are_refused() {
    let mut d = Dialogue::ehlo();
    for bad in [
        "\"../etc\"",
        "a/b",
        "..",
        "a\\\\b",
        "\"a b\"",
        ".a",
        "a.",
        "a..b",
    ] {
        let out = d.cmd(&format!("MAIL FROM:<{bad}@example.org>"), "501 5.1.7");
        assert!(!out.contains("250"));
    }
    let mut d = Dialogue::ehlo();
    d.cmd("MAIL FROM:<carol@example.org>", "250 2.1.0");
    for bad in [
        "\"../etc\"",
        "a/b",
        "..",
        "\"a\\\\b\"",
        "\"a b\"",
        "\"..\"",
        "\".\"",
    ] {
        d.cmd(&format!("RCPT TO:<{bad}@{}>", *DOMAIN), "501 5.1.3");
    }
}

#[test]
fn malformed_onion_and_address_literal() {
    let mut d = Dialogue::ehlo();
    let mut corrupted = DOMAIN.clone();
    let c = if corrupted.starts_with('a') { "b" } else { "a" };
    corrupted.replace_range(0..1, c);
    let out = d.cmd(&format!("MAIL FROM:<carol@{corrupted}>"), "501 5.1.7");
    assert!(out.contains("not a valid v3 onion address"), "{out}");
    d.cmd("MAIL FROM:<carol@[127.0.0.1]>", "501 5.1.7");
    d.cmd("MAIL FROM:<carol@example.org>", "250 2.1.0");
    let out = d.cmd(&format!("RCPT TO:<alice@{corrupted}>"), "501 5.1.3");
    assert!(out.contains("not a valid v3 onion address"), "{out}");
    let out = d.cmd(&format!("RCPT TO:<alice@{}>", &DOMAIN[1..]), "501 5.1.3");
    assert!(out.contains("not a valid v3 onion address"), "{out}");
    d.cmd(&format!("RCPT TO:<alice@x.{}>", *DOMAIN), "501 5.1.3");
    d.cmd("RCPT TO:<alice@[127.0.0.1]>", "501 5.1.3");
    d.cmd("RCPT TO:<alice@[IPv6:::1]>", "501 5.1.3");
    d.cmd("RCPT TO:<alice>", "501 5.1.3");
    d.cmd("RCPT TO:alice@x.org", "501 5.5.4");
}

// ---------------------------------------------------------------- robustness

// ---------------------------------------------------------------- streaming DATA

#[test]
fn message_text_leaves_in_bounded_chunks() {
    let mut d = Dialogue::with(SessionConfig {
        max_message_size: 50 * 1024 * 1024,
        ..config()
    });
    d.send("EHLO c\r\n");
    d.envelope();
    d.cmd("DATA", "354");
    let line = "x".repeat(998) + "\r\n";
    let block = line.repeat(100); // 100 kB per read
    let mut sent = 0;
    while sent < 20 * 1024 * 1024 {
        assert_eq!(d.send(&block), "");
        sent += block.len();
        // The session never holds much: a chunk and the framer's read-ahead.
        assert!(d.session.framer.capacity() <= 256 * 1024);
    }
    assert_eq!(codes(&d.send(".\r\n")), ["250 2.0.0"]);
    assert_eq!(d.messages[0].len(), sent);
    assert!(
        d.largest_write <= 64 * 1024 + 1000,
        "chunk of {}",
        d.largest_write
    );
}

#[test]
fn a_full_disk_at_data_is_a_4xx_without_354() {
    let mut d = Dialogue::ehlo();
    d.begin_outcome = Some(Err(Reply::new(
        452,
        [4, 3, 1],
        "Insufficient system storage",
    )));
    d.envelope();
    d.cmd("DATA", "452 4.3.1");
    // The transaction is gone; nothing was started.
    d.cmd("DATA", "503 5.5.1");
    assert!(d.enqueued.is_empty() && d.current.is_none());
    d.begin_outcome = None;
    d.envelope();
    d.cmd("DATA", "354");
}

#[test]
fn a_failed_write_reads_the_rest_and_answers_with_its_reply() {
    let mut d = Dialogue::ehlo();
    d.envelope();
    d.cmd("DATA", "354");
    d.write_outcome = Some(Err(Reply::new(
        452,
        [4, 3, 1],
        "Insufficient system storage",
    )));
    let line = "y".repeat(998) + "\r\n";
    d.send(line.repeat(200)); // more than a chunk: a write happens and fails
                              // The client keeps sending; nothing more is written, the reply waits for the dot.
    assert_eq!(d.send(line.repeat(10)), "");
    assert_eq!(codes(&d.send(".\r\n")), ["452 4.3.1"]);
    assert_eq!(d.discarded, 1);
    assert!(d.enqueued.is_empty());
    // Our failure is not the client's: the session goes on.
    d.write_outcome = None;
    d.envelope();
    d.cmd("DATA", "354");
    assert_eq!(codes(&d.send("ok\r\n.\r\n")), ["250 2.0.0"]);
}

#[test]
fn quoted_local_parts_keep_their_quotes() {
    let mut d = Dialogue::ehlo();
    d.cmd("MAIL FROM:<\"x>Evil:y\"@example.org>", "250 2.1.0");
    d.cmd(&format!("RCPT TO:<{}>", alice()), "250 2.1.5");
    d.cmd("DATA", "354");
    d.send("x\r\n.\r\n");
    assert_eq!(d.enqueued[0].sender, "\"x>Evil:y\"@example.org");
    d.cmd("MAIL FROM:<\"<evil@x>\"@example.org>", "250 2.1.0");
    d.cmd(&format!("RCPT TO:<{}>", alice()), "250 2.1.5");
    d.cmd("DATA", "354");
    d.send("x\r\n.\r\n");
    assert_eq!(d.enqueued[1].sender, "\"<evil@x>\"@example.org");
}

#[test]
fn stress_shortens_the_timeouts() {
    let d = Dialogue::ehlo();
    let c = config();
    assert_eq!(d.session.timeout_under(false), c.command_timeout);
    assert_eq!(d.session.timeout_under(true), c.stress_command_timeout);
    let d = in_data();
    assert_eq!(d.session.timeout_under(false), c.data_timeout);
    assert_eq!(d.session.timeout_under(true), c.stress_data_timeout);
}
