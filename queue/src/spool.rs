//! Spool files: the content of each message in a file of its own, `spool/<queue id>`,
//! written as it arrives (so no message ever sits whole in memory), made durable with
//! fdatasync at commit, and removed when the message leaves the queue. New files' folder
//! entries are made durable by the group-commit flusher, once per batch.
//!
//! A small file whose message was delivered is not unlinked but moved into a pool folder
//! (`spool.free/`) and renamed back for the next message, which is written over it: see
//! [`Pool`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{QueueError, QueueId};

/// Files kept in the pool at most (a few more while deliveries finish at the same moment).
const POOL_MAX_FILES: usize = 64;
/// How long a delivered message's content may stay in a pooled file that nobody reuses:
/// older pooled files are emptied by [`SpoolDir::empty_idle_pool_files`].
pub(crate) const POOL_LINGER: Duration = Duration::from_secs(30);
/// Larger files are unlinked, not pooled (truncating many blocks is not cheaper than
/// freeing the inode with them).
const POOL_MAX_FILE_SIZE: u64 = 256 * 1024;

/// Spool files of delivered messages waiting to be reused, in their own folder next to
/// `spool/`.
///
/// Why: creating a file allocates an inode and unlinking one frees it. On ext4 without a
/// journal, every inode allocation skips the inodes freed in the last minutes
/// (`recently_deleted`, one buffer lookup each), so at hundreds of messages a second a
/// create-per-message, unlink-per-message spool spent a fifth of the daemon's CPU there
/// (docs/performance.md). A pooled file is renamed (`renameat2`, never over an existing
/// name) instead: no inode is allocated or freed. Nor is it truncated: the next message
/// is written over its blocks, and only what is left beyond the new content is cut at
/// commit, so at the same sizes no block is freed, discarded or allocated again. A
/// pooled file that nobody reuses is emptied after [`POOL_LINGER`]: the pool keeps a
/// delivered message's content only while the next messages are about to take its place.
///
/// Only the queue's own removal of a finished message ([`SpoolDir::recycle`], from
/// `Queue::update`) pools a file: its readers (the sinks) are done by then. An explicit
/// removal (`queue delete`, recovery) unlinks as before, so a reader that still holds the
/// file open keeps reading that message. The pool is not durable: whatever is in it when
/// the queue is opened is removed. When a file leaves the pool, the pool folder is fsynced
/// with the spool folder by the group commit, so after a crash an acknowledged message's
/// file has one name only.
#[derive(Debug)]
struct Pool {
    path: PathBuf,
    /// The folder, for `renameat2` and fsync.
    dir: File,
    /// The files in the pool that may be reused, the latest pooled last.
    names: Mutex<Vec<Pooled>>,
    /// Files pooled since the spool folder was last fsynced: not reused before the next
    /// fsync (see [`SpoolDir::sync`]).
    fresh: Mutex<Vec<Pooled>>,
    /// The next name.
    next: AtomicU64,
    /// A file left the pool since the folder was last fsynced.
    dirty: AtomicBool,
    /// Cleared when the file system refuses `renameat2` (the pool is then not used).
    enabled: AtomicBool,
}

impl Pool {
    /// Opens (creating, mode 0700) the pool folder and empties it. `None` if that fails
    /// (spool files are then created and unlinked one by one, as without a pool).
    fn open(path: &Path) -> Option<Pool> {
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {
                for entry in fs::read_dir(path).ok()? {
                    let entry = entry.ok()?;
                    let p = entry.path();
                    match entry.file_type().ok()? {
                        t if t.is_dir() => fs::remove_dir_all(&p).ok()?,
                        _ => fs::remove_file(&p).ok()?,
                    }
                }
            }
            Err(e) => {
                tracing::debug!(folder = %path.display(), error = %e, "no spool file pool");
                return None;
            }
        }
        Some(Pool {
            path: path.to_path_buf(),
            dir: File::open(path).ok()?,
            names: Mutex::new(Vec::new()),
            fresh: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            enabled: AtomicBool::new(true),
        })
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.fresh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files in the pool, reusable or not yet.
    fn len(&self) -> usize {
        self.names().len() + self.fresh().len()
    }

    fn usable(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The file system cannot do what the pool needs: stop using it.
    fn disable(&self, e: &io::Error) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            tracing::debug!(error = %e, "spool file pool turned off");
        }
    }
}

/// A file in the pool.
#[derive(Debug, Clone, Copy)]
struct Pooled {
    /// Its name in the pool folder.
    n: u64,
    /// When it was pooled.
    since: Instant,
    /// True once emptied (it held a delivered message's content until then).
    empty: bool,
}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rename_noreplace(from_dir: &File, from: &str, to_dir: &File, to: &str) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    renameat2(from_dir, from, to_dir, to, RenameFlags::RENAME_NOREPLACE)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Without `renameat2`, no pool.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn rename_noreplace(_: &File, _: &str, _: &File, _: &str) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

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
    /// Emptied files for reuse.
    pool: Option<Pool>,
}

