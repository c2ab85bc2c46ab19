//! The protocol end to end without a network: the test vector of docs/sender-auth.md, the
//! attacks the signed message is built to stop, every malformed input, and the session
//! rules.

#![cfg(test)]

use data_encoding::{BASE64, HEXLOWER};
use smtorp_onionauth::*;

/// Test vector 1 (docs/sender-auth.md): the client key is RFC 8032's TEST 1 seed.
const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// The same key as C tor stores it: SHA-512(seed), scalar clamped.
const EXPANDED: &str = "307c83864f2833cb427a2ef1c00a013cfdff2768d980c0a3a520f006904de94f\
                        9b4f0afe280b746a778684e75442502057b7473a03f08f96f5a38e9287e01f8f";
const CLIENT: &str = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid.onion";
/// The server: RFC 8032 TEST 2's public key.
const SERVER: &str = "hvabpq7iioevvevxbktu2g36xsojqlgpf3cjndgazvk7ckxumygcmyyd.onion";
const NONCE: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const MESSAGE: &str = "534d545020584f4e494f4e4155544820763100636c69656e7400\
                       3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c\
                       d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\
                       000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const SIGNATURE: &str =
    "WPgcJV+DE7hbV/MvGhJYGwZhbXxEzMbaUAX+IoODlOCZK66ZvEH7wEETEORHrxwTGb27moY/eymk27PJNzRTDA==";

fn bytes<const N: usize>(hex: &str) -> [u8; N] {
    HEXLOWER.decode(hex.as_bytes()).unwrap().try_into().unwrap()
}

fn vector_client() -> Signer {
    Signer::from_expanded_secret(&bytes(EXPANDED)).unwrap()
}

fn server() -> Onion {
    SERVER.parse().unwrap()
}

fn nonce() -> Nonce {
    Nonce::from_base64(NONCE).unwrap()
}

#[test]
fn test_vector() {
    let client = vector_client();
    assert_eq!(client.onion().to_string(), CLIENT);
    assert_eq!(
        Signer::from_seed(&bytes(SEED)).unwrap().onion(),
        client.onion()
    );
    assert_eq!(nonce().as_bytes(), &std::array::from_fn(|i| i as u8));
    let message = signed_message(&server(), client.onion(), &nonce());
    assert_eq!(message.len(), 122);
    assert_eq!(HEXLOWER.encode(&message), MESSAGE);
    let signature = BASE64.encode(&client.sign(&server(), &nonce()));
    assert_eq!(signature, SIGNATURE);
    assert_eq!(signature.len(), SIGNATURE_B64_LEN);
    assert_eq!(
        client.command(&server(), &nonce()),
        format!("XONIONAUTH {CLIENT} {SIGNATURE}")
    );
    let ok = verify(&[server()], CLIENT, SIGNATURE, &nonce()).unwrap();
    assert_eq!(ok.to_string(), CLIENT);
    assert_eq!(ok.onion(), client.onion());
    // Upper case is the same address (domains are case-insensitive).
    let upper = verify(&[server()], &CLIENT.to_uppercase(), SIGNATURE, &nonce()).unwrap();
    assert_eq!(upper.to_string(), CLIENT);
}

#[test]
fn signature_over_another_servers_onion_is_refused() {
    // Relay: a malicious server M got a nonce from the victim V and showed it to the client
    // as its own. The client signs for M, the onion it connected to; V refuses that.
    let client = Signer::from_seed(&[1; 32]).unwrap();
    let victim = Signer::from_seed(&[2; 32]).unwrap();
    let malicious = Signer::from_seed(&[3; 32]).unwrap();
    let n = Nonce::generate();
    let relayed = BASE64.encode(&client.sign(malicious.onion(), &n));
    let claim = client.onion().to_string();
    assert_eq!(
        verify(&[*victim.onion()], &claim, &relayed, &n),
        Err(AuthError::BadSignature)
    );
    assert!(verify(&[*malicious.onion()], &claim, &relayed, &n).is_ok());
}

