//! The maildrop folder: how `smtorp sendmail` leaves a message when the daemon does not run,
//! and how the daemon picks it up. The folder is written by every local user, so for the
//! daemon it is hostile ground:
//!
//! - **The writer** (`sendmail`, as the user) writes `.<token>`, fsyncs it, renames it to
//!   `<token>` (a name without a leading dot is complete), then makes the rename durable with
//!   `syncfs`: a user cannot fsync the 1733 folder (it cannot be opened for reading), but may
//!   sync the file system it is on.
//! - **The daemon** never follows a path a user can influence. It works relative to the
//!   folder handle it opened (`O_DIRECTORY|O_NOFOLLOW`, checked to be its own 1733 folder),
//!   opens each name with `O_NOFOLLOW|O_NONBLOCK` (a symbolic link fails, a FIFO does not
//!   block), and accepts only a regular file with one link, below the size limit; the
//!   submitter is the file's owner. Anything else is unlinked (the name only: the file it
//!   names is never touched). A file it cannot queue is moved into `<data_dir>/rejected/`
//!   (0700, made by the daemon, checked on every use), out of the users' reach. A name that
//!   changed between the open and the removal is left for the next round.
//! - The file name is the submission's token, recorded with the queued message: a file picked
//!   up again after a crash (queued, not yet removed), or one written after the same message
//!   went through the socket, is not queued twice.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{read_request, request_lines, submit, Request};
use crate::intake::{Intake, IntakeError};
use crate::policy::{Directory, Submitter};

/// The mode of the maildrop folder: every user may create names, nobody but the daemon may
/// list it; the sticky bit keeps users from removing each other's files.
pub(crate) const MAILDROP_MODE: u32 = 0o1733;
/// Names read from the folder in one round at most.
const MAX_NAMES_PER_ROUND: usize = 1000;
/// Unfinished files (`.<token>`) older than this are removed.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);
/// Tokens older than this whose file is gone are forgotten.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How often the maildrop is looked at.
const PICKUP_INTERVAL: Duration = Duration::from_millis(250);
/// Files of a round queued at the same time: each waits for its commit (an fdatasync and a
/// group commit), and files committed together share the group commit.
const PICKUP_AT_ONCE: usize = 16;

/// Creates the maildrop folder (1733) and the rejected folder (0700) when missing.
pub(crate) fn create_dirs(maildrop: &Path, rejected: &Path) -> std::io::Result<()> {
    for (dir, mode) in [(maildrop, MAILDROP_MODE), (rejected, 0o700)] {
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} exists and is not a folder",
                    dir.display()
                )))
            }
            Err(_) => fs::create_dir_all(dir)?,
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Writes one message durably into the maildrop as the calling user (sendmail's side) and
/// returns its final path. `message` has CRLF line endings.
pub(crate) fn write(dir: &Path, request: &Request, message: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!(".{}", request.token));
    let done = dir.join(&request.token);
    let result = (|| {
        // 0644: the daemon reads what another user wrote; the name is 128 random bits in a
        // folder nobody can list.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(&request_lines(request))?;
        file.write_all(message)?;
        file.sync_all()?;
        fs::rename(&tmp, &done)?;
        // The rename must reach the disk too. The folder cannot be opened by a user to
        // fsync it, so sync the file system the file is on.
        nix::unistd::syncfs(file.as_fd()).map_err(std::io::Error::from)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| done)
}

/// One name of the maildrop, opened safely.
#[derive(Debug)]
struct Candidate {
    name: OsString,
    file: File,
    stat: FileStat,
}

/// What one look at the folder found.
#[derive(Debug, Default)]
struct Round {
    candidates: Vec<Candidate>,
    /// The listing stopped at [`MAX_NAMES_PER_ROUND`]: more names wait in the folder.
    more: bool,
}

/// The daemon's handles on its folders.
struct Folders {
    maildrop: OwnedFd,
    rejected: OwnedFd,
}

/// Opens a folder the daemon made, refusing a symbolic link or anything not owned by us.
fn open_own_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
    let stat = fstat(&fd)?;
    if stat.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "{} is not owned by the daemon's user",
            path.display()
        )));
    }
    Ok(fd)
}

