//! The maildrop folder: how `smtorp sendmail` hands messages to the daemon without a socket.
//!
//! `sendmail` writes each message as one file under a temporary name (leading dot), fsyncs
//! it, renames it to its final name and fsyncs the folder: a file with a final name is
//! complete. The daemon picks files up at start and then every 250 ms, enqueues each through
//! the intake and removes the file only after the queue commit. The file name is recorded
//! in the queue in the same transaction as the message, so a file picked up again after a
//! crash (committed, not yet removed) is not queued twice.
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
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let tmp = dir.join(format!(".{name}"));
    let done = dir.join(&name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
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
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("not a maildrop file"))?;
    let line_end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no envelope line"))?;
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
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
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
        // The file name is the token: if a crash came between the queue commit and the
        // removal of the file, the second pickup finds the token and queues nothing.
        let token = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match intake.enqueue_once(arrival, &token).await {
            Ok(queued) => {
                if queued.is_some() {
                    count += 1;
                }
                match fs::remove_file(&path).and_then(|()| fsync_dir(dir)) {
                    Ok(()) => {
                        let _ = intake.queue().forget_token(&token);
                    }
                    Err(e) => {
                        warn!(file = %path.display(), error = %e, "cannot remove picked-up maildrop file")
                    }
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

/// Forgets the tokens of maildrop files that are gone (a crash came after the removal of
/// the file but before the token was forgotten durably).
fn forget_stale_tokens(dir: &Path, intake: &Intake) {
    let queue = intake.queue();
    for token in queue.tokens().unwrap_or_default() {
        if !dir.join(&token).exists() {
            let _ = queue.forget_token(&token);
        }
    }
}

/// How often the maildrop is looked at.
const PICKUP_INTERVAL: Duration = Duration::from_millis(250);

/// Picks up the maildrop at start and then every 250 ms until shutdown.
pub async fn run(dir: PathBuf, intake: Arc<Intake>, mut shutdown: watch::Receiver<bool>) {
    forget_stale_tokens(&dir, &intake);
    loop {
        let n = pickup_once(&dir, &intake).await;
        if n > 0 {
            info!(count = n, "picked up from the maildrop");
        }
        tokio::select! {
            _ = tokio::time::sleep(PICKUP_INTERVAL) => {}
            _ = crate::listen::stopped(&mut shutdown) => return,
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
        let env = DropEnvelope {
            sender: "a@b.onion".into(),
            recipients: vec!["c@d.onion".into()],
        };
        let path = write(dir.path(), &env, b"Subject: x\r\n\r\nhi\r\n").unwrap();
        let (e, m) = read(&path).unwrap();
        assert_eq!(e, env);
        assert_eq!(m, b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(waiting(dir.path()).unwrap(), vec![path]);
    }

    /// A crash after the queue commit but before the file was removed: the next pickup
    /// finds the token and queues nothing a second time.
    #[tokio::test]
    async fn a_file_committed_before_a_crash_is_not_queued_twice() {
        use crate::config;
        use crate::policy::Directory;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "data_dir = \"{}\"\n[local]\ndomains = [\"mail.test\"]\nusers = [\"alice\"]\n",
            dir.path().display()
        );
        let settings = Arc::new(config::check(config::parse(&text).unwrap()).unwrap());
        let queue = Arc::new(smtorp_queue::Queue::open(&settings.queue_dir()).unwrap());
        let directory = Arc::new(Directory::new(settings.clone(), None));
        let intake = Intake::new(
            queue.clone(),
            directory,
            Arc::new(tokio::sync::Notify::new()),
        );
        let drop_dir = settings.maildrop_dir();
        create_dir(&drop_dir).unwrap();
        let env = DropEnvelope {
            sender: "alice@mail.test".into(),
            recipients: vec!["alice@mail.test".into()],
        };
        let path = write(&drop_dir, &env, b"Subject: once\r\n\r\nhi\r\n").unwrap();
        let token = path.file_name().unwrap().to_string_lossy().into_owned();
        // The first pickup got as far as the commit...
        let arrival = Arrival {
            sender: &env.sender,
            recipients: &env.recipients,
            helo: None,
            origin: Origin::Maildrop,
            data: b"Subject: once\r\n\r\nhi\r\n",
        };
        assert!(intake
            .enqueue_once(arrival, &token)
            .await
            .unwrap()
            .is_some());
        assert_eq!(queue.len(), 1);
        // ...then the daemon died. The next pickup must not queue it again.
        assert_eq!(pickup_once(&drop_dir, &intake).await, 0);
        assert_eq!(queue.len(), 1);
        assert!(!path.exists(), "the file is removed");
        assert!(!queue.has_token(&token).unwrap(), "and its token forgotten");
        // A new file is queued as usual.
        write(&drop_dir, &env, b"Subject: two\r\n\r\nhi\r\n").unwrap();
        assert_eq!(pickup_once(&drop_dir, &intake).await, 1);
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        fs::write(&p, b"hello").unwrap();
        assert!(read(&p).is_err());
    }
}
