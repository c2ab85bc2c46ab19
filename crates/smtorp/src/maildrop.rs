//! The maildrop folder: how `smtorp sendmail` hands messages to the daemon without a socket.
//!
//! `sendmail` writes each message as one file under a temporary name (leading dot), fsyncs
//! it, renames it to its final name and fsyncs the folder: a file with a final name is
//! complete. The daemon picks files up at start and then every second, enqueues each through
//! the intake and removes the file only after the queue commit.
//!
//! File format: the line `SMTORP-MAILDROP 1`, one line of JSON (`{"sender": ..,
//! "recipients": [..]}`), then the message with CRLF line endings.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use smtorp_queue::Origin;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::intake::{Arrival, Intake, IntakeError};

const MAGIC: &[u8] = b"SMTORP-MAILDROP 1\n";

/// The envelope line of a maildrop file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEnvelope {
    /// The envelope sender, empty for `<>`.
    pub sender: String,
    /// The envelope recipients.
    pub recipients: Vec<String>,
}

/// Creates the maildrop folder: writable by every local user (like /tmp, sticky), not
/// listable by them. Files are mode 0644 so that the daemon can read what another user
/// wrote; their names carry 64 random bits and the folder cannot be listed, so other users
/// cannot find them (docs/operations.md).
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o1733))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes one message durably into the maildrop and returns its final path.
pub fn write(dir: &Path, envelope: &DropEnvelope, message: &[u8]) -> std::io::Result<PathBuf> {
    let mut random = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut random);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.{:09}.{}.{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id(),
        random.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let tmp = dir.join(format!(".{name}"));
    let done = dir.join(&name);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        file.write_all(MAGIC)?;
        serde_json::to_writer(&mut file, envelope)?;
        file.write_all(b"\n")?;
        file.write_all(message)?;
        file.sync_all()?;
        fs::rename(&tmp, &done)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| done)
}

/// Reads a maildrop file.
pub fn read(path: &Path) -> std::io::Result<(DropEnvelope, Vec<u8>)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(|| bad("not a maildrop file"))?;
    let line_end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| bad("no envelope line"))?;
    let envelope: DropEnvelope =
        serde_json::from_slice(&rest[..line_end]).map_err(|e| bad(&format!("envelope: {e}")))?;
    Ok((envelope, rest[line_end + 1..].to_vec()))
}

/// The complete files waiting in the maildrop, oldest name first.
fn waiting(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    names.sort();
    Ok(names)
}

/// Moves a file that can never be enqueued aside (kept for the administrator, not lost).
fn quarantine(dir: &Path, path: &Path) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bad = dir.join(".rejected");
    let _ = fs::create_dir_all(&bad);
    if let Err(e) = fs::rename(path, bad.join(&name)) {
        warn!(file = %path.display(), error = %e, "cannot move a rejected maildrop file aside");
    }
}

/// Enqueues every waiting file once. Returns how many were enqueued.
pub async fn pickup_once(dir: &Path, intake: &Intake) -> usize {
    let files = match waiting(dir) {
        Ok(f) => f,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot read the maildrop");
            return 0;
        }
    };
    let mut count = 0;
    for path in files {
        let (envelope, message) = match read(&path) {
            Ok(x) => x,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "unreadable maildrop file moved to .rejected");
                quarantine(dir, &path);
                continue;
            }
        };
        let arrival = Arrival {
            sender: &envelope.sender,
            recipients: &envelope.recipients,
            helo: None,
            origin: Origin::Maildrop,
            data: &message,
        };
        match intake.enqueue(arrival).await {
            Ok(id) => {
                count += 1;
                if let Err(e) = fs::remove_file(&path).and_then(|()| fsync_dir(dir)) {
                    warn!(file = %path.display(), queue_id = %id, error = %e, "cannot remove picked-up maildrop file");
                }
            }
            Err(IntakeError::Rejected(why)) => {
                warn!(file = %path.display(), reason = %why, "maildrop file rejected, moved to .rejected");
                quarantine(dir, &path);
            }
            Err(IntakeError::Store(e)) => {
                warn!(error = %e, "queue unavailable; maildrop pickup will retry");
                break;
            }
        }
    }
    count
}

/// Picks up the maildrop at start and then every second until shutdown.
pub async fn run(dir: PathBuf, intake: Arc<Intake>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let n = pickup_once(&dir, &intake).await;
        if n > 0 {
            info!(count = n, "picked up from the maildrop");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = crate::listener::stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let env = DropEnvelope { sender: "a@b.onion".into(), recipients: vec!["c@d.onion".into()] };
        let path = write(dir.path(), &env, b"Subject: x\r\n\r\nhi\r\n").unwrap();
        let (e, m) = read(&path).unwrap();
        assert_eq!(e, env);
        assert_eq!(m, b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(waiting(dir.path()).unwrap(), vec![path]);
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        fs::write(&p, b"hello").unwrap();
        assert!(read(&p).is_err());
    }
}
