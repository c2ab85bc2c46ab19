//! Delivery: the scheduler that reads due messages from the queue and hands their
//! recipients, grouped by route, to their sinks (local Maildirs, remote onion SMTP), records
//! per-recipient results and reschedules, expires and bounces what is left.
#![doc = include_str!("../README.md")]

mod client_auth;
mod local;
mod remote;
mod scheduler;
mod sink;

pub use client_auth::ClientAuth;
pub use local::{deliver_to_maildir, MaildirSink};
pub use remote::{
    BoxedStream, ConnectError, ConnectFuture, Connector, PeerStream, RemoteDelivery, IDLE_TTL,
};
pub use scheduler::{
    BounceFuture, Bouncer, Clock, DestinationReport, FailedRecipient, FailureReport, Parts,
    Scheduler, SchedulerConfig, SchedulerHandle, Stats, SystemClock,
};
pub use sink::{Content, Job, Outcome, Reply, Sink, SinkFuture};

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
    /// Nowhere: fails permanently with this reply.
    Unroutable(Reply),
}

/// Decides where each recipient goes (the binary's directory of local users).
pub trait Router: Send + Sync + 'static {
    /// The route of one envelope recipient address.
    fn route(&self, recipient: &str) -> Route;
}
