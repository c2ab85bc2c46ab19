//! The error type of the library: everything that can go wrong while bringing a private
//! Tor network up, waiting for it, inspecting it or taking it down.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TornetError {
    /// A file system or socket operation failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done (with the path when there is one).
        context: String,
        /// The underlying error (in the message, so not also a `source()`).
        error: std::io::Error,
    },

    /// A required program (`tor`, `tor-gencert`, `kill`) could not be run at all.
    #[error("cannot run `{program}` ({error}); install Debian's `tor` package (`apt-get install -y tor`)")]
    NotInstalled {
        /// The program name.
        program: String,
        /// Why it could not be started.
        error: std::io::Error,
    },

    /// A helper command (key generation) ran but failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        /// The command line, for the reader.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its stdout and stderr.
        output: String,
    },

    /// A tor daemon did not start (its exit code was not 0).
    #[error("tor node `{node}` failed to start ({status}); tail of {log}:\n{log_tail}\n{output}")]
    StartFailed {
        /// The node's nickname.
        node: String,
        /// tor's exit status.
        status: String,
        /// The node's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
        /// What tor printed before it daemonized.
        output: String,
    },

    /// A file written by tor (a fingerprint, a certificate) did not have the expected shape.
    #[error("cannot parse {what} in {path}")]
    Parse {
        /// What was expected.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },

    /// The network did not become ready in time.
    #[error("timed out after {waited:?} waiting for {what}; last consensus: {last}\n{log_tails}")]
    Timeout {
        /// What we were waiting for.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last consensus summary seen (or why none could be fetched).
        last: String,
        /// Tails of the authorities' (and the client's) logs.
        log_tails: String,
    },

    /// `up` was called on a directory whose network is still running.
    #[error("a network is still running in {dir} (pids {pids:?}); run `tornet down {dir}` first", dir = .dir.display())]
    AlreadyRunning {
        /// The network directory.
        dir: PathBuf,
        /// The live tor processes found there.
        pids: Vec<u32>,
    },

    /// No set of free local ports could be found.
    #[error("could not find {0} free TCP ports on 127.0.0.1")]
    NoFreePorts(usize),

    /// The directory holds no network description (`network.toml`).
    #[error("{} holds no tornet network (no network.toml): {error}", .dir.display())]
    NoNetwork {
        /// The directory.
        dir: PathBuf,
        /// Why network.toml could not be read.
        error: std::io::Error,
    },

    /// network.toml could not be parsed or written.
    #[error("bad network.toml in {}: {message}", .dir.display())]
    BadNetworkFile {
        /// The directory.
        dir: PathBuf,
        /// The TOML error.
        message: String,
    },

    /// Some processes survived SIGKILL (should not happen).
    #[error("tor processes {0:?} are still alive after SIGTERM and SIGKILL")]
    StillRunning(Vec<u32>),

    /// A fetch from a directory port failed.
    #[error("directory fetch from 127.0.0.1:{port} failed: {message}")]
    Fetch {
        /// The DirPort.
        port: u16,
        /// What went wrong.
        message: String,
    },
}

impl TornetError {
    /// Wraps an I/O error with a context string.
    pub(crate) fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        TornetError::Io {
            context: context.into(),
            error,
        }
    }
}