impl Folders {
    fn open(maildrop: &Path, rejected: &Path) -> std::io::Result<Folders> {
        let folders = Folders {
            maildrop: open_own_dir(maildrop)?,
            rejected: open_own_dir(rejected)?,
        };
        let mode = fstat(&folders.rejected)?.st_mode & 0o7777;
        if mode & 0o077 != 0 {
            return Err(std::io::Error::other(format!(
                "{} must not be open to other users (mode {mode:o})",
                rejected.display()
            )));
        }
        Ok(folders)
    }

    /// Removes `name` from the maildrop if it still is the file we looked at (or
    /// unconditionally with `stat` = `None`). False if it is still there.
    fn unlink(&self, name: &OsStr, stat: Option<&FileStat>) -> bool {
        if let Some(stat) = stat {
            match fstatat(
                &self.maildrop,
                name,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(now) if now.st_dev == stat.st_dev && now.st_ino == stat.st_ino => {}
                _ => return true, // replaced meanwhile: a new file for the next round
            }
        }
        let is_dir =
            stat.is_some_and(|s| s.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits());
        let flag = if is_dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        match unlinkat(&self.maildrop, name, flag) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => true,
            Err(e) => {
                warn!(file = ?name, error = %e, "cannot remove a maildrop name; ignoring it from now on");
                false
            }
        }
    }

    /// Moves a file we could not queue out of the users' reach.
    fn reject(&self, candidate: &Candidate, why: &str) {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut target = OsString::from(format!("{stamp}."));
        target.push(&candidate.name);
        warn!(file = ?candidate.name, uid = candidate.stat.st_uid, reason = %why, "maildrop file rejected; kept in rejected/");
        match fstatat(
            &self.maildrop,
            candidate.name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(now)
                if now.st_ino == candidate.stat.st_ino && now.st_dev == candidate.stat.st_dev => {}
            _ => return,
        }
        if let Err(e) = renameat(
            &self.maildrop,
            candidate.name.as_os_str(),
            &self.rejected,
            target.as_os_str(),
        ) {
            warn!(file = ?candidate.name, error = %e, "cannot move a rejected maildrop file; removing it");
            let _ = self.unlink(&candidate.name, Some(&candidate.stat));
        }
    }

    /// Reads the folder and opens every complete name safely; removes what is no message.
    /// Names that could not be removed before (`stuck`) are passed over.
    fn scan(
        &self,
        max_size: u64,
        sweep_temp: bool,
        stuck: &mut HashSet<OsString>,
    ) -> std::io::Result<Round> {
        let listing = openat(
            &self.maildrop,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut dir = nix::dir::Dir::from_fd(listing)?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name.to_bytes()).to_os_string();
            if stuck.contains(&name) {
                continue;
            }
            names.push(name);
            if names.len() >= MAX_NAMES_PER_ROUND {
                break;
            }
        }
        let mut round = Round {
            more: names.len() >= MAX_NAMES_PER_ROUND,
            ..Round::default()
        };
        for name in names {
            if name.as_bytes().starts_with(b".") {
                if sweep_temp {
                    self.sweep_temp(&name);
                }
                continue;
            }
            let opened = openat(
                &self.maildrop,
                name.as_os_str(),
                OFlag::O_RDONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_NOCTTY
                    | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            let fd = match opened {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => {
                    // A symbolic link (ELOOP), a file we may not read, ...: not a message.
                    warn!(file = ?name, error = %e, "maildrop name cannot be opened safely; removed");
                    if !self.unlink(&name, None) && stuck.len() < MAX_NAMES_PER_ROUND {
                        stuck.insert(name);
                    }
                    continue;
                }
            };
            let stat = fstat(&fd)?;
            let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
            let why = if kind != SFlag::S_IFREG {
                Some("not a regular file")
            } else if stat.st_nlink != 1 {
                Some("a file with other links")
            } else if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > max_size {
                Some("larger than the message size limit")
            } else {
                None
            };
            if let Some(why) = why {
                warn!(file = ?name, uid = stat.st_uid, reason = why, "maildrop name is no message; removed");
                if !self.unlink(&name, Some(&stat)) && stuck.len() < MAX_NAMES_PER_ROUND {
                    stuck.insert(name);
                }
                continue;
            }
            round.candidates.push(Candidate {
                name,
                file: File::from(fd),
                stat,
            });
        }
        Ok(round)
    }

    /// Removes an unfinished file a crashed `sendmail` left behind.
    fn sweep_temp(&self, name: &OsStr) {
        let Ok(stat) = fstatat(
            &self.maildrop,
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now.saturating_sub(stat.st_mtime) > STALE_TEMP.as_secs() as i64 {
            info!(file = ?name, "removing an unfinished maildrop file");
            let _ = self.unlink(name, Some(&stat));
        }
    }
}

