//! Key generation for the private network's nodes, with the system's tools.
//!
//! - Relay identity: `tor --list-fingerprint --DataDirectory D --ORPort P --Nickname N
//!   --SocksPort 0` writes `D/fingerprint` (RSA) and `D/fingerprint-ed25519`.
//! - Authority keys: `tor-gencert --create-identity-key -m 12 -a 127.0.0.1:DIRPORT
//!   --passphrase-fd 0` (empty passphrase on stdin) run in `D/keys`; the v3 identity is the
//!   `fingerprint` line of `keys/authority_certificate`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::error::TornetError;

/// Second word of a `fingerprint` / `fingerprint-ed25519` file (`NICK VALUE`).
pub fn parse_fingerprint_file(text: &str) -> Option<String> {
    let mut words = text.split_ascii_whitespace();
    let _nick = words.next()?;
    let value = words.next()?;
    Some(value.to_owned())
}

/// The v3 identity (`fingerprint HEX` line) of an `authority_certificate`.
pub fn parse_cert_fingerprint(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .map(|v| v.trim().to_owned())
        .filter(|v| v.len() == 40 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks a finished command, turning a failure into [`TornetError::Command`].
fn check(command: String, out: Output) -> Result<(), TornetError> {
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    Err(TornetError::Command {
        command,
        status: out.status.to_string(),
        output: lines[lines.len().saturating_sub(15)..].join("\n"),
    })
}

/// Reads a small file written by tor.
fn read(path: &Path) -> Result<String, TornetError> {
    std::fs::read_to_string(path)
        .map_err(|e| TornetError::io(format!("reading {}", path.display()), e))
}

/// Creates `node_dir/keys/authority_*` with `tor-gencert`; returns the v3 identity.
pub(crate) fn generate_authority_keys(
    node_dir: &Path,
    dir_port: u16,
) -> Result<String, TornetError> {
    let keys = node_dir.join("keys");
    crate::create_private_dir(&keys)?;
    let address = format!("127.0.0.1:{dir_port}");
    let mut child = Command::new("tor-gencert")
        .args([
            "--create-identity-key",
            "-m",
            "12",
            "-a",
            &address,
            "--passphrase-fd",
            "0",
        ])
        .current_dir(&keys)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| TornetError::NotInstalled {
            program: "tor-gencert".into(),
            error,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // Empty passphrase.
        let _ = stdin.write_all(b"\n");
    }
    let out = child
        .wait_with_output()
        .map_err(|e| TornetError::io("waiting for tor-gencert", e))?;
    check(
        format!("tor-gencert -a {address} (in {})", keys.display()),
        out,
    )?;
    let path = keys.join("authority_certificate");
    parse_cert_fingerprint(&read(&path)?).ok_or(TornetError::Parse {
        what: "the v3 identity",
        path,
    })
}

/// Creates the relay identity keys of `node_dir`; returns (RSA fingerprint, ed25519 identity).
pub(crate) fn generate_relay_identity(
    node_dir: &Path,
    name: &str,
    or_port: u16,
    defaults: &Path,
) -> Result<(String, String), TornetError> {
    let out = Command::new("tor")
        .arg("--defaults-torrc")
        .arg(defaults)
        .arg("-f")
        .arg(defaults)
        .arg("--list-fingerprint")
        .arg("--DataDirectory")
        .arg(node_dir)
        .args([
            "--ORPort",
            &or_port.to_string(),
            "--Nickname",
            name,
            "--SocksPort",
            "0",
        ])
        .arg("--Log")
        .arg("err stderr")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|error| TornetError::NotInstalled {
            program: "tor".into(),
            error,
        })?;
    check(
        format!(
            "tor --list-fingerprint --DataDirectory {}",
            node_dir.display()
        ),
        out,
    )?;
    let path = node_dir.join("fingerprint");
    let rsa = parse_fingerprint_file(&read(&path)?)
        .filter(|v| v.len() == 40)
        .ok_or(TornetError::Parse {
            what: "the RSA fingerprint",
            path,
        })?;
    let path = node_dir.join("fingerprint-ed25519");
    let ed = parse_fingerprint_file(&read(&path)?).ok_or(TornetError::Parse {
        what: "the ed25519 identity",
        path,
    })?;
    Ok((rsa, ed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fingerprint_files() {
        assert_eq!(
            parse_fingerprint_file("auth0 2058A19ED5B03D5474868AEAC0E4F65D86BC77D4\n").as_deref(),
            Some("2058A19ED5B03D5474868AEAC0E4F65D86BC77D4")
        );
        assert_eq!(
            parse_fingerprint_file("auth0 SWeFB5E6zxZDS5v0HnTyl99q1hf44/PXo4tF1mwPEnQ\n")
                .as_deref(),
            Some("SWeFB5E6zxZDS5v0HnTyl99q1hf44/PXo4tF1mwPEnQ")
        );
        assert_eq!(parse_fingerprint_file("auth0\n"), None);
    }

    #[test]
    fn parses_the_v3_identity() {
        let cert = "dir-key-certificate-version 3\ndir-address 127.0.0.1:7100\n\
                    fingerprint F4616499020D9CFE4FAE9D4C337446B2229BBDCD\ndir-key-published x\n";
        assert_eq!(
            parse_cert_fingerprint(cert).as_deref(),
            Some("F4616499020D9CFE4FAE9D4C337446B2229BBDCD")
        );
        assert_eq!(parse_cert_fingerprint("fingerprint XYZ\n"), None);
    }
}
