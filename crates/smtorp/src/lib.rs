//! The smtorp mail server as a library: the `smtorp` binary (main.rs) is a thin CLI over
//! [`cli`]. The folders say what the server is made of:
//!
//! - [`config`]: the configuration file and the data directory's layout;
//! - [`policy`]: who is local, the one recipient classifier, who may send what, where;
//! - [`intake`]: the one way into the queue (Received, privacy hygiene, bounces);
//! - [`listen`]: the SMTP listeners (TCP, submission with TLS and passwords) and their
//!   shared accept loop;
//! - [`onion`]: the onion service, our onion address and outbound connections;
//! - [`local`]: local submission (the maildrop);
//! - [`admin`]: the control socket and the queue and status commands;
//! - [`daemon`]: `smtorp run`, which wires all of it together.

pub(crate) mod admin;
pub mod cli;
pub(crate) mod config;
pub(crate) mod daemon;
pub(crate) mod intake;
pub(crate) mod listen;
pub(crate) mod local;
pub(crate) mod onion;
pub(crate) mod policy;
