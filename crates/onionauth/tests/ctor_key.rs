//! A key made by a real C tor: start Debian's `tor` offline with a `HiddenServiceDir`, let it
//! write `hs_ed25519_secret_key` and `hostname`, stop it, then sign with the key and verify
//! against the address C tor printed. Fails (never skips) without `tor`.

#![cfg(test)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use data_encoding::BASE64;
use smtorp_onionauth::{verify, Nonce, Onion, ServerAuth, Signer};

/// Runs `tor` until `<root>/hs/hostname` exists; returns the HiddenServiceDir.
fn ctor_hidden_service_dir(root: &Path) -> std::path::PathBuf {
    let hs = root.join("hs");
    std::fs::create_dir(&hs).unwrap();
    std::fs::set_permissions(&hs, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let log = root.join("tor.log");
    let mut child = Command::new("tor")
        .args([
            "--DisableNetwork",
            "1",
            "--SocksPort",
            "0",
            "--DataDirectory",
        ])
        .arg(root.join("tordata"))
        .arg("--HiddenServiceDir")
        .arg(&hs)
        .args(["--HiddenServicePort", "25 127.0.0.1:9", "--Log"])
        .arg(format!("notice file {}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run `tor`: Debian's tor must be installed (scripts/setup-debian)");
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = loop {
        if hs.join("hostname").exists() && hs.join("hs_ed25519_secret_key").exists() {
            break Ok(());
        }
        if let Some(status) = child.try_wait().unwrap() {
            break Err(format!("tor exited with {status}"));
        }
        if Instant::now() > deadline {
            break Err("tor wrote no hostname within 30 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    child.wait().unwrap();
    if let Err(e) = result {
        panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    hs
}

#[test]
fn ctor_key_signs_for_the_address_in_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let hs = ctor_hidden_service_dir(dir.path());
    let hostname = std::fs::read_to_string(hs.join("hostname")).unwrap();
    let hostname = hostname.trim();
    let key = std::fs::read(hs.join("hs_ed25519_secret_key")).unwrap();
    let public = std::fs::read(hs.join("hs_ed25519_public_key")).unwrap();

    let signer = Signer::from_ctor_secret_key_file(&key).unwrap();
    assert_eq!(signer.onion().to_string(), hostname);
    // C tor's public key file: a 32-byte header, then the key.
    assert_eq!(&public[32..], signer.public_key());
    assert!(!format!("{signer:?}").contains(&BASE64.encode(&key[32..64])));

    // The receiving server knows only the address C tor printed.
    let claimed: Onion = hostname.parse().unwrap();
    let server = *Signer::from_seed(&[42; 32]).unwrap().onion();
    let nonce = Nonce::generate();
    let signature = BASE64.encode(&signer.sign(&server, &nonce));
    let ok = verify(std::slice::from_ref(&server), hostname, &signature, &nonce).unwrap();
    assert_eq!(ok.onion(), &claimed);

    // And the same through a server session.
    let mut session = ServerAuth::new(vec![server]);
    session.ehlo_keyword();
    let command = signer.command(&server, session.nonce());
    let argument = command.strip_prefix("XONIONAUTH ").unwrap();
    assert_eq!(session.attempt(argument).unwrap().to_string(), hostname);
    assert_eq!(session.on_mail(Some(hostname)).as_str(), "pass");
}
