//! The smtorp mail server as a library: configuration, the intake into the queue, the
//! onion-side policy, listeners, the maildrop, `sendmail` and the daemon's wiring. The
//! `smtorp` binary (main.rs) is a thin CLI over these modules.

pub mod admin;
pub mod bounce;
pub mod config;
pub mod connector;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod directory;
pub mod headers;
pub mod intake;
pub mod layout;
pub mod listener;
pub mod maildrop;
pub mod onion;
pub mod output;
pub mod passwd;
pub mod privacy;
pub mod queue_cmd;
pub mod sendmail;
pub mod submission;
pub mod tls;