/// The maildrop pickup of the daemon.
pub(crate) struct Pickup {
    /// Names that could not be removed (a folder that is not empty): passed over.
    stuck: Arc<std::sync::Mutex<HashSet<OsString>>>,
    maildrop: PathBuf,
    rejected: PathBuf,
    intake: Arc<Intake>,
    directory: Arc<Directory>,
    max_size: u64,
}

impl Pickup {
    /// The pickup of `maildrop`, moving what it cannot queue into `rejected`.
    pub(crate) fn new(intake: Arc<Intake>, directory: Arc<Directory>) -> Pickup {
        let settings = directory.settings().clone();
        Pickup {
            stuck: Arc::default(),
            maildrop: settings.maildrop_dir(),
            rejected: settings.rejected_dir(),
            // The request lines come on top of the message.
            max_size: settings.config.smtp.max_message_size as u64 + 64 * 1024,
            intake,
            directory,
        }
    }

    /// Looks at the folder once and queues what it finds, [`PICKUP_AT_ONCE`] files at a
    /// time. Returns how many were queued, and whether the folder held more names than one
    /// round reads.
    pub(crate) async fn once(self: &Arc<Self>, sweep: bool) -> (usize, bool) {
        let (maildrop, rejected, max_size) =
            (self.maildrop.clone(), self.rejected.clone(), self.max_size);
        let stuck = self.stuck.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let folders = Folders::open(&maildrop, &rejected)?;
            let mut stuck = stuck.lock().unwrap_or_else(|p| p.into_inner());
            let round = folders.scan(max_size, sweep, &mut stuck)?;
            Ok::<_, std::io::Error>((folders, round))
        })
        .await;
        let (folders, round) = match scanned {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                warn!(dir = %self.maildrop.display(), error = %e, "cannot read the maildrop");
                return (0, false);
            }
            Err(e) => {
                warn!(error = %e, "maildrop scan failed");
                return (0, false);
            }
        };
        let more = round.more;
        let folders = Arc::new(folders);
        let mut queued = 0;
        let mut candidates = round.candidates.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let mut unavailable = false;
        loop {
            while running.len() < PICKUP_AT_ONCE && !unavailable {
                let Some(candidate) = candidates.next() else {
                    break;
                };
                let (this, folders) = (self.clone(), folders.clone());
                running.spawn(async move { this.one(&folders, candidate).await });
            }
            match running.join_next().await {
                None => break,
                Some(Ok(Ok(true))) => queued += 1,
                Some(Ok(Ok(false))) => {}
                // The queue is unavailable: those in flight finish, the rest waits for a
                // later round (a file queued twice is caught by its intake token).
                Some(Ok(Err(()))) => unavailable = true,
                Some(Err(e)) => warn!(error = %e, "a maildrop pickup task failed"),
            }
        }
        (queued, more && !unavailable)
    }

    /// Queues one opened file. `Err` when the queue is unavailable (stop the round).
    async fn one(&self, folders: &Arc<Folders>, candidate: Candidate) -> Result<bool, ()> {
        let token = candidate.name.to_string_lossy().into_owned();
        let submitter = Submitter::from_uid(
            candidate.stat.st_uid,
            &self.directory.settings().config.local.trusted_submitters,
        );
        let mut file = tokio::fs::File::from_std(match candidate.file.try_clone() {
            Ok(file) => file,
            Err(e) => {
                warn!(error = %e, "cannot read a maildrop file");
                return Ok(false);
            }
        });
        let (request, head) = match read_request(&mut file, &token).await {
            Ok(x) => x,
            Err(why) => {
                let folders = folders.clone();
                let _ = tokio::task::spawn_blocking(move || folders.reject(&candidate, &why)).await;
                return Ok(false);
            }
        };
        if request.token != token {
            let folders = folders.clone();
            let why = "its token is not its name".to_owned();
            let _ = tokio::task::spawn_blocking(move || folders.reject(&candidate, &why)).await;
            return Ok(false);
        }
        let result = submit(
            &self.intake,
            &self.directory,
            &submitter,
            &request,
            head,
            &mut file,
        )
        .await;
        let folders = folders.clone();
        match result {
            Ok(queued) => {
                let queue = self.intake.queue().clone();
                let token = request.token.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if folders.unlink(&candidate.name, Some(&candidate.stat)) {
                        let _ = queue.forget_token(&token);
                    }
                })
                .await;
                Ok(queued.is_some())
            }
            Err(IntakeError::Rejected(reply)) => {
                let why = reply.to_string();
                let _ = tokio::task::spawn_blocking(move || folders.reject(&candidate, &why)).await;
                Ok(false)
            }
            Err(e @ IntakeError::Deferred(_)) => {
                warn!(reason = %e.reply(), "queue unavailable; maildrop pickup will retry");
                Err(())
            }
        }
    }

    /// Forgets the tokens of submissions whose maildrop file is gone: all of them at start
    /// (`min_age` zero), else those older than `min_age` (socket submissions).
    async fn forget_stale_tokens(&self, min_age: Duration) {
        let dir = self.maildrop.clone();
        let forgotten = self
            .intake
            .queue()
            .call(move |q| {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut n = 0;
                for (token, recorded) in q.tokens_with_time()? {
                    let old = now.saturating_sub(recorded) >= min_age.as_secs();
                    let gone = fs::symlink_metadata(dir.join(&token)).is_err();
                    if old && gone {
                        q.forget_token(&token)?;
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await;
        match forgotten {
            Ok(0) => {}
            Ok(n) => info!(count = n, "forgot submission tokens whose files are gone"),
            Err(e) => warn!(error = %e, "cannot clean up submission tokens"),
        }
    }

    /// Picks up at start and then every 250 ms until shutdown, at once again after a round
    /// that queued something and left names behind (a backlog is not paced by the
    /// period); every minute also removes stale unfinished files, forgets old tokens and
    /// tends the disk reserve.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        this.forget_stale_tokens(Duration::ZERO).await;
        let mut last_sweep = std::time::Instant::now();
        loop {
            let sweep = last_sweep.elapsed() >= Duration::from_secs(60);
            if sweep {
                last_sweep = std::time::Instant::now();
                this.forget_stale_tokens(TOKEN_TTL).await;
            }
            let space = this.intake.space().clone();
            let _ = tokio::task::spawn_blocking(move || space.tend_reserve()).await;
            let (n, more) = this.once(sweep).await;
            if n > 0 {
                info!(count = n, "picked up from the maildrop");
            }
            let pause = if n > 0 && more {
                Duration::ZERO
            } else {
                PICKUP_INTERVAL
            };
            tokio::select! {
                biased;
                _ = crate::listen::stopped(&mut shutdown) => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A maildrop with `n` message files, and its folders opened as the pickup opens them.
    fn maildrop_with(n: usize) -> (tempfile::TempDir, Folders) {
        let dir = tempfile::tempdir().unwrap();
        let (drop, rejected) = (dir.path().join("maildrop"), dir.path().join("rejected"));
        std::fs::create_dir(&drop).unwrap();
        std::fs::create_dir(&rejected).unwrap();
        std::fs::set_permissions(&rejected, std::fs::Permissions::from_mode(0o700)).unwrap();
        for i in 0..n {
            std::fs::write(drop.join(format!("1000000000.{i:09}.0.test")), b"x").unwrap();
        }
        let folders = Folders::open(&drop, &rejected).unwrap();
        (dir, folders)
    }

    #[test]
    fn a_round_says_when_it_left_names_behind() {
        let mut stuck = HashSet::new();
        let (_dir, folders) = maildrop_with(MAX_NAMES_PER_ROUND + 5);
        let round = folders.scan(1 << 20, false, &mut stuck).unwrap();
        assert_eq!(round.candidates.len(), MAX_NAMES_PER_ROUND);
        assert!(
            round.more,
            "a full round: the pickup goes again without its pause"
        );

        let (_dir, folders) = maildrop_with(5);
        let round = folders.scan(1 << 20, false, &mut stuck).unwrap();
        assert_eq!(round.candidates.len(), 5);
        assert!(!round.more);
    }
}
