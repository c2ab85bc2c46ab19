//! The SMTP session engine: a sans-IO state machine fed bytes and returning replies,
//! address validation (including v3 onion addresses), and a thin async driver that runs a
//! session over any `AsyncRead + AsyncWrite` stream (TCP, an arti onion stream, a test pipe).
//!
//! CONTRACT: the binary is written against exactly the public items below.
#![doc = include_str!("../README.md")]

pub mod address;
pub mod server;
pub mod session;
pub mod slots;
#[cfg(test)]
mod test_support;

pub use address::{Address, AddressError};
pub use server::{serve, serve_submission, Handler, MaybeTls};
pub use session::{
    AuthResult, Credentials, Onion, Policy, SenderAuthMode, SenderContext, Session, SessionConfig,
    SessionKind, Step, Transaction,
};
pub use slots::{Admission, Queued, Slot, Slots};
/// The reply type ([`smtorp_reply::Reply`]), shared with the queue and delivery.
pub use smtorp_reply as reply;
pub use smtorp_reply::Reply;
