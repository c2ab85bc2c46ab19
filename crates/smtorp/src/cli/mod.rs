//! The command line's helpers: printing that survives a closed pipe, `smtorp sendmail`,
//! and the private-network demo.

#[cfg(feature = "demo")]
pub mod demo;
pub mod output;
pub mod sendmail;
