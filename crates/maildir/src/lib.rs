//! Writes messages into Maildir folders (tmp/ -> new/, fsync of file and directory).
//!
//! CONTRACT (the delivery crate is written against exactly this API).
#![doc = include_str!("../README.md")]

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What went wrong writing into a Maildir. All of these are temporary for the caller (retry).
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    /// An I/O error (permissions, disk full, ...), with the path involved.
    #[error("maildir {path}: {source}")]
    Io {
        /// The file or folder that failed.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The unique name is not usable as a file name.
    #[error("bad maildir unique name: {0}")]
    BadName(String),
}

/// The outcome of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Written now, at this path (in `new/`).
    New(PathBuf),
    /// A file with this unique name was already in `new/` or `cur/` (an earlier attempt got
    /// through before a crash): nothing written.
    AlreadyThere(PathBuf),
}

/// One Maildir folder (the folder that holds `tmp/`, `new/`, `cur/`).
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
}

/// The stable unique name of the delivery of one queued message to one recipient:
/// `<arrival secs>.Q<queue id>R<recipient index>.<host>`, where `host` has `/` and `:`
/// replaced (Maildir spec). Same inputs, same name: a retry finds its earlier copy.
pub fn unique_name(
    arrival_secs: u64,
    queue_id: &str,
    recipient_index: usize,
    host: &str,
) -> String {
    let host = host.replace('/', "\\057").replace(':', "\\072");
    format!("{arrival_secs}.Q{queue_id}R{recipient_index}.{host}")
}

/// Builds an [`MaildirError::Io`] for `path`.
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MaildirError + '_ {
    move |source| MaildirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `unique` can be used as a file name in tmp/, new/ and cur/.
fn check_name(unique: &str) -> Result<(), MaildirError> {
    if unique.is_empty() || unique.starts_with('.') || unique.contains(['/', ':', '\0']) {
        return Err(MaildirError::BadName(unique.to_owned()));
    }
    Ok(())
}

/// Creates `dir` with mode 0700 if it is missing; true when it was created now.
fn create_dir(dir: &Path) -> Result<bool, MaildirError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Opens a directory and fsyncs it, so that entries created or renamed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), MaildirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes text with every CRLF turned into LF, piece by piece: a CR at the end of one
/// piece followed by an LF at the start of the next is a CRLF too. A lone CR or LF is
/// written unchanged.
struct LfWriter<W: Write> {
    out: W,
    /// The last byte seen was a CR that has not been written yet.
    pending_cr: bool,
}

impl<W: Write> LfWriter<W> {
    fn new(out: W) -> Self {
        LfWriter {
            out,
            pending_cr: false,
        }
    }

    fn push(&mut self, piece: &[u8]) -> io::Result<()> {
        let mut rest = piece;
        if self.pending_cr && !rest.is_empty() {
            if rest[0] != b'\n' {
                self.out.write_all(b"\r")?;
            }
            self.pending_cr = false;
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\r') {
            self.out.write_all(&rest[..pos])?;
            match rest.get(pos + 1) {
                // CRLF: drop the CR, the LF is written with the next chunk.
                Some(b'\n') => rest = &rest[pos + 1..],
                // A lone CR.
                Some(_) => {
                    self.out.write_all(b"\r")?;
                    rest = &rest[pos + 1..];
                }
                // CR at the end of the piece: decided by the next piece.
                None => {
                    self.pending_cr = true;
                    rest = &[];
                }
            }
        }
        self.out.write_all(rest)
    }

    fn finish(mut self) -> io::Result<W> {
        if self.pending_cr {
            self.out.write_all(b"\r")?;
        }
        Ok(self.out)
    }
}

/// Writes `parts` to `out` with every CRLF turned into LF (see [`LfWriter`]).
#[cfg(test)]
fn write_lf<W: Write>(out: &mut W, parts: &[&[u8]]) -> io::Result<()> {
    let mut writer = LfWriter::new(out);
    for part in parts {
        writer.push(part)?;
    }
    writer.finish().map(drop)
}

/// Slices read one after the other.
struct Parts<'a> {
    parts: &'a [&'a [u8]],
    /// Bytes of `parts[0]` already read.
    offset: usize,
}

