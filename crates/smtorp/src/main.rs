//! The `smtorp` binary: a mail server for Tor onion addresses (see the crate's library,
//! `smtorp::cli`, for the command line).

fn main() -> std::process::ExitCode {
    smtorp::cli::main()
}
