//! The onion transport: arti bootstrap, the SMTP onion service with a persistent identity and
//! its defences, inbound streams to virtual port 25, outbound streams to `<name>.onion:25`,
//! and the self-probe with its repairs.
#![doc = include_str!("../README.md")]

mod attempt;
mod config;
mod identity;
mod import;
mod probe;
mod rotate;
mod transport;

pub use config::{client_config, service_config, Defences, OnionSettings};
pub use identity::identity_secret;
pub use import::import_ctor_key;
pub use probe::{ProbeError, Probed};
pub use transport::{
    onion_address, InboundStreams, OnionError, OnionTransport, Rebuilt, ServiceStatus,
    FRESH_ATTEMPT_AFTER,
};

/// The stream type of both directions (tokio `AsyncRead + AsyncWrite`).
pub use arti_client::DataStream;
