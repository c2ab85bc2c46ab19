//! Printing for the CLI: like `println!`, but a closed pipe (`smtorp queue list | head`)
//! ends the program quietly with success, as it does for classic Unix tools, instead of
//! panicking.

use std::io::Write;

/// Writes one line to stdout; exits 0 if the reader has gone away.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// `println!` for the CLI (see [`line`]).
#[macro_export]
macro_rules! say {
    () => { $crate::cli::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::output::line(format_args!($($arg)*)) };
}
