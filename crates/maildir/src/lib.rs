//! Writes messages into Maildir folders (tmp/ -> new/, fsync of file and directory).
//!
//! CONTRACT (the delivery crate is written against exactly this API).
#![doc = include_str!("../README.md")]

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
pub fn unique_name(arrival_secs: u64, queue_id: &str, recipient_index: usize, host: &str) -> String {
    let _ = (arrival_secs, queue_id, recipient_index, host);
    unimplemented!()
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
        unimplemented!()
    }

    /// Delivers the concatenation of `parts` under `unique` (creating the folders first if
    /// needed): write tmp/<unique>, fsync it, rename to new/<unique>, fsync new/. CRLF line
    /// endings are written as LF (what mutt, neomutt and Dovecot expect in Maildir files).
    /// If new/<unique> or cur/<unique>:2,<flags> already exists, returns
    /// [`Delivered::AlreadyThere`] and writes nothing.
    pub fn deliver(&self, unique: &str, parts: &[&[u8]]) -> Result<Delivered, MaildirError> {
        let _ = (unique, parts);
        unimplemented!()
    }
}