impl SpoolDir {
    /// Opens the spool folder, creating it (mode 0700) if missing, and the pool of emptied
    /// files at `pool` (emptied now; see [`Pool`]).
    pub(crate) fn open(path: &Path, pool: &Path) -> io::Result<SpoolDir> {
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
                pool: Pool::open(pool),
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

    /// A new, empty spool file for `id` (a pooled one if there is one); `None` if one exists
    /// already.
    pub(crate) fn create(&self, id: QueueId) -> io::Result<Option<Spool>> {
        let path = self.file(id);
        match self.reuse(id, &path) {
            Reuse::File(file, stale) => {
                return Ok(Some(Spool {
                    id,
                    file,
                    path,
                    len: 0,
                    stale,
                    keep: false,
                }))
            }
            Reuse::Taken => return Ok(None),
            Reuse::None => {}
        }
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
        Ok(Some(Spool {
            id,
            file,
            path,
            len: 0,
            stale: 0,
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
        self.len_of(id).is_some()
    }

    /// The length of `id`'s spool file, if it has one.
    pub(crate) fn len_of(&self, id: QueueId) -> Option<u64> {
        fs::symlink_metadata(self.file(id)).ok().map(|m| m.len())
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

    /// Takes a file from the pool and names it `spool/<id>`. It may still hold the content
    /// of the message delivered before: the new content is written over it from the start,
    /// and [`Spool::sync`] cuts what is left beyond it.
    fn reuse(&self, id: QueueId, path: &Path) -> Reuse {
        let Some(pool) = self.inner.pool.as_ref().filter(|p| p.usable()) else {
            return Reuse::None;
        };
        let Some(pooled) = pool.names().pop() else {
            return Reuse::None;
        };
        let n = pooled.n;
        match rename_noreplace(&pool.dir, &n.to_string(), &self.inner.dir, &id.to_string()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                pool.names().push(pooled);
                return Reuse::Taken;
            }
            Err(e) => {
                pool.disable(&e);
                let _ = fs::remove_file(pool.path.join(n.to_string()));
                return Reuse::None;
            }
        }
        pool.dirty.store(true, Ordering::SeqCst);
        // Not truncated: overwriting the blocks the file has costs no block allocation at
        // writeback, no freeing and no discard (docs/performance.md).
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .and_then(|file| Ok((file.metadata()?.len(), file)));
        match opened {
            Ok((stale, file)) => Reuse::File(file, stale),
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "cannot reuse a pooled spool file");
                let _ = fs::remove_file(path);
                Reuse::None
            }
        }
    }

    /// Removes the spool file of a message that has left the queue through its own
    /// delivery (nobody reads it any more): a small one goes to the pool, others are
    /// unlinked. None is fine.
    pub(crate) fn recycle(&self, id: QueueId) -> io::Result<()> {
        if let Some(pool) = self.inner.pool.as_ref().filter(|p| p.usable()) {
            let small = fs::symlink_metadata(self.file(id))
                .is_ok_and(|m| m.is_file() && m.len() <= POOL_MAX_FILE_SIZE);
            if small && pool.len() < POOL_MAX_FILES {
                // Moved out of `spool/`, and reused only after the spool folder's next fsync
                // (see `sync`). Its content stays until then, and at most `POOL_LINGER`
                // after it if nobody reuses it (`empty_idle_pool_files`).
                let n = pool.next.fetch_add(1, Ordering::Relaxed);
                match rename_noreplace(&self.inner.dir, &id.to_string(), &pool.dir, &n.to_string())
                {
                    Ok(()) => {
                        pool.fresh().push(Pooled {
                            n,
                            since: Instant::now(),
                            empty: false,
                        });
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => pool.disable(&e),
                }
            }
        }
        self.remove(id)
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

    /// The group commit's part, after sled's flush: fsyncs the pool folder if a file left
    /// it, then the spool folder, always. Always, because the fsync is also what flushes
    /// the disk's write cache: sled makes its writes durable with `sync_file_range`, which
    /// writes the pages but does not flush the cache, so without an fsync after it an
    /// acknowledged envelope could still be lost in a power cut.
    ///
    /// Files pooled before the spool folder's fsync become reusable after it. Until then
    /// the folder on disk may still hold the `spool/<id>` name of a pooled file, and a crash
    /// would let recovery find that name with the next message's content in it (for an
    /// envelope whose delivery the store had not yet recorded): a copy of another
    /// message, delivered to the wrong recipients.
    pub(crate) fn sync(&self) -> io::Result<()> {
        if let Some(pool) = &self.inner.pool {
            if pool.dirty.swap(false, Ordering::SeqCst) {
                if let Err(e) = pool.dir.sync_all() {
                    pool.dirty.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        let pooled = self
            .inner
            .pool
            .as_ref()
            .map(|pool| std::mem::take(&mut *pool.fresh()))
            .unwrap_or_default();
        let synced = self.inner.dir.sync_all();
        if let Some(pool) = &self.inner.pool {
            match synced {
                Ok(()) => pool.names().extend(pooled),
                Err(_) => pool.fresh().extend(pooled),
            }
        }
        synced
    }

    /// Empties the pooled files that have held a delivered message's content for longer
    /// than `linger` (the pool is for reuse under load, not for keeping mail). Called by
    /// the flusher at each flush and when idle. A file that cannot be emptied is unlinked.
    pub(crate) fn empty_idle_pool_files(&self, linger: Duration) {
        let Some(pool) = &self.inner.pool else {
            return;
        };
        let mut names = pool.names();
        let mut gone = Vec::new();
        for (i, pooled) in names.iter_mut().enumerate() {
            if pooled.empty || pooled.since.elapsed() < linger {
                continue;
            }
            let path = pool.path.join(pooled.n.to_string());
            match nix::unistd::truncate(&path, 0) {
                Ok(()) => pooled.empty = true,
                Err(_) => {
                    let _ = fs::remove_file(&path);
                    gone.push(i);
                }
            }
        }
        for i in gone.into_iter().rev() {
            names.remove(i);
        }
        // The files still waiting for the spool folder's fsync are left for next time:
        // they are only as old as the last flush.
    }

    /// Bytes taken by the spool files and the pool (their sizes; for `status` and
    /// benchmarks).
    pub(crate) fn usage(&self) -> u64 {
        let size = |folder: &Path| -> u64 {
            let Ok(entries) = fs::read_dir(folder) else {
                return 0;
            };
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        };
        size(&self.inner.path) + self.inner.pool.as_ref().map_or(0, |p| size(&p.path))
    }
}

/// What [`SpoolDir::reuse`] found.
enum Reuse {
    /// A pooled file, now `spool/<id>`, open for writing at its start, and its length (what
    /// it still holds of an earlier message).
    File(File, u64),
    /// `spool/<id>` exists already.
    Taken,
    /// Nothing to reuse: create a file.
    None,
}

/// An incoming message's spool file, written as the content arrives. Dropped without a
/// [`crate::Queue::commit`], it removes its file.
pub struct Spool {
    id: QueueId,
    file: File,
    path: PathBuf,
    len: u64,
    /// The length of the file when it was taken from the pool (an earlier message's
    /// content, overwritten as this one is written).
    stale: u64,
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

    /// Cuts what is left of an earlier message beyond this one (a reused file), then makes
    /// the content durable (fdatasync).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.stale > self.len {
            self.file.set_len(self.len)?;
            self.stale = self.len;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled_lengths(pool: &Path) -> Vec<u64> {
        fs::read_dir(pool)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect()
    }

    #[test]
    fn a_pooled_file_nobody_reuses_is_emptied_after_the_linger() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("spool.free");
        let spool = SpoolDir::open(&dir.path().join("spool"), &pool).unwrap();
        let id = QueueId(7);
        let mut file = spool.create(id).unwrap().unwrap();
        file.write_all(b"Subject: delivered\r\n\r\nsecret\r\n")
            .unwrap();
        file.keep();
        drop(file);
        spool.recycle(id).unwrap();
        assert_eq!(pooled_lengths(&pool), vec![30], "pooled with its content");
        // Waiting for the spool folder's fsync: not touched yet.
        spool.empty_idle_pool_files(Duration::ZERO);
        assert_eq!(pooled_lengths(&pool), vec![30]);
        spool.sync().unwrap();
        spool.empty_idle_pool_files(Duration::from_secs(3600));
        assert_eq!(pooled_lengths(&pool), vec![30], "not yet lingered");
        spool.empty_idle_pool_files(Duration::ZERO);
        assert_eq!(pooled_lengths(&pool), vec![0], "emptied");
        // Still reusable, and a reuse of an emptied file writes from its start.
        let mut file = spool.create(QueueId(8)).unwrap().unwrap();
        assert!(pooled_lengths(&pool).is_empty());
        file.write_all(b"next").unwrap();
        file.sync().unwrap();
        assert_eq!(
            fs::read(spool.path().join(QueueId(8).to_string())).unwrap(),
            b"next"
        );
    }
}
