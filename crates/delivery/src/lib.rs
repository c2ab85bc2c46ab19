//! Delivery: the scheduler that reads due messages from the queue and hands each recipient
//! to its deliverer (a local Maildir today; remote onion SMTP plugs in beside it), records
//! per-recipient results and reschedules what must be retried.
#![doc = include_str!("../README.md")]

mod local;
mod remote;
mod scheduler;
mod sink;

pub use local::{deliver_to_maildir, MaildirSink};
pub use remote::{
    BoxedStream, ConnectError, ConnectFuture, Connector, PeerStream, RemoteDelivery, IDLE_TTL,
};
pub use scheduler::{
    BackoffReset, BounceFuture, Bouncer, FailedRecipient, FailureReport, Scheduler,
    SchedulerConfig, Stats,
};
pub use sink::{Job, Outcome, Sink, SinkFuture, SmtpReply};

use std::path::PathBuf;

/// Where a recipient's mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A local user's Maildir (aliases already resolved).
    Local {
        /// The local user.
        user: String,
        /// Their Maildir folder.
        maildir: PathBuf,
    },
    /// Another onion domain.
    Remote {
        /// The lower-case `<name>.onion` domain.
        domain: String,
    },
    /// Nowhere: fails permanently with this text (an SMTP-style reply text).
    Unroutable(String),
}

/// Decides where each recipient goes (the binary's directory of local users).
pub trait Router: Send + Sync + 'static {
    /// The route of one envelope recipient address.
    fn route(&self, recipient: &str) -> Route;
}
