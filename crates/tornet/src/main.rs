//! `tornet`: bring a private Tor network up on 127.0.0.1, inspect it, take it down.
//!
//! ```text
//! tornet up DIR [--timeout SECS]   # keys, torrcs, daemons; waits for the consensus
//! tornet status DIR
//! tornet freeze DIR | thaw DIR     # SIGSTOP / SIGCONT every daemon (a network outage)
//! tornet down DIR
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use smtorp_tornet::{down_dir, freeze_dir, status, Options, TorNet};

/// Private Tor network (3 authorities, 5 relays, 1 C tor client) on 127.0.0.1 for tests.
#[derive(Debug, Parser)]
#[command(name = "tornet", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Generate keys and torrcs in DIR, start the daemons, wait for a usable consensus, and
    /// write DIR/arti.toml and DIR/socks_port. The daemons keep running after exit.
    Up {
        /// The network directory (created if needed).
        dir: PathBuf,
        /// Seconds to wait for the consensus and the client's bootstrap.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Stop every daemon of the network in DIR (SIGTERM, then SIGKILL) and wait until gone.
    Down {
        /// The network directory.
        dir: PathBuf,
    },
    /// Freeze every daemon of the network in DIR (SIGSTOP): an outage of the whole network.
    Freeze {
        /// The network directory.
        dir: PathBuf,
    },
    /// Resume the daemons of a frozen network (SIGCONT).
    Thaw {
        /// The network directory.
        dir: PathBuf,
    },
    /// Show the nodes, their processes and the consensus of the network in DIR.
    Status {
        /// The network directory.
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();

    match Cli::parse().command {
        Cmd::Up { dir, timeout } => {
            let t0 = Instant::now();
            let opts = Options {
                timeout: Duration::from_secs(timeout),
            };
            let net = TorNet::up(&dir, opts)
                .await
                .with_context(|| format!("bringing up the network in {}", dir.display()))?;
            println!(
                "network up in {:.1} s ({})",
                t0.elapsed().as_secs_f64(),
                net.timings()
            );
            println!("arti config: {}", net.arti_toml_path().display());
            println!("C tor SOCKS: 127.0.0.1:{}", net.socks_port());
            println!("stop with:   tornet down {}", net.dir().display());
            net.detach();
        }
        Cmd::Down { dir } => {
            let t0 = Instant::now();
            let report = down_dir(&dir)
                .with_context(|| format!("stopping the network in {}", dir.display()))?;
            println!(
                "stopped {} tor daemons in {:.1} s{}",
                report.stopped.len(),
                t0.elapsed().as_secs_f64(),
                if report.killed.is_empty() {
                    String::new()
                } else {
                    format!(" (SIGKILL needed for {})", report.killed.join(", "))
                }
            );
        }
        Cmd::Freeze { dir } => {
            let nodes = freeze_dir(&dir, true)
                .with_context(|| format!("freezing the network in {}", dir.display()))?;
            println!("froze {} tor daemons (SIGSTOP)", nodes.len());
        }
        Cmd::Thaw { dir } => {
            let nodes = freeze_dir(&dir, false)
                .with_context(|| format!("thawing the network in {}", dir.display()))?;
            println!("thawed {} tor daemons (SIGCONT)", nodes.len());
        }
        Cmd::Status { dir } => {
            let st = status(&dir)
                .await
                .with_context(|| format!("reading the network in {}", dir.display()))?;
            println!("{st}");
        }
    }
    Ok(())
}
