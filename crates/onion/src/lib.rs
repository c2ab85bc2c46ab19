//! The onion transport: arti bootstrap, the SMTP onion service with a persistent identity,
//! inbound streams to virtual port 25 and outbound streams to `<name>.onion:25`.
#![doc = include_str!("../README.md")]

mod attempt;
mod config;
mod identity;
mod import;
mod transport;

pub use config::{client_config, OnionSettings};
pub use identity::identity_secret;
pub use import::import_ctor_key;
pub use transport::{
    onion_address, InboundStreams, OnionError, OnionTransport, ServiceStatus, FRESH_ATTEMPT_AFTER,
};

/// The stream type of both directions (tokio `AsyncRead + AsyncWrite`).
pub use arti_client::DataStream;
