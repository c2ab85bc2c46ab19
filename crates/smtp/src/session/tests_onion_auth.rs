//! XONIONAUTH in the dialogue (docs/sender-auth.md): the EHLO keyword, each reply of the
//! command, the session rules, the per-transaction result and `require`.

use smtorp_onionauth::{Nonce, Signer};

use super::{AuthResult, SenderAuthMode, SessionConfig, SessionKind};
use crate::test_support::{codes, config, Dialogue, DOMAIN};

fn server_signer() -> Signer {
    Signer::from_seed(&[1u8; 32]).unwrap()
}

fn client() -> Signer {
    Signer::from_seed(&[2u8; 32]).unwrap()
}

fn auth_config(mode: SenderAuthMode) -> SessionConfig {
    SessionConfig {
        sender_auth: mode,
        own_onions: vec![*server_signer().onion()],
        ..config()
    }
}

/// A session after EHLO; returns it and the nonce it offered.
fn offered(mode: SenderAuthMode) -> (Dialogue, Nonce) {
    let mut d = Dialogue::with(auth_config(mode));
    let out = d.send("EHLO peer.onion\r\n");
    let line = out
        .lines()
        .find(|l| l.starts_with("250-XONIONAUTH "))
        .unwrap_or_else(|| panic!("no keyword in {out}"));
    let nonce = Nonce::from_base64(line.trim_start_matches("250-XONIONAUTH ")).unwrap();
    (d, nonce)
}

fn signed_command(signer: &Signer, nonce: &Nonce) -> String {
    signer.command(server_signer().onion(), nonce)
}

#[test]
fn a_valid_signature_passes_and_holds_for_the_session() {
    let (mut d, nonce) = offered(SenderAuthMode::Verify);
    let c = client();
    d.cmd(&signed_command(&c, &nonce), "235 2.7.0");
    // Once per session.
    let out = d.cmd(&signed_command(&c, &nonce), "503 5.5.1");
    assert!(out.contains("Only one XONIONAUTH per session"), "{out}");
    // Holds across RSET and a second EHLO, with the same nonce.
    d.cmd("RSET", "250 2.0.0");
    let again = d.send("EHLO peer.onion\r\n");
    assert!(
        again.contains(&format!("250-XONIONAUTH {nonce}\r\n")),
        "{again}"
    );
    d.cmd(&format!("MAIL FROM:<alice@{}>", c.onion()), "250 2.1.0");
    d.cmd(&format!("RCPT TO:<alice@{}>", *DOMAIN), "250 2.1.5");
    d.cmd("DATA", "354");
    d.send("x\r\n.\r\n");
    assert_eq!(
        d.enqueued[0].onion_auth,
        AuthResult::Pass(client_onion_pass(&c, &nonce))
    );
    // Another sender domain in the same session: the transaction's result is fail.
    d.cmd("MAIL FROM:<someone@example.org>", "250 2.1.0");
    d.cmd(&format!("RCPT TO:<alice@{}>", *DOMAIN), "250 2.1.5");
    d.cmd("DATA", "354");
    d.send("x\r\n.\r\n");
    assert_eq!(d.enqueued[1].onion_auth, AuthResult::Fail);
    // The null sender (a bounce) keeps the pass.
    d.cmd("MAIL FROM:<>", "250 2.1.0");
    d.cmd(&format!("RCPT TO:<alice@{}>", *DOMAIN), "250 2.1.5");
    d.cmd("DATA", "354");
    d.send("x\r\n.\r\n");
    assert!(matches!(d.enqueued[2].onion_auth, AuthResult::Pass(_)));
}

/// The `ClientOnion` a pass carries (only `verify` makes one).
fn client_onion_pass(c: &Signer, nonce: &Nonce) -> smtorp_onionauth::ClientOnion {
    let sig = c.command(server_signer().onion(), nonce);
    let arg = sig.trim_start_matches("XONIONAUTH ");
    let (claimed, signature) = smtorp_onionauth::parse_command_argument(arg).unwrap();
    smtorp_onionauth::verify(&[*server_signer().onion()], claimed, signature, nonce).unwrap()
}

/// Makes an XONIONAUTH command line for a session's nonce.
type MakeCommand = Box<dyn Fn(&Nonce) -> String>;

#[test]
fn each_failure_has_its_own_reply() {
    let c = client();
    let other_server = Signer::from_seed(&[3u8; 32]).unwrap();
    let cases: Vec<(MakeCommand, &str)> = vec![
        // Signed for another server: the relay attack.
        (
            Box::new(move |n: &Nonce| c.command(other_server.onion(), n)),
            "535 5.7.8",
        ),
        // Another nonce: a replay.
        (
            Box::new(|_: &Nonce| {
                client().command(server_signer().onion(), &Nonce::from_bytes([9u8; 32]))
            }),
            "535 5.7.8",
        ),
        // Our own onion: reflection.
        (
            Box::new(|n: &Nonce| server_signer().command(server_signer().onion(), n)),
            "535 5.7.8",
        ),
        // Malformed.
        (Box::new(|_: &Nonce| "XONIONAUTH".into()), "501 5.5.4"),
        (
            Box::new(|_: &Nonce| "XONIONAUTH abc.onion AAAA".into()),
            "501 5.5.4",
        ),
        (
            Box::new(|_: &Nonce| format!("XONIONAUTH {} not-base64!", client().onion())),
            "501 5.5.4",
        ),
    ];
    for (make, expect) in cases {
        let (mut d, nonce) = offered(SenderAuthMode::Verify);
        d.cmd(&make(&nonce), expect);
        // Whatever the failure, it was the session's one attempt (a 503 now).
        d.cmd(&signed_command(&client(), &nonce), "503 5.5.1");
    }
}

#[test]
fn sequence_rules() {
    // After MAIL.
    let (mut d, nonce) = offered(SenderAuthMode::Verify);
    d.cmd("MAIL FROM:<a@example.org>", "250 2.1.0");
    let out = d.cmd(&signed_command(&client(), &nonce), "503 5.5.1");
    assert!(out.contains("before MAIL"), "{out}");
    // After HELO (no keyword offered).
    let mut d = Dialogue::with(auth_config(SenderAuthMode::Verify));
    let helo = d.send("HELO peer\r\n");
    assert!(!helo.contains("XONIONAUTH"));
    d.cmd(&signed_command(&client(), &Nonce::generate()), "503 5.5.1");
}

#[test]
fn off_and_submission_do_not_offer_it() {
    for cfg in [
        auth_config(SenderAuthMode::Off),
        SessionConfig {
            kind: SessionKind::Submission,
            ..auth_config(SenderAuthMode::Verify)
        },
    ] {
        let mut d = Dialogue::with(cfg);
        let out = d.send("EHLO peer\r\n");
        assert!(!out.contains("XONIONAUTH"), "{out}");
        d.cmd("XONIONAUTH a b", "502 5.5.1");
    }
}

#[test]
fn require_refuses_unauthenticated_and_mismatched_senders() {
    let (mut d, _) = offered(SenderAuthMode::Require);
    assert_eq!(
        codes(&d.send("MAIL FROM:<a@example.org>\r\n")),
        ["530 5.7.0"]
    );
    let (mut d, nonce) = offered(SenderAuthMode::Require);
    d.cmd(&signed_command(&client(), &nonce), "235 2.7.0");
    let out = d.cmd("MAIL FROM:<a@example.org>", "550 5.7.1");
    assert!(out.contains("not authenticated"), "{out}");
    d.cmd(&format!("MAIL FROM:<a@{}>", client().onion()), "250 2.1.0");
}
