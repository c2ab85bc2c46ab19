//! The command line: the commands (`command`), printing that survives a closed pipe,
//! `smtorp sendmail`, and the private-network demo.

mod command;
#[cfg(feature = "demo")]
pub(crate) mod demo;
pub(crate) mod output;
pub(crate) mod sendmail;

pub use command::main;
