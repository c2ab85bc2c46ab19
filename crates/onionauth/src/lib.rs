//! XONIONAUTH: a sending server proves the v3 onion domain it sends from by signing the
//! receiving server's session nonce with that onion's identity key. Sans-IO: no sockets, no
//! files, no Tor; the SMTP engine and the delivery client call it.
#![doc = include_str!("../README.md")]

mod nonce;
mod onion;
mod session;
mod signer;
mod verify;

pub use nonce::{Nonce, NONCE_B64_LEN, NONCE_LEN};
pub use onion::{ClientOnion, Onion};
pub use session::{AuthResult, ServerAuth};
pub use signer::{
    signed_message, KeyError, Signer, CONTEXT, MESSAGE_LEN, ROLE_CLIENT, SIGNATURE_B64_LEN,
    SIGNATURE_LEN,
};
pub use verify::{
    ehlo_keyword, find_ehlo_nonce, parse_command_argument, parse_ehlo_keyword, verify, AuthError,
};

/// The EHLO keyword and the command verb.
pub const KEYWORD: &str = "XONIONAUTH";