impl io::Read for Parts<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some((first, rest)) = self.parts.split_first() {
            let left = first.get(self.offset..).unwrap_or_default();
            if left.is_empty() {
                self.parts = rest;
                self.offset = 0;
                continue;
            }
            let n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
            self.offset += n;
            return Ok(n);
        }
        Ok(0)
    }
}

/// How much looking for an earlier copy a delivery does (see [`Maildir::deliver_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Look in `new/` and `cur/` (a reader may have moved the earlier copy there and added
    /// flags), then in the Maildir's other folders (the user may have filed it): for any
    /// delivery that may have happened before.
    Full,
    /// Look in `new/` only: for a delivery that cannot have happened before (its first
    /// attempt in a process that has saved every earlier result). Saves listing `cur/`.
    NewOnly,
}

impl Maildir {
    /// A Maildir at `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> Maildir {
        Maildir { root: root.into() }
    }

    /// The folder that holds tmp/, new/, cur/.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates root, tmp/, new/, cur/ (mode 0700) where missing.
    pub fn create(&self) -> Result<(), MaildirError> {
        // Fast path: everything is there already.
        if ["tmp", "new", "cur"]
            .iter()
            .all(|d| self.root.join(d).is_dir())
        {
            return Ok(());
        }
        // The root and its missing parents.
        if !self.root.is_dir() {
            let mut missing = Vec::new();
            let mut p: &Path = &self.root;
            while !p.as_os_str().is_empty() && !p.exists() {
                missing.push(p.to_path_buf());
                match p.parent() {
                    Some(parent) => p = parent,
                    None => break,
                }
            }
            for dir in missing.iter().rev() {
                if create_dir(dir)? {
                    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                        sync_dir(parent)?;
                    }
                }
            }
            // The root may exist as something other than a folder: report that.
            if !self.root.is_dir() {
                create_dir(&self.root)?;
            }
        }
        let mut created = false;
        for sub in ["tmp", "new", "cur"] {
            created |= create_dir(&self.root.join(sub))?;
        }
        if created {
            // Make the new sub-folders durable before anything is renamed into them.
            sync_dir(&self.root)?;
        }
        Ok(())
    }

    /// Delivers the concatenation of `parts` under `unique` (creating the folders first if
    /// needed): write `tmp/<unique>`, fsync it, rename to `new/<unique>`, fsync `new/`. CRLF line
    /// endings are written as LF (what mutt, neomutt and Dovecot expect in Maildir files).
    /// If `new/<unique>` or `cur/<unique>:2,<flags>` already exists, returns
    /// [`Delivered::AlreadyThere`] and writes nothing.
    pub fn deliver(&self, unique: &str, parts: &[&[u8]]) -> Result<Delivered, MaildirError> {
        let (prefix, rest): (&[u8], &[&[u8]]) = match parts.split_first() {
            Some((first, rest)) => (first, rest),
            None => (b"", &[]),
        };
        let mut body = Parts {
            parts: rest,
            offset: 0,
        };
        self.deliver_from(unique, prefix, &mut body, Lookup::Full)
    }

    /// [`Maildir::deliver`] streaming: `prefix` (e.g. Return-Path and Delivered-To), then
    /// all of `body`, read in pieces (nothing is held whole in memory). `lookup` says how
    /// hard to look for an earlier copy.
    pub fn deliver_from(
        &self,
        unique: &str,
        prefix: &[u8],
        body: &mut dyn io::Read,
        lookup: Lookup,
    ) -> Result<Delivered, MaildirError> {
        check_name(unique)?;
        self.create()?;

        let new_dir = self.root.join("new");
        let new_path = new_dir.join(unique);
        if let Some(found) = self.find_existing(unique, &new_path, lookup)? {
            return Ok(Delivered::AlreadyThere(found));
        }

        let tmp_path = self.root.join("tmp").join(unique);
        let file = match open_new(&tmp_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // A stale file from an attempt that crashed before the rename.
                fs::remove_file(&tmp_path).map_err(io_err(&tmp_path))?;
                open_new(&tmp_path).map_err(io_err(&tmp_path))?
            }
            Err(e) => return Err(io_err(&tmp_path)(e)),
        };
        if let Err(e) = write_and_sync(file, prefix, body) {
            let _ = fs::remove_file(&tmp_path);
            return Err(io_err(&tmp_path)(e));
        }
        if let Err(e) = fs::rename(&tmp_path, &new_path) {
            let _ = fs::remove_file(&tmp_path);
            return Err(io_err(&new_path)(e));
        }
        sync_dir(&new_dir)?;
        Ok(Delivered::New(new_path))
    }

    /// The path of an earlier copy named `unique` in new/ or cur/, or (with
    /// [`Lookup::Full`]) in another folder of this Maildir, if there is one.
    fn find_existing(
        &self,
        unique: &str,
        new_path: &Path,
        lookup: Lookup,
    ) -> Result<Option<PathBuf>, MaildirError> {
        match fs::symlink_metadata(new_path) {
            Ok(_) => return Ok(Some(new_path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(new_path)(e)),
        }
        if lookup == Lookup::NewOnly {
            return Ok(None);
        }
        let cur_dir = self.root.join("cur");
        for entry in fs::read_dir(&cur_dir).map_err(io_err(&cur_dir))? {
            let entry = entry.map_err(io_err(&cur_dir))?;
            if is_copy_of(entry.file_name().as_encoded_bytes(), unique) {
                return Ok(Some(entry.path()));
            }
        }
        self.find_in_subfolders(unique).map_err(io_err(&self.root))
    }

    /// An earlier copy that the user moved into another folder of this Maildir before the
    /// retry (Maildir++ folders `.<name>/` beside `new/` and `cur/`; Dovecot and mutt keep
    /// the file name when they move a message, as `.<name>/cur/<unique>:2,<flags>`).
    ///
    /// Every folder is opened relative to the handle of the one above it, with
    /// `O_NOFOLLOW`: a symbolic link among them (a Maildir may live in a user's home) is
    /// passed over, never followed. Only names are read.
    fn find_in_subfolders(&self, unique: &str) -> io::Result<Option<PathBuf>> {
        use nix::dir::{Dir, Type};
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut root = Dir::open(&self.root, flags, Mode::empty()).map_err(io::Error::from)?;
        let mut folders = Vec::new();
        for entry in root.iter() {
            let entry = entry.map_err(io::Error::from)?;
            let name = entry.file_name().to_bytes();
            let is_folder = matches!(entry.file_type(), Some(Type::Directory) | None);
            if is_folder && name.len() > 1 && name.starts_with(b".") && name != b".." {
                folders.push(std::ffi::OsStr::from_bytes(name).to_os_string());
            }
        }
        for folder in folders {
            // Gone, not a folder, or a symbolic link (ELOOP): nothing of ours in it.
            let Ok(sub) = Dir::openat(&root, folder.as_os_str(), flags, Mode::empty()) else {
                continue;
            };
            for leaf in ["new", "cur"] {
                let Ok(mut files) = Dir::openat(&sub, leaf, flags, Mode::empty()) else {
                    continue;
                };
                for entry in files.iter() {
                    let entry = entry.map_err(io::Error::from)?;
                    let name = entry.file_name().to_bytes();
                    if is_copy_of(name, unique) {
                        let name = std::ffi::OsStr::from_bytes(name);
                        return Ok(Some(self.root.join(&folder).join(leaf).join(name)));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// True if a file name is `unique` itself, or `unique:<info>` (a reader added flags).
fn is_copy_of(name: &[u8], unique: &str) -> bool {
    name.strip_prefix(unique.as_bytes())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b":"))
}

/// Creates a new file (never an existing one) with mode 0600.
fn open_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Writes `prefix` and `body` (CRLF -> LF) in pieces and fsyncs the file.
fn write_and_sync(file: File, prefix: &[u8], body: &mut dyn io::Read) -> io::Result<()> {
    let mut out = LfWriter::new(BufWriter::with_capacity(64 * 1024, file));
    out.push(prefix)?;
    let mut piece = vec![0u8; 64 * 1024];
    loop {
        let n = match body.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.push(&piece[..n])?;
    }
    let file = out.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lf(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        write_lf(&mut v, parts).unwrap();
        v
    }

    #[test]
    fn crlf_to_lf_conversion() {
        assert_eq!(lf(&[b"a\r\nb\r\n"]), b"a\nb\n");
        assert_eq!(lf(&[b"a\rb\nc\r"]), b"a\rb\nc\r");
        assert_eq!(lf(&[b"a\r", b"\nb"]), b"a\nb");
        assert_eq!(lf(&[b"a\r", b"", b"\nb"]), b"a\nb");
        assert_eq!(lf(&[b"a\r", b"b"]), b"a\rb");
        assert_eq!(lf(&[b"\r\r\n\n"]), b"\r\n\n");
        assert_eq!(lf(&[]), b"");
        assert_eq!(lf(&[b"", b"\r"]), b"\r");
    }

    #[test]
    fn unique_name_format() {
        assert_eq!(
            unique_name(1700000000, "00000000000000AB", 2, "mx.example"),
            "1700000000.Q00000000000000ABR2.mx.example"
        );
        assert_eq!(unique_name(1, "Q", 0, "a/b:c"), "1.QQR0.a\\057b\\072c");
        // Same inputs, same name.
        assert_eq!(unique_name(5, "X", 1, "h"), unique_name(5, "X", 1, "h"));
    }

    #[test]
    fn bad_names_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("Maildir"));
        for bad in ["", ".hidden", "a/b", "a:2,S", "a\0b"] {
            match md.deliver(bad, &[b"x"]) {
                Err(MaildirError::BadName(n)) => assert_eq!(n, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn delivers_bytes_with_lf() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("a/b/Maildir"));
        let name = unique_name(1700000000, "0000000000000001", 0, "host");
        let got = md
            .deliver(
                &name,
                &[
                    b"Received: x\r\n",
                    b"Subject: hi\r\n\r\nbody\r",
                    b"\nlone\rcr\n",
                ],
            )
            .unwrap();
        let path = md.root().join("new").join(&name);
        assert_eq!(got, Delivered::New(path.clone()));
        assert_eq!(
            fs::read(&path).unwrap(),
            b"Received: x\nSubject: hi\n\nbody\nlone\rcr\n"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for sub in ["", "tmp", "new", "cur"] {
            let m = fs::metadata(md.root().join(sub)).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{sub}");
        }
        // Nothing left behind in tmp/.
        assert_eq!(fs::read_dir(md.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn create_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("M"));
        md.create().unwrap();
        md.create().unwrap();
        assert!(md.root().join("cur").is_dir());
    }

    #[test]
    fn redelivery_in_new_is_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("M"));
        let first = md.deliver("u1", &[b"first\r\n"]).unwrap();
        let path = md.root().join("new/u1");
        assert_eq!(first, Delivered::New(path.clone()));
        let again = md.deliver("u1", &[b"second\r\n"]).unwrap();
        assert_eq!(again, Delivered::AlreadyThere(path.clone()));
        assert_eq!(fs::read(&path).unwrap(), b"first\n");
        assert_eq!(fs::read_dir(md.root().join("new")).unwrap().count(), 1);
    }

    #[test]
    fn moved_to_cur_is_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("M"));
        md.deliver("u2", &[b"mail\r\n"]).unwrap();
        let cur = md.root().join("cur/u2:2,S");
        fs::rename(md.root().join("new/u2"), &cur).unwrap();
        assert_eq!(
            md.deliver("u2", &[b"again"]).unwrap(),
            Delivered::AlreadyThere(cur.clone())
        );
        assert!(!md.root().join("new/u2").exists());
        assert_eq!(fs::read(&cur).unwrap(), b"mail\n");

        // A reader that dropped the info part entirely.
        let plain = md.root().join("cur/u3");
        fs::write(&plain, b"x").unwrap();
        assert_eq!(
            md.deliver("u3", &[b"again"]).unwrap(),
            Delivered::AlreadyThere(plain)
        );
        // A different name sharing a prefix is not a match.
        md.deliver("u", &[b"other"]).unwrap();
        assert!(md.root().join("new/u").exists());
    }

    #[test]
    fn filed_into_another_folder_is_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("M"));
        md.deliver("u4", &[b"mail\r\n"]).unwrap();
        md.deliver("u5", &[b"mail\r\n"]).unwrap();
        // The user filed them (Maildir++, as Dovecot and mutt do): flags added in one case,
        // left in the folder's new/ in the other.
        for sub in [".Archive/cur", ".Archive/new", ".Lists.rust/cur"] {
            fs::create_dir_all(md.root().join(sub)).unwrap();
        }
        let archived = md.root().join(".Archive/cur/u4:2,S");
        fs::rename(md.root().join("new/u4"), &archived).unwrap();
        let filed_unread = md.root().join(".Lists.rust/new/u5");
        fs::create_dir_all(filed_unread.parent().unwrap()).unwrap();
        fs::rename(md.root().join("new/u5"), &filed_unread).unwrap();
        assert_eq!(
            md.deliver("u4", &[b"again"]).unwrap(),
            Delivered::AlreadyThere(archived)
        );
        assert_eq!(
            md.deliver("u5", &[b"again"]).unwrap(),
            Delivered::AlreadyThere(filed_unread)
        );
        assert!(!md.root().join("new/u4").exists() && !md.root().join("new/u5").exists());
        // The cheap lookup of a first attempt does not look there.
        let mut body: &[u8] = b"x";
        assert!(matches!(
            md.deliver_from("u6", b"", &mut body, Lookup::NewOnly)
                .unwrap(),
            Delivered::New(_)
        ));
    }

    #[test]
    fn a_linked_folder_is_not_followed() {
        // A Maildir in a user's home: the user can put a symbolic link where a folder
        // would be. The lookup passes it over; it never reads what the link points at.
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir_all(elsewhere.join("cur")).unwrap();
        fs::write(elsewhere.join("cur/u7:2,S"), b"planted").unwrap();
        let md = Maildir::new(dir.path().join("M"));
        md.create().unwrap();
        std::os::unix::fs::symlink(&elsewhere, md.root().join(".Evil")).unwrap();
        fs::create_dir(md.root().join(".Linked")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("cur"), md.root().join(".Linked/cur")).unwrap();
        assert!(matches!(
            md.deliver("u7", &[b"mail"]).unwrap(),
            Delivered::New(_)
        ));
    }

    #[test]
    fn copies_are_the_name_or_the_name_with_info() {
        assert!(is_copy_of(b"u1", "u1"));
        assert!(is_copy_of(b"u1:2,S", "u1"));
        assert!(!is_copy_of(b"u10", "u1"));
        assert!(!is_copy_of(b"u", "u1"));
    }

    #[test]
    fn streamed_delivery_and_the_cheap_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("M"));
        let big: Vec<u8> = b"line\r\n".repeat(100_000);
        let got = md
            .deliver_from(
                "s1",
                b"Return-Path: <a@b>\r\n",
                &mut &big[..],
                Lookup::NewOnly,
            )
            .unwrap();
        let path = md.root().join("new/s1");
        assert_eq!(got, Delivered::New(path.clone()));
        let text = fs::read(&path).unwrap();
        assert_eq!(text.len(), 19 + 5 * 100_000);
        assert!(text.starts_with(b"Return-Path: <a@b>\nline\nline\n"));
        // A copy a reader moved to cur/ is found by a full lookup only.
        fs::rename(&path, md.root().join("cur/s1:2,S")).unwrap();
        assert!(matches!(
            md.deliver_from("s1", b"", &mut &b"x"[..], Lookup::Full)
                .unwrap(),
            Delivered::AlreadyThere(_)
        ));
    }

    #[test]
    fn stale_tmp_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("M"));
        md.create().unwrap();
        fs::write(md.root().join("tmp/u4"), b"half a message from a crash").unwrap();
        let got = md.deliver("u4", &[b"whole\r\n"]).unwrap();
        assert_eq!(got, Delivered::New(md.root().join("new/u4")));
        assert_eq!(fs::read(md.root().join("new/u4")).unwrap(), b"whole\n");
        assert!(!md.root().join("tmp/u4").exists());
    }

    #[test]
    fn root_that_is_a_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notadir");
        fs::write(&file, b"x").unwrap();
        for root in [file.clone(), file.join("sub")] {
            let md = Maildir::new(&root);
            match md.deliver("u5", &[b"x"]) {
                Err(MaildirError::Io { path, .. }) => {
                    assert!(path.starts_with(&file), "{path:?}")
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(md.create(), Err(MaildirError::Io { .. })));
        }
        assert_eq!(fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn subfolder_that_is_a_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("M"));
        fs::create_dir(md.root()).unwrap();
        fs::write(md.root().join("new"), b"x").unwrap();
        match md.deliver("u6", &[b"x"]) {
            Err(e @ MaildirError::Io { .. }) => assert!(e.to_string().contains("new")),
            other => panic!("{other:?}"),
        }
    }
}
