//! The `smtorp` command line: it parses the arguments (clap), loads the configuration and
//! calls the module that does the work. Invoked as `sendmail` (a symlink) it behaves as
//! `smtorp sendmail`; as `mailq`, as `smtorp queue list`. The binary's `main` is only a
//! call to [`main`].

use crate::admin::{queue_cmd, Request};
use crate::cli::sendmail;
use crate::config::{self, layout};
use crate::listen::{passwd, tls};
use crate::{daemon, onion, policy, say};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// A mail server that sends and receives mail only between Tor onion addresses.
#[derive(Debug, Parser)]
#[command(name = "smtorp", version, about)]
struct Cli {
    /// The configuration file (default: $SMTORP_CONFIG, else /etc/smtorp/smtorp.toml if it
    /// exists, else built-in defaults).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory, its folders and the onion service key; print what was
    /// created and our onion address.
    Init,
    /// Print our onion address (creates the key if there is none yet).
    Address,
    /// Keep the onion address of a C tor onion service (e.g. from exim4-smtorp): import its
    /// hs_ed25519_secret_key (or the HiddenServiceDir holding it) before the first `init`.
    ImportKey {
        /// The C tor HiddenServiceDir, or its hs_ed25519_secret_key file.
        path: PathBuf,
    },
    /// Set the submission-port password of a local user (read from stdin: one line), or
    /// delete it with --delete.
    Passwd {
        /// Remove the user's password instead.
        #[arg(long)]
        delete: bool,
        /// A user in [local] users.
        user: String,
    },
    /// Run the mail server in the foreground (logs to stderr).
    Run,
    /// Check the configuration file and print the settings in force.
    CheckConfig,
    /// Submit a message read from stdin (sendmail-compatible: -t, -i, -oi, -f).
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail options and recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bring up a private Tor network, start two smtorp servers on it, send a message from
    /// one to the other and a reply, and show each step (needs Debian's `tor` installed).
    #[cfg(feature = "demo")]
    Demo {
        /// Keep the network's and servers' folders and logs here instead of a temporary
        /// folder.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Show the daemon's health: Tor, the onion service and its self-probe, the queue,
    /// deliveries since start and the last error per destination (works with the daemon
    /// running or stopped). Exits 0 healthy, 1 degraded, 2 down, 3 unknown (Nagios).
    Status {
        /// Print the facts and the verdict as one JSON object.
        #[arg(long)]
        json: bool,
        /// Deferred mail older than this makes the server "degraded" (e.g. 12h, 3d; 0:
        /// never).
        #[arg(long, value_name = "AGE", default_value = "1d", value_parser = humantime_serde::re::humantime::parse_duration)]
        deferred_age: std::time::Duration,
    },
    /// Inspect and manage the queue (works with the daemon running or stopped).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// The peers known to authenticate their mail (XONIONAUTH): their unauthenticated mail
    /// is refused (works with the daemon running or stopped).
    Peers {
        #[command(subcommand)]
        command: PeersCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PeersCommand {
    /// Forget a peer, so that its unauthenticated mail is accepted again (e.g. after it
    /// moved behind a server that does not sign).
    Forget {
        /// The peer's onion address.
        onion: String,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// One line per queued message: id, age, size, sender, each recipient with its state,
    /// attempts and last error.
    List,
    /// One message: its envelope, each recipient's state and last error, and its header.
    Show {
        /// The queue id (16 hex digits).
        id: String,
    },
    /// Make a message (or every message with --all) due now.
    Retry {
        /// The queue id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every queued message.
        #[arg(long)]
        all: bool,
    },
    /// Remove a message from the queue; its pending recipients are bounced to the sender
    /// unless --silent.
    Delete {
        /// The queue id.
        id: String,
        /// Do not tell the sender.
        #[arg(long)]
        silent: bool,
    },
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn load(cli_path: Option<&std::path::Path>) -> anyhow::Result<config::Settings> {
    let path = config::resolve_path(cli_path);
    config::load(path.as_deref())
}

fn sendmail_main(config_path: Option<PathBuf>, args: &[String]) -> ExitCode {
    let settings = match load(config_path.as_deref()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("sendmail: {e:#}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    let onion = layout::onion_address(&settings);
    let directory = policy::Directory::new(settings.clone(), onion.as_deref());
    let stdin = std::io::stdin().lock();
    match sendmail::run(
        args,
        &directory,
        &settings.submit_socket(),
        &settings.maildrop_dir(),
        stdin,
    ) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sendmail: {}", e.message);
            ExitCode::from(e.code as u8)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init => {
            let settings = load(cli.config.as_deref())?;
            let created = layout::create(&settings)?;
            // Opening the queue once creates the store.
            drop(daemon::open_queue(&settings)?);
            if created.is_empty() {
                say!(
                    "{} is ready; nothing to create",
                    settings.config.data_dir.display()
                );
            }
            for path in created {
                say!("created {}", path.display());
            }
            if settings.config.onion.enabled {
                let address = onion::ensure_address(&settings)?;
                say!("onion address: {address}");
                say!(
                    "the onion service key is in {}: back it up to keep this address",
                    settings.arti_state_dir().join("keystore").display()
                );
            }
            tls::init(&settings)
        }
        Command::Passwd { delete, user } => {
            let settings = load(cli.config.as_deref())?;
            passwd::command(&settings, &user, delete)
        }
        Command::ImportKey { path } => {
            let settings = load(cli.config.as_deref())?;
            layout::create(&settings)?;
            let address = onion::import_key(&settings, &path)?;
            say!("imported; onion address: {address}");
            Ok(())
        }
        Command::Address => {
            let settings = load(cli.config.as_deref())?;
            match layout::onion_address(&settings) {
                Some(address) => say!("{address}"),
                None if settings.config.onion.enabled => {
                    layout::create(&settings)?;
                    say!("{}", onion::ensure_address(&settings)?);
                }
                None => anyhow::bail!(
                    "the onion service is off ([onion] enabled = false) and has no key yet"
                ),
            }
            Ok(())
        }
        Command::Run => {
            let settings = load(cli.config.as_deref())?;
            init_logging(&settings.config.log.level);
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(daemon::run(settings))
        }
        Command::CheckConfig => {
            let path = config::resolve_path(cli.config.as_deref());
            let settings = config::load(path.as_deref())?;
            match &path {
                Some(p) => say!("{}: OK", p.display()),
                None => say!("no configuration file: built-in defaults: OK"),
            }
            say!("data_dir = {}", settings.config.data_dir.display());
            say!("local domains = {:?}", settings.local_domains());
            say!("local users = {:?}", settings.config.local.users);
            say!("smtp listen = {:?}", settings.smtp_listen);
            tls::describe(&settings);
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Demo { keep } => {
            if std::env::var_os("RUST_LOG").is_some() {
                init_logging("warn");
            }
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(crate::cli::demo::run(keep))
        }
        Command::Sendmail { .. } => unreachable_sendmail(),
        Command::Queue { command } => {
            let settings = Arc::new(load(cli.config.as_deref())?);
            let request = match command {
                QueueCommand::List => Request::QueueList,
                QueueCommand::Show { id } => {
                    queue_cmd::check_id(&id)?;
                    Request::QueueShow { id }
                }
                QueueCommand::Retry { id, .. } => {
                    if let Some(id) = &id {
                        queue_cmd::check_id(id)?;
                    }
                    Request::QueueRetry { id }
                }
                QueueCommand::Delete { id, silent } => {
                    queue_cmd::check_id(&id)?;
                    Request::QueueDelete { id, silent }
                }
            };
            queue_cmd::print(queue_cmd::run(&settings, request)?)
        }
        Command::Peers {
            command: PeersCommand::Forget { onion },
        } => {
            let settings = Arc::new(load(cli.config.as_deref())?);
            queue_cmd::print(queue_cmd::run(&settings, Request::ForgetPeer { onion })?)
        }
        Command::Status { .. } => anyhow::bail!("internal: status is dispatched before"),
    }
}

/// `smtorp status`: the report and its verdict as the exit code (0 healthy, 1 degraded, 2
/// down; 3 unknown when there is no report at all, e.g. a broken configuration).
fn status_main(
    config_path: Option<&std::path::Path>,
    json: bool,
    deferred_age: std::time::Duration,
) -> ExitCode {
    use crate::admin::status::{evaluate, lines, StatusJson, Thresholds};
    let report = load(config_path)
        .map(Arc::new)
        .and_then(|settings| queue_cmd::status(&settings));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smtorp: {e:#}");
            return ExitCode::from(3);
        }
    };
    let verdict = evaluate(&report, Thresholds { deferred_age });
    if json {
        let out = StatusJson {
            report: &report,
            health: &verdict,
        };
        match serde_json::to_string_pretty(&out) {
            Ok(text) => say!("{text}"),
            Err(e) => {
                eprintln!("smtorp: {e}");
                return ExitCode::from(3);
            }
        }
    } else {
        for line in lines(&report, &verdict, crate::intake::headers::unix_now()) {
            say!("{line}");
        }
    }
    ExitCode::from(verdict.code)
}

/// `Command::Sendmail` is dispatched in `main` before `real_main` (it has its own exit codes).
fn unreachable_sendmail() -> anyhow::Result<()> {
    anyhow::bail!("internal: sendmail is dispatched before")
}

/// The whole `smtorp` command (and its `sendmail` and `mailq` names).
pub fn main() -> ExitCode {
    // One TLS stack for the whole program (the submission port and arti): rustls with ring.
    // An error means one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let argv: Vec<String> = std::env::args().collect();
    let program = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    if program == "sendmail" {
        return sendmail_main(None, &argv[1..]);
    }
    let cli = if program == "mailq" {
        Cli {
            config: None,
            command: Command::Queue {
                command: QueueCommand::List,
            },
        }
    } else {
        Cli::parse()
    };
    if let Command::Sendmail { args } = &cli.command {
        return sendmail_main(cli.config.clone(), args);
    }
    if let Command::Status { json, deferred_age } = &cli.command {
        return status_main(cli.config.as_deref(), *json, *deferred_age);
    }
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtorp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and long option of `command` (named `path`) that `page` lacks.
    fn undescribed(command: &clap::Command, path: &str, page: &str) -> Vec<String> {
        let mut missing = Vec::new();
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                if !page.contains(&format!("--{long}")) {
                    missing.push(format!("{path} --{long}").trim().to_owned());
                }
            }
        }
        for sub in command.get_subcommands() {
            let name = format!("{path} {}", sub.get_name()).trim().to_owned();
            if !page.contains(&name) {
                missing.push(name.clone());
            }
            missing.extend(undescribed(sub, &name, page));
        }
        missing
    }

    /// config/smtorp.8, the manual page the package installs, describes every command and
    /// every long option of the command line.
    #[test]
    fn the_manual_page_describes_every_command_and_option() {
        let page = include_str!("../../../../config/smtorp.8").replace("\\-", "-");
        let missing = undescribed(&Cli::command(), "", &page);
        assert!(missing.is_empty(), "config/smtorp.8 lacks {missing:?}");
    }
}