#[test]
fn any_of_our_own_onions_is_accepted() {
    let client = Signer::from_seed(&[1; 32]).unwrap();
    let arti = *Signer::from_seed(&[2; 32]).unwrap().onion();
    let imported = *Signer::from_seed(&[3; 32]).unwrap().onion();
    let n = Nonce::generate();
    let ours = [arti, imported];
    for s in [&arti, &imported] {
        let sig = BASE64.encode(&client.sign(s, &n));
        let ok = verify(&ours, &client.onion().to_string(), &sig, &n).unwrap();
        assert_eq!(ok.onion(), client.onion());
    }
}

#[test]
fn other_nonce_other_key_and_tampering_are_refused() {
    let client = vector_client();
    let claim = client.onion().to_string();
    let other_nonce = Nonce::from_bytes([0xaa; 32]);
    assert_eq!(
        verify(&[server()], &claim, SIGNATURE, &other_nonce),
        Err(AuthError::BadSignature)
    );
    // Wrong key: a valid signature by another onion, claiming the vector's client.
    let mallory = Signer::from_seed(&[9; 32]).unwrap();
    let forged = BASE64.encode(&mallory.sign(&server(), &nonce()));
    assert_eq!(
        verify(&[server()], &claim, &forged, &nonce()),
        Err(AuthError::BadSignature)
    );
    // ... and the same signature with Mallory's own claim is not valid either: C is signed.
    assert_eq!(
        verify(
            &[server()],
            &mallory.onion().to_string(),
            SIGNATURE,
            &nonce()
        ),
        Err(AuthError::BadSignature)
    );
    // Every single-bit flip of the signature fails.
    let sig = BASE64.decode(SIGNATURE.as_bytes()).unwrap();
    for bit in 0..512 {
        let mut s = sig.clone();
        s[bit / 8] ^= 1 << (bit % 8);
        assert!(verify(&[server()], &claim, &BASE64.encode(&s), &nonce()).is_err());
    }
    // s + L (the same signature, malleated): refused.
    let mut s = sig.clone();
    let l = HEXLOWER
        .decode(b"edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
        .unwrap();
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(s[32 + i]) + u16::from(l[i]) + carry;
        s[32 + i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    assert_eq!(
        verify(&[server()], &claim, &BASE64.encode(&s), &nonce()),
        Err(AuthError::BadSignature)
    );
    // No own onions: nothing verifies.
    assert_eq!(
        verify(&[], &claim, SIGNATURE, &nonce()),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn malformed_claims_and_signatures() {
    let s = [server()];
    let n = nonce();
    // One character of the key part changed: the checksum fails.
    let typo = format!("{}d{}", &CLIENT[..10], &CLIENT[11..]);
    assert_ne!(typo, CLIENT);
    assert_eq!(
        verify(&s, &typo, SIGNATURE, &n),
        Err(AuthError::BadChecksum)
    );
    assert_eq!(
        verify(&s, "example.org", SIGNATURE, &n),
        Err(AuthError::MalformedAddress)
    );
    assert_eq!(
        verify(&s, &CLIENT[..56], SIGNATURE, &n),
        Err(AuthError::MalformedAddress)
    );
    for bad in [
        "WPgcJV+DE7hbV/MvGhJYGwZhbXxEzMbaUAX+IoODlOCZK66ZvEH7wEETEORHrxwTGb27moY/eymk27PJNzRTDA", // no padding
        "WPgcJV-DE7hbV_MvGhJYGwZhbXxEzMbaUAX-IoODlOCZK66ZvEH7wEETEORHrxwTGb27moY_eymk27PJNzRTDA==", // URL-safe
        "WPgcJV+DE7hbV/MvGhJYGwZhbXxEzMbaUAX+IoODlOCZK66ZvEH7wEETEORHrxwTGb27moY/eymk27PJNzRTDB==", // non-canonical
        "not base64!",
    ] {
        assert_eq!(
            verify(&s, CLIENT, bad, &n),
            Err(AuthError::BadBase64),
            "{bad}"
        );
    }
    for bad in [&SIGNATURE[..84], "AAAA", &format!("{}AAAA", SIGNATURE)] {
        assert_eq!(
            verify(&s, CLIENT, bad, &n),
            Err(AuthError::BadSignatureLength),
            "{bad}"
        );
    }
    assert_eq!(
        verify(&s, CLIENT, &"A".repeat(100_000), &n),
        Err(AuthError::BadSignatureLength)
    );
    for bad in [
        "",
        CLIENT,
        " ",
        &format!("{CLIENT}  {SIGNATURE}"),
        &format!("{CLIENT} {SIGNATURE} x"),
        &format!("{CLIENT} {SIGNATURE} "),
    ] {
        assert_eq!(
            parse_command_argument(bad),
            Err(AuthError::Syntax),
            "{bad:?}"
        );
    }
    assert_eq!(
        parse_command_argument(&format!("{CLIENT} {SIGNATURE}")),
        Ok((CLIENT, SIGNATURE))
    );
}

#[test]
fn reflection_is_refused_before_the_signature_is_looked_at() {
    // The server's own key "signing" for itself; and any signature at all.
    let server_key = Signer::from_seed(&[5; 32]).unwrap();
    let other = Signer::from_seed(&[6; 32]).unwrap();
    let ours = [*other.onion(), *server_key.onion()];
    let n = Nonce::generate();
    let sig = BASE64.encode(&server_key.sign(server_key.onion(), &n));
    assert_eq!(
        verify(&ours, &server_key.onion().to_string(), &sig, &n),
        Err(AuthError::Reflection)
    );
    assert_eq!(
        verify(&ours, &other.onion().to_string().to_uppercase(), "junk", &n),
        Err(AuthError::Reflection)
    );
}

#[test]
fn ehlo_keyword_both_ways() {
    let n = nonce();
    let line = ehlo_keyword(&n);
    assert_eq!(line, format!("XONIONAUTH {NONCE}"));
    assert_eq!(parse_ehlo_keyword(&line), Ok(Some(n)));
    assert_eq!(
        parse_ehlo_keyword(&format!("xonionauth {NONCE}\r\n")),
        Ok(Some(n))
    );
    assert_eq!(parse_ehlo_keyword("PIPELINING"), Ok(None));
    assert_eq!(parse_ehlo_keyword("XONIONAUTHX abc"), Ok(None));
    for bad in [
        "XONIONAUTH",
        "XONIONAUTH ",
        "XONIONAUTH abc",
        &format!("XONIONAUTH {NONCE} x"),
    ] {
        assert_eq!(parse_ehlo_keyword(bad), Err(AuthError::BadNonce), "{bad}");
    }
    let reply = format!(
        "250-{SERVER} hello\r\n250-PIPELINING\r\n250-XONIONAUTH {NONCE}\r\n250 SIZE 1000\r\n"
    );
    assert_eq!(find_ehlo_nonce(&reply), Ok(Some(n)));
    let last = format!("250-{SERVER}\r\n250 XONIONAUTH {NONCE}\r\n");
    assert_eq!(find_ehlo_nonce(&last), Ok(Some(n)));
    // The greeting line is not an extension, even if it looks like one.
    let greeting = format!("250 XONIONAUTH {NONCE}\r\n");
    assert_eq!(find_ehlo_nonce(&greeting), Ok(None));
    assert_eq!(find_ehlo_nonce("250-x\r\n250 PIPELINING\r\n"), Ok(None));
}

/// A session in the order a real one runs, with the replies the engine would send.
#[test]
fn session_rules() {
    let ours = *Signer::from_seed(&[7; 32]).unwrap().onion();
    let client = Signer::from_seed(&[8; 32]).unwrap();
    let domain = client.onion().to_string();
    let mut auth = ServerAuth::new(vec![ours]);
    assert_eq!(auth.result(), &AuthResult::None);

    // Before EHLO (or after HELO): no nonce was shown.
    let early = client.command(&ours, auth.nonce());
    let arg = early.strip_prefix("XONIONAUTH ").unwrap();
    assert_eq!(auth.attempt(arg), Err(AuthError::NotAdvertised));

    let line = auth.ehlo_keyword();
    let nonce = parse_ehlo_keyword(&line).unwrap().unwrap();
    assert_eq!(&nonce, auth.nonce());
    assert_eq!(
        auth.ehlo_keyword(),
        line,
        "a second EHLO shows the same nonce"
    );
    let ok = auth.attempt(arg).unwrap();
    assert_eq!(ok.onion(), client.onion());
    assert_eq!(auth.attempt(arg), Err(AuthError::AlreadyAttempted));

    // Several transactions, RSET in between (RSET does not reach ServerAuth at all).
    for _ in 0..3 {
        let r = auth.on_mail(Some(&domain.to_uppercase()));
        assert_eq!(r.as_str(), "pass");
        assert_eq!(
            r.authentication_results(ours.to_string().as_str()),
            format!("{ours}; x-onion-auth=pass smtp.mailfrom={domain}")
        );
    }
    // The null reverse-path (a bounce from the client's server): pass for the client.
    assert_eq!(auth.on_mail(None), AuthResult::Pass(ok.clone()));
    // A sender in any other domain: never a pass.
    let other = Signer::from_seed(&[9; 32]).unwrap().onion().to_string();
    assert_eq!(auth.on_mail(Some(&other)), AuthResult::Fail);
    assert_eq!(auth.on_mail(Some("example.org")), AuthResult::Fail);
    assert_eq!(auth.result(), &AuthResult::Pass(ok));
    assert_eq!(auth.attempt(arg), Err(AuthError::AlreadyAttempted));
}

#[test]
fn session_after_mail_and_after_failure() {
    let ours = *Signer::from_seed(&[7; 32]).unwrap().onion();
    let client = Signer::from_seed(&[8; 32]).unwrap();
    let mut auth = ServerAuth::new(vec![ours]);
    auth.ehlo_keyword();
    assert_eq!(auth.on_mail(None), AuthResult::None);
    let command = client.command(&ours, auth.nonce());
    let arg = command.strip_prefix("XONIONAUTH ").unwrap();
    assert_eq!(auth.attempt(arg), Err(AuthError::AfterMail));
    assert_eq!(auth.result(), &AuthResult::None);
    assert_eq!(
        auth.on_mail(None).authentication_results("x.onion"),
        "x.onion; x-onion-auth=none"
    );

    // A failed attempt is final: the right signature afterwards is still refused.
    let mut auth = ServerAuth::new(vec![ours]);
    auth.ehlo_keyword();
    let stale = client.command(&ours, &Nonce::generate());
    let stale_arg = stale.strip_prefix("XONIONAUTH ").unwrap();
    assert_eq!(auth.attempt(stale_arg), Err(AuthError::BadSignature));
    assert!(AuthError::BadSignature.counts_as_attempt());
    let command = client.command(&ours, auth.nonce());
    let arg = command.strip_prefix("XONIONAUTH ").unwrap();
    assert_eq!(auth.attempt(arg), Err(AuthError::AlreadyAttempted));
    assert_eq!(auth.result(), &AuthResult::Fail);
    assert_eq!(
        auth.on_mail(Some(&client.onion().to_string())),
        AuthResult::Fail
    );

    // A malformed attempt counts too.
    let mut auth = ServerAuth::new(vec![ours]);
    auth.ehlo_keyword();
    assert_eq!(auth.attempt("garbage"), Err(AuthError::Syntax));
    assert_eq!(auth.attempt(arg), Err(AuthError::AlreadyAttempted));
    assert_eq!(auth.result().as_str(), "fail");
}

#[test]
fn nonces_differ_per_session() {
    let ours = *Signer::from_seed(&[7; 32]).unwrap().onion();
    let a = ServerAuth::new(vec![ours]);
    let b = ServerAuth::new(vec![ours]);
    assert_ne!(a.nonce(), b.nonce());
}

#[test]
fn arti_expanded_keypair_signs_the_same() {
    // arti stores the identity as tor-llcrypto's ExpandedKeypair; its secret bytes hold the
    // reduced scalar. The Signer made from them has arti's public key, and its signatures
    // match ExpandedKeypair::sign byte for byte.
    use tor_llcrypto::pk::ed25519::ExpandedKeypair;
    let arti = ExpandedKeypair::from_secret_key_bytes(bytes(EXPANDED)).unwrap();
    let exported = arti.to_secret_key_bytes();
    let signer = Signer::from_expanded_secret(&exported).unwrap();
    assert_eq!(signer.public_key(), arti.public().as_bytes());
    assert_eq!(signer.onion().to_string(), CLIENT);
    let message = signed_message(&server(), signer.onion(), &nonce());
    assert_eq!(
        arti.sign(&message).to_bytes(),
        signer.sign(&server(), &nonce())
    );
}

#[test]
fn random_arguments_never_panic() {
    // A small xorshift fuzzer over mutations of a valid argument.
    let valid = format!("{CLIENT} {SIGNATURE}");
    let s = [server()];
    let n = nonce();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet = b"abz27=+/ .\x00\xffA";
    for _ in 0..4_000 {
        let mut b = valid.clone().into_bytes();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % b.len();
            match next() % 3 {
                0 => b[i] = alphabet[(next() as usize) % alphabet.len()],
                1 => {
                    b.remove(i);
                }
                _ => b.insert(i, alphabet[(next() as usize) % alphabet.len()]),
            }
        }
        let text = String::from_utf8_lossy(&b);
        if let Ok((c, sig)) = parse_command_argument(&text) {
            let r = verify(&s, c, sig, &n);
            if text != valid.as_str() {
                // Only changes that keep the same key, signature and case-folded text can pass.
                if let Ok(ok) = r {
                    assert_eq!(ok.to_string(), CLIENT, "{text}");
                }
            }
        }
    }
}

/// docs/sender-auth.md quotes the vector and the reply texts verbatim.
#[test]
fn spec_quotes_the_vector_and_the_replies() {
    // Compiled in (tracked by cargo), not read from a path baked in at build time: a test
    // binary reused from a shared target folder could otherwise read another checkout's
    // copy, or none.
    let spec = include_str!("../../../docs/sender-auth.md");
    let flat: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
    let signature_hex = HEXLOWER.encode(&BASE64.decode(SIGNATURE.as_bytes()).unwrap());
    for value in [
        SEED,
        &EXPANDED[..64],
        &EXPANDED[64..],
        CLIENT,
        SERVER,
        NONCE,
        MESSAGE,
        &signature_hex,
        &HEXLOWER.encode(vector_client().public_key()),
        &HEXLOWER.encode(server().public_key()),
    ] {
        assert!(flat.contains(value), "the spec lacks {value}");
    }
    assert!(spec.contains(&format!("XONIONAUTH {CLIENT} {SIGNATURE}")));
    for (error, code) in [
        (AuthError::Syntax, "501 5.5.4"),
        (AuthError::MalformedAddress, "501 5.5.4"),
        (AuthError::BadVersion, "501 5.5.4"),
        (AuthError::BadChecksum, "501 5.5.4"),
        (AuthError::BadBase64, "501 5.5.4"),
        (AuthError::BadSignatureLength, "501 5.5.4"),
        (AuthError::InvalidKey, "535 5.7.8"),
        (AuthError::BadSignature, "535 5.7.8"),
        (AuthError::Reflection, "535 5.7.8"),
        (AuthError::AlreadyAttempted, "503 5.5.1"),
        (AuthError::AfterMail, "503 5.5.1"),
        (AuthError::NotAdvertised, "503 5.5.1"),
    ] {
        let row = format!("| `{error:?}` | `{code} {error}` |");
        assert!(spec.contains(&row), "the spec lacks the row ending {row}");
    }
}
