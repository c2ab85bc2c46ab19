//! Free space: the queue's disk never fills up under it (Postfix's `queue_minfree`).
//!
//! - Below `[smtp] min_free_space` (plus the message's announced SIZE), MAIL and DATA get
//!   `452 4.3.1 Insufficient system storage`, and local submission is told to try later.
//! - While a message is being written, it is refused (452 4.3.1 at the final dot) once free
//!   space falls below half the floor, so a message in flight cannot fill the disk either.
//! - A reserve file of [`RESERVE_SIZE`] bytes in the queue folder is given back when free
//!   space falls below a quarter of the floor (something else is filling the disk) and made
//!   again when space returns, so that the store always has room to record what it is doing
//!   (sled 0.34 stops for good on a write error) and recovers by itself. The reserve always
//!   counts as used for new mail, given back or not: it is for the store only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use smtorp_smtp::Reply;
use tracing::{info, warn};

/// The size of the reserve file.
pub(crate) const RESERVE_SIZE: u64 = 8 * 1024 * 1024;

/// The name of the reserve file in the queue folder.
const RESERVE_NAME: &str = "reserve";

/// The free-space rules of one queue folder.
#[derive(Debug, Clone)]
pub(crate) struct DiskSpace {
    dir: PathBuf,
    min_free: u64,
}

/// The reply when space is short.
pub(crate) fn insufficient_storage() -> Reply {
    Reply::new(
        452,
        [4, 3, 1],
        "Insufficient system storage, try again later",
    )
}

impl DiskSpace {
    /// The rules for the file system of `queue_dir`, with the floor `min_free` bytes
    /// (0 turns them off).
    pub(crate) fn new(queue_dir: &Path, min_free: u64) -> DiskSpace {
        DiskSpace {
            dir: queue_dir.to_path_buf(),
            min_free,
        }
    }

    /// Bytes an unprivileged writer may still use on the queue's file system, if known.
    pub(crate) fn free(&self) -> Option<u64> {
        let stat = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }

    /// Free space for new mail: the reserve counts as used even after it was given back
    /// (it is for the store, not for more mail).
    fn free_for_mail(&self) -> Option<u64> {
        let free = self.free()?;
        let present = fs::symlink_metadata(self.dir.join(RESERVE_NAME))
            .is_ok_and(|m| m.len() >= RESERVE_SIZE);
        Some(if present {
            free
        } else {
            free.saturating_sub(RESERVE_SIZE)
        })
    }

    /// Before MAIL (with the client's SIZE, or 0) and DATA: refuse below the floor.
    pub(crate) fn check(&self, announced: u64) -> Result<(), Reply> {
        if self.min_free == 0 {
            return Ok(());
        }
        match self.free_for_mail() {
            Some(free) if free < self.min_free.saturating_add(announced) => {
                warn!(
                    free,
                    min_free = self.min_free,
                    announced,
                    "low on disk space: refusing new mail"
                );
                Err(insufficient_storage())
            }
            _ => Ok(()),
        }
    }

    /// While a message is written: refuse it once free space is below half the floor.
    pub(crate) fn check_writing(&self) -> Result<(), Reply> {
        if self.min_free == 0 {
            return Ok(());
        }
        match self.free_for_mail() {
            Some(free) if free < self.min_free / 2 => {
                warn!(
                    free,
                    "disk nearly full while receiving a message: refusing it"
                );
                Err(insufficient_storage())
            }
            _ => Ok(()),
        }
    }

    /// Gives the reserve back when the disk is nearly full, makes it again when there is
    /// room. Call it now and then (the maildrop pickup does, every few seconds).
    pub(crate) fn tend_reserve(&self) {
        if self.min_free == 0 {
            return;
        }
        let Some(free) = self.free() else {
            return;
        };
        let path = self.dir.join(RESERVE_NAME);
        let present = fs::symlink_metadata(&path).is_ok_and(|m| m.len() >= RESERVE_SIZE);
        if free < self.min_free / 4 {
            if present {
                match fs::remove_file(&path) {
                    Ok(()) => warn!(free, "disk nearly full: gave back the queue's reserve"),
                    Err(e) => warn!(error = %e, "cannot remove the queue's reserve file"),
                }
            }
        } else if !present && free > self.min_free.saturating_add(RESERVE_SIZE) {
            match write_reserve(&path) {
                Ok(()) => info!("made the queue's disk reserve"),
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    warn!(error = %e, "cannot make the queue's reserve file");
                }
            }
        }
    }
}

/// Writes the reserve file with real blocks (a sparse file would reserve nothing).
fn write_reserve(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let block = vec![0u8; 1024 * 1024];
    for _ in 0..RESERVE_SIZE / block.len() as u64 {
        file.write_all(&block)?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_free_space_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), u64::MAX / 4);
        let r = space.check(0).unwrap_err();
        assert_eq!((r.code, r.enhanced), (452, [4, 3, 1]));
        assert!(space.check_writing().is_err());
        let off = DiskSpace::new(dir.path(), 0);
        assert!(off.check(u64::MAX / 2).is_ok() && off.check_writing().is_ok());
    }

    #[test]
    fn the_announced_size_counts() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), 1);
        let free = space.free().unwrap();
        assert!(space.check(0).is_ok());
        assert!(space.check(free).is_err());
    }

    #[test]
    fn the_reserve_is_made_when_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), 1024);
        space.tend_reserve();
        let meta = fs::metadata(dir.path().join(RESERVE_NAME)).unwrap();
        assert_eq!(meta.len(), RESERVE_SIZE);
        // Made once, kept.
        space.tend_reserve();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
