//! Property-based robustness: any input, fed in any pieces, on the onion side or the
//! submission port, starting fresh or inside DATA, never panics, never makes the session
//! hold more than its bounds, and every line it writes is a well-formed reply.

use proptest::prelude::*;

use super::{Session, SessionConfig, SessionKind, Step};
use crate::test_support::{config, TestPolicy, DOMAIN};

/// Pieces that reach the interesting states quickly, mixed with random bytes.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let known: Vec<&'static [u8]> = vec![
        b"\r\n",
        b"\r",
        b"\n",
        b".",
        b"..",
        b"\0",
        b"EHLO x\r\n",
        b"MAIL FROM:<",
        b"RCPT TO:<",
        b">",
        b"DATA\r\n",
        b"@",
        b"\"",
        b"\xff\xfe",
        b"STARTTLS\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"*\r\n",
        b"AGFsaWNlAHNlY3JldA==\r\n",
        b"=\r\n",
        b"\r\n.\r\n",
    ];
    prop_oneof![
        proptest::sample::select(known).prop_map(<[u8]>::to_vec),
        proptest::collection::vec(any::<u8>(), 1..40),
    ]
}

/// Feeds `reads` to a fresh session, stepping like the driver (every step answered with
/// success), and checks the output.
fn run(
    kind: SessionKind,
    start_in_data: bool,
    reads: Vec<Vec<Vec<u8>>>,
) -> Result<(), TestCaseError> {
    let cfg = SessionConfig {
        max_command_line: 64,
        max_text_line: 64,
        kind,
        ..config()
    };
    let mut s = Session::new(cfg, TestPolicy);
    if start_in_data {
        s.receive(
            format!(
                "EHLO a\r\nMAIL FROM:<>\r\nRCPT TO:<alice@{}>\r\nDATA\r\n",
                *DOMAIN
            )
            .as_bytes(),
        );
    }
    for read in reads {
        s.receive(&read.concat());
        let mut closed = false;
        for _ in 0..1000 {
            match s.step() {
                Step::NeedInput => break,
                Step::StartData(_) => s.data_started(Ok(())),
                Step::Write(text) => {
                    prop_assert!(text.len() <= super::data::CHUNK + 65);
                    prop_assert!(!text.contains(&0), "a NUL never leaves the session");
                    s.written(Ok(()));
                }
                Step::DiscardData => {}
                Step::Enqueue(_) => s.enqueued(Ok("id".into())),
                Step::StartTls => {
                    prop_assert_eq!(kind, SessionKind::Submission);
                    s.tls_started();
                }
                Step::Authenticate(c) => {
                    prop_assert_eq!(kind, SessionKind::Submission);
                    s.authenticated(Ok(c.user));
                }
                Step::Close => {
                    closed = true;
                    break;
                }
            }
        }
        let out = s.take_output();
        let text = String::from_utf8(out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for line in text.split_terminator("\r\n") {
            let b = line.as_bytes();
            prop_assert!(
                b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit),
                "{line:?}"
            );
            prop_assert!(b[3] == b' ' || b[3] == b'-', "{line:?}");
            prop_assert!(!line.contains(['\r', '\n']));
        }
        prop_assert!(s.framer.capacity() <= 256 * 1024);
        if closed {
            break;
        }
    }
    Ok(())
}

fn reads() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    proptest::collection::vec(proptest::collection::vec(piece(), 0..12), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics_on_the_onion_side(start_in_data in any::<bool>(), reads in reads()) {
        run(SessionKind::OnionSide, start_in_data, reads)?;
    }

    #[test]
    fn garbage_never_panics_on_the_submission_port(start_in_data in any::<bool>(), reads in reads()) {
        run(SessionKind::Submission, start_in_data, reads)?;
    }
}
