//! The data directory's layout: what `smtorp init` creates and where each part lives.
//!
//! ```text
//! <data_dir>/            0711  the daemon's home
//!   queue/               0700  the sled queue
//!   maildrop/            1733  `smtorp sendmail` drops messages here when the daemon does not
//!                              run (sticky, not listable)
//!   rejected/            0700  maildrop files that could not be queued, for the administrator
//!   submit.sock          0666  `smtorp sendmail` hands messages to the running daemon here
//!   mail/<user>/         0700  default Maildirs ([local] maildir)
//!   control.sock         0600  the running daemon's control socket
//!   onion/hostname             our onion address, once the onion service has keys
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Settings;
use crate::local::maildrop;

fn ensure_dir(path: &Path, mode: u32, created: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !path.exists() {
        fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
        created.push(path.to_path_buf());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// Creates what is missing; returns what it created.
pub(crate) fn create(settings: &Settings) -> anyhow::Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    ensure_dir(&settings.config.data_dir, 0o711, &mut created)?;
    ensure_dir(&settings.queue_dir(), 0o700, &mut created)?;
    let drop_dir = settings.maildrop_dir();
    if !drop_dir.exists() {
        created.push(drop_dir.clone());
    }
    if !settings.rejected_dir().exists() {
        created.push(settings.rejected_dir());
    }
    maildrop::create_dirs(&drop_dir, &settings.rejected_dir())
        .with_context(|| format!("cannot create {}", drop_dir.display()))?;
    for user in &settings.config.local.users {
        let maildir = settings.maildir_of(user);
        if !maildir.join("new").exists() {
            smtorp_maildir::Maildir::new(&maildir)
                .create()
                .with_context(|| format!("cannot create the Maildir {}", maildir.display()))?;
            created.push(maildir);
        }
    }
    Ok(created)
}

/// Our onion address, once the onion service has made its keys (`onion/hostname`).
pub(crate) fn onion_address(settings: &Settings) -> Option<String> {
    let text = fs::read_to_string(settings.config.data_dir.join("onion").join("hostname")).ok()?;
    let name = text.trim().to_ascii_lowercase();
    smtorp_smtp::address::validate_onion_v3(&name)
        .ok()
        .map(|()| name)
}

/// Writes `bytes` to `path` atomically and durably, with `mode`: a temporary file beside
/// it, fsync, rename over `path`, fsync of the folder. A crash leaves the old file or the
/// new one, never half of one. (The one helper for the password file, the TLS files and
/// the onion hostname file.)
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
