//! Spool files: the content of each message in a file of its own, `spool/<queue id>`,
//! written as it arrives (so no message ever sits whole in memory), made durable with
//! fdatasync at commit, and removed when the message leaves the queue. New files' folder
//! entries are made durable by the group-commit flusher, once per batch.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{QueueError, QueueId};

/// The spool folder, shared by the queue and its flusher.
#[derive(Debug, Clone)]
pub(crate) struct SpoolDir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// The folder, open for fsync.
    dir: File,
    /// A file was created since the folder was last fsynced.
    dirty: AtomicBool,
}

impl SpoolDir {
    /// Opens the spool folder, creating it (mode 0700) if missing.
    pub(crate) fn open(path: &Path) -> io::Result<SpoolDir> {
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {
                if let Some(parent) = path.parent() {
                    File::open(parent)?.sync_all()?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(e),
        }
        let dir = File::open(path)?;
        Ok(SpoolDir {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                dir,
                dirty: AtomicBool::new(false),
            }),
        })
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.inner.path
    }

    fn file(&self, id: QueueId) -> PathBuf {
        self.inner.path.join(id.to_string())
    }

    /// A new, empty spool file for `id`; `None` if one exists already.
    pub(crate) fn create(&self, id: QueueId) -> io::Result<Option<Spool>> {
        let path = self.file(id);
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(e),
        };
        self.inner.dirty.store(true, Ordering::SeqCst);
        Ok(Some(Spool {
            id,
            file,
            path,
            len: 0,
            keep: false,
        }))
    }

    /// Writes a whole spool file durably (replacing any file of that id): the migration of
    /// bodies kept in sled by older versions.
    pub(crate) fn write_durably(&self, id: QueueId, bytes: &[u8]) -> io::Result<()> {
        let path = self.file(id);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        self.inner.dir.sync_all()
    }

    /// True if `id` has a spool file.
    pub(crate) fn exists(&self, id: QueueId) -> bool {
        fs::symlink_metadata(self.file(id)).is_ok()
    }

    /// The content of `id`, if it has a spool file.
    pub(crate) fn open_body(&self, id: QueueId) -> io::Result<Option<Body>> {
        match File::open(self.file(id)) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok(Some(Body { file, len }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the spool file of `id` (none is fine).
    pub(crate) fn remove(&self, id: QueueId) -> io::Result<()> {
        match fs::remove_file(self.file(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes a file of the folder by name (recovery: files that are no spool file).
    pub(crate) fn remove_name(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let path = self.inner.path.join(name);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every name in the folder, with the queue id it stands for (if it is one).
    pub(crate) fn entries(&self) -> io::Result<Vec<(std::ffi::OsString, Option<QueueId>)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.inner.path)? {
            let name = entry?.file_name();
            let id = name
                .to_str()
                .filter(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|n| n.parse::<QueueId>().ok());
            out.push((name, id));
        }
        Ok(out)
    }

    /// fsyncs the folder if a file was created since the last time (group commit).
    pub(crate) fn sync_if_dirty(&self) -> io::Result<()> {
        if self.inner.dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.inner.dir.sync_all() {
                self.inner.dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Bytes taken by the spool files (their sizes; for `status` and benchmarks).
    pub(crate) fn usage(&self) -> u64 {
        let Ok(entries) = fs::read_dir(&self.inner.path) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

/// An incoming message's spool file, written as the content arrives. Dropped without a
/// [`crate::Queue::commit`], it removes its file.
pub struct Spool {
    id: QueueId,
    file: File,
    path: PathBuf,
    len: u64,
    keep: bool,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// The queue id the message will have.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True while nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends content. Blocking; an error (e.g. a full disk) leaves the spool unusable:
    /// drop it.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), QueueError> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes the content durable (fdatasync).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The file now belongs to a queued message: keep it when this handle is dropped.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %self.path.display(), error = %e, "cannot remove an abandoned spool file");
                }
            }
        }
    }
}

/// The content of a queued message, read from its spool file.
#[derive(Debug)]
pub struct Body {
    file: File,
    len: u64,
}

impl Body {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The open file, to read it another way (e.g. asynchronously).
    pub fn into_file(self) -> File {
        self.file
    }

    /// Reads all of it.
    pub(crate) fn read_all(mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        self.file.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Reads at most the first `limit` bytes.
    pub(crate) fn read_prefix(self, limit: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.file.take(limit as u64).read_to_end(&mut out)?;
        Ok(out)
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}
