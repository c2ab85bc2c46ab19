#![doc = include_str!("../README.md")]

pub mod arti;
pub mod consensus;
mod error;
pub mod keys;
pub mod layout;
pub mod ports;
pub mod process;
pub mod torrc;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use consensus::ConsensusSummary;
pub use error::TornetError;
pub use layout::{Layout, Node, Role};
pub use process::TorProcess;

use layout::{CLIENT_NAME, N_AUTHORITIES, N_CONSENSUS_RELAYS, N_RELAYS};

/// File name of the arti configuration fragment in the network directory.
pub const ARTI_TOML: &str = "arti.toml";
/// File name of the C tor client's SOCKS port (decimal text) in the network directory.
pub const SOCKS_PORT_FILE: &str = "socks_port";
/// File name of the network description in the network directory.
pub const NETWORK_TOML: &str = "network.toml";
/// File name of the empty defaults torrc every node is started with.
const DEFAULTS_TORRC: &str = "torrc-defaults";
/// How long `down` waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Options of [`TorNet::up`].
#[derive(Debug, Clone)]
pub struct Options {
    /// How long to wait for the consensus (8 relays, all HSDir) and the client's bootstrap,
    /// counted from the start of `up`. Default 120 s.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(120),
        }
    }
}

/// When each stage of [`TorNet::up`] finished, counted from its start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Keys and torrcs written.
    pub keys: Duration,
    /// Every relay daemon started (ports open).
    pub started: Duration,
    /// The consensus lists every relay with HSDir.
    pub consensus: Duration,
    /// The C tor client logged "Bootstrapped 100%"; `up` returned.
    pub ready: Duration,
}

impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "keys {:.1} s, relays started {:.1} s, consensus {:.1} s, client bootstrapped {:.1} s",
            self.keys.as_secs_f64(),
            self.started.as_secs_f64(),
            self.consensus.as_secs_f64(),
            self.ready.as_secs_f64()
        )
    }
}

/// A running private Tor network: 3 authorities, 5 relays and a C tor client, on 127.0.0.1.
///
/// Dropping it stops every daemon ([`TorNet::down`]), so a panicking test still tears the
/// network down.
#[derive(Debug)]
pub struct TorNet {
    /// The network directory (canonical).
    dir: PathBuf,
    /// Nodes, ports and identities.
    layout: Layout,
    /// The daemons started; emptied by `down`.
    procs: Mutex<Vec<TorProcess>>,
    /// The arti configuration fragment.
    arti_toml: String,
    /// Stage timings of `up`.
    timings: Timings,
    /// Set by [`TorNet::detach`]: drop leaves the daemons running.
    detached: bool,
}

/// Waits for every thread of a fan-out; a thread that panicked counts as an error.
fn join_all<T>(
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<T, TornetError>>>,
    what: &str,
) -> Vec<Result<T, TornetError>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(TornetError::io(what, std::io::Error::other("panicked"))))
        })
        .collect()
}

/// Creates a directory (and its parents) and sets it to mode 0700, as tor requires of a
/// DataDirectory.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), TornetError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path)
        .map_err(|e| TornetError::io(format!("creating {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| TornetError::io(format!("chmod 0700 {}", path.display()), e))
}

/// Writes a file through a temporary name and a rename, so readers never see half of it.
fn write_atomic(path: &Path, text: &str) -> Result<(), TornetError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| TornetError::io(format!("writing {}", path.display()), e))
}

/// The tor processes recorded in `dir`: every sub-directory with a `tor.pid` (alive or not).
pub fn processes_in(dir: &Path) -> Result<Vec<TorProcess>, TornetError> {
    let dir = dir
        .canonicalize()
        .map_err(|e| TornetError::io(format!("opening {}", dir.display()), e))?;
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| TornetError::io(format!("listing {}", dir.display()), e))?;
    let mut procs = Vec::new();
    for entry in entries.flatten() {
        let node_dir = entry.path();
        if let Some(pid) = process::read_pid(&node_dir.join("tor.pid")) {
            procs.push(TorProcess {
                name: entry.file_name().to_string_lossy().into_owned(),
                pid,
                torrc: node_dir.join("torrc"),
            });
        }
    }
    procs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(procs)
}

/// What [`down_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Nodes whose daemon was running and was stopped.
    pub stopped: Vec<String>,
    /// Of those, the ones that needed SIGKILL.
    pub killed: Vec<String>,
}

/// Stops every tor daemon recorded in `dir` (by the PIDs of the PidFiles): SIGTERM, then
/// SIGKILL after 3 s; returns once they are gone. Idempotent.
pub fn down_dir(dir: &Path) -> Result<DownReport, TornetError> {
    stop_procs(processes_in(dir)?)
}

/// Freezes (SIGSTOP) every tor daemon recorded in `dir`, or thaws it (SIGCONT) with
/// `frozen = false`: the whole network goes silent, as when the machine loses its
/// connection, and comes back where it was. Returns the nodes signalled.
pub fn freeze_dir(dir: &Path, frozen: bool) -> Result<Vec<String>, TornetError> {
    process::freeze(&processes_in(dir)?, frozen)
}

/// Stops the live ones of `procs`.
fn stop_procs(procs: Vec<TorProcess>) -> Result<DownReport, TornetError> {
    let alive: Vec<TorProcess> = procs.into_iter().filter(TorProcess::is_alive).collect();
    let killed = process::stop(&alive, TERM_GRACE)?;
    Ok(DownReport {
        stopped: alive.into_iter().map(|p| p.name).collect(),
        killed,
    })
}

/// Reads `DIR/network.toml`.
pub fn read_layout(dir: &Path) -> Result<Layout, TornetError> {
    let text = std::fs::read_to_string(dir.join(NETWORK_TOML)).map_err(|error| {
        TornetError::NoNetwork {
            dir: dir.to_owned(),
            error,
        }
    })?;
    toml::from_str(&text).map_err(|e| TornetError::BadNetworkFile {
        dir: dir.to_owned(),
        message: e.to_string(),
    })
}

/// True once the client's log says "Bootstrapped 100%".
fn client_bootstrapped(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(CLIENT_NAME).join("notice.log"))
        .is_ok_and(|log| log.contains("Bootstrapped 100%"))
}

/// Tails of the authorities' and the client's logs, for error messages.
fn log_tails(dir: &Path, layout: &Layout) -> String {
    let mut out = String::new();
    let names = layout
        .authorities
        .iter()
        .map(|a| a.name.as_str())
        .chain(std::iter::once(CLIENT_NAME));
    for name in names {
        let log = dir.join(name).join("notice.log");
        out.push_str(&format!(
            "--- {} ---\n{}\n",
            log.display(),
            process::tail(&log, 12)
        ));
    }
    out
}

/// Fetches the consensus summary from the first authority that answers.
async fn fetch_any(layout: &Layout) -> Result<ConsensusSummary, TornetError> {
    let mut last = None;
    for a in &layout.authorities {
        match consensus::fetch_summary(a.dir_port).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(TornetError::Fetch {
        port: 0,
        message: "the network has no authorities".into(),
    }))
}

/// Generates keys and torrcs, then starts every daemon (blocking; run off the runtime).
fn setup(dir: &Path, t0: Instant) -> Result<(Layout, Vec<TorProcess>, Duration), TornetError> {
    let defaults = dir.join(DEFAULTS_TORRC);
    std::fs::write(&defaults, "")
        .map_err(|e| TornetError::io(format!("writing {}", defaults.display()), e))?;

    let ports = ports::pick_free_ports(2 * N_CONSENSUS_RELAYS + 1)?;
    let mut specs: Vec<(String, Role, u16, u16)> = Vec::new();
    for i in 0..N_CONSENSUS_RELAYS {
        let (name, role) = if i < N_AUTHORITIES {
            (layout::authority_name(i), Role::Authority)
        } else {
            (layout::relay_name(i - N_AUTHORITIES), Role::Relay)
        };
        specs.push((name, role, ports[2 * i], ports[2 * i + 1]));
    }
    let socks_port = ports[2 * N_CONSENSUS_RELAYS];

    // Keys, one thread per node (tor-gencert and tor take ~0.1-0.5 s each).
    let nodes: Vec<Result<Node, TornetError>> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|(name, role, or_port, dir_port)| {
                let defaults = &defaults;
                s.spawn(move || -> Result<Node, TornetError> {
                    let node_dir = dir.join(name);
                    create_private_dir(&node_dir)?;
                    let v3ident = if *role == Role::Authority {
                        Some(keys::generate_authority_keys(&node_dir, *dir_port)?)
                    } else {
                        None
                    };
                    let (rsa_fingerprint, ed_identity) =
                        keys::generate_relay_identity(&node_dir, name, *or_port, defaults)?;
                    Ok(Node {
                        name: name.clone(),
                        role: *role,
                        or_port: *or_port,
                        dir_port: *dir_port,
                        rsa_fingerprint,
                        ed_identity,
                        v3ident,
                    })
                })
            })
            .collect();
        join_all(handles, "key generation thread")
    });
    let nodes: Vec<Node> = nodes.into_iter().collect::<Result<_, _>>()?;
    let (authorities, relays): (Vec<Node>, Vec<Node>) =
        nodes.into_iter().partition(|n| n.role == Role::Authority);
    let layout = Layout {
        authorities,
        relays,
        socks_port,
    };
    debug_assert_eq!(layout.relays.len(), N_RELAYS);

    // torrcs and the network description (written first, so `down` works if a start fails).
    for node in layout.nodes() {
        let node_dir = dir.join(&node.name);
        let text = torrc::relay_torrc(&node_dir, node, &layout.authorities);
        write_atomic(&node_dir.join("torrc"), &text)?;
    }
    let client_dir = dir.join(CLIENT_NAME);
    create_private_dir(&client_dir)?;
    write_atomic(
        &client_dir.join("torrc"),
        &torrc::client_torrc(&client_dir, socks_port, &layout.authorities),
    )?;
    let network = toml::to_string_pretty(&layout).map_err(|e| TornetError::BadNetworkFile {
        dir: dir.to_owned(),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join(NETWORK_TOML), &network)?;
    let keys_done = t0.elapsed();
    tracing::info!(
        "keys and torrcs for {} relays and the client written in {:.1} s",
        N_CONSENSUS_RELAYS,
        keys_done.as_secs_f64()
    );

    // Start the relays in parallel; on any failure stop the others. The client starts once
    // the consensus is ready: started earlier, its download backoff adds ~10 s.
    let names: Vec<String> = layout.nodes().map(|n| n.name.clone()).collect();
    let started: Vec<Result<TorProcess, TornetError>> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let defaults = &defaults;
                s.spawn(move || {
                    let node_dir = dir.join(name);
                    process::start_tor(name, &node_dir, &node_dir.join("torrc"), defaults)
                })
            })
            .collect();
        join_all(handles, "tor start thread")
    });
    let mut procs = Vec::new();
    let mut first_err = None;
    for r in started {
        match r {
            Ok(p) => procs.push(p),
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_err {
        let _ = stop_procs(procs);
        return Err(e);
    }
    Ok((layout, procs, keys_done))
}

impl TorNet {
    /// Brings a private network up in `dir` (created if needed) and waits until it is usable:
    /// the consensus lists all 8 relays with HSDir and the C tor client has bootstrapped.
    /// Then writes `dir/arti.toml` and `dir/socks_port`.
    ///
    /// Fails with [`TornetError::AlreadyRunning`] if daemons of an earlier `up` still run in
    /// `dir`; leftovers of a stopped network there are replaced. On any error, every daemon
    /// already started is stopped. (If the future is dropped while the relays are being
    /// started, before `up` holds them, [`down_dir`] stops them: their PidFiles are in `dir`.)
    pub async fn up(dir: &Path, opts: Options) -> Result<TorNet, TornetError> {
        let t0 = Instant::now();
        create_private_dir(dir)?;
        let dir = dir
            .canonicalize()
            .map_err(|e| TornetError::io(format!("opening {}", dir.display()), e))?;
        let alive: Vec<u32> = processes_in(&dir)?
            .into_iter()
            .filter(TorProcess::is_alive)
            .map(|p| p.pid)
            .collect();
        if !alive.is_empty() {
            return Err(TornetError::AlreadyRunning { dir, pids: alive });
        }
        for name in layout::all_process_names() {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_dir_all(&p)
                    .map_err(|e| TornetError::io(format!("removing {}", p.display()), e))?;
            }
        }
        for f in [ARTI_TOML, SOCKS_PORT_FILE, NETWORK_TOML] {
            let _ = std::fs::remove_file(dir.join(f));
        }

        tracing::info!("bringing up a private Tor network in {}", dir.display());
        let setup_dir = dir.clone();
        let (layout, procs, keys_done) = tokio::task::spawn_blocking(move || setup(&setup_dir, t0))
            .await
            .map_err(|e| TornetError::io("setup task", std::io::Error::other(e)))??;
        let started = t0.elapsed();
        tracing::info!(
            "{} relay daemons started in {:.1} s (authorities' DirPorts {:?})",
            procs.len(),
            started.as_secs_f64(),
            layout
                .authorities
                .iter()
                .map(|a| a.dir_port)
                .collect::<Vec<_>>(),
        );
        let arti_toml = arti::arti_toml(&layout);
        // From here on, dropping `net` (error or panic) stops the daemons.
        let mut net = TorNet {
            dir,
            layout,
            procs: Mutex::new(procs),
            arti_toml,
            timings: Timings {
                keys: keys_done,
                started,
                ..Timings::default()
            },
            detached: false,
        };

        let deadline = t0 + opts.timeout;
        let mut last: Result<ConsensusSummary, String> = Err("none fetched yet".into());
        let mut consensus_at = None;
        let mut client_started = false;
        loop {
            if consensus_at.is_none() {
                let now = fetch_any(&net.layout).await.map_err(|e| e.to_string());
                if now != last {
                    match &now {
                        Ok(s) => tracing::info!(
                            "consensus after {:.1} s: {s}",
                            t0.elapsed().as_secs_f64()
                        ),
                        Err(e) => tracing::debug!("no consensus yet: {e}"),
                    }
                }
                last = now;
                if matches!(&last, Ok(s) if s.is_ready(N_CONSENSUS_RELAYS)) {
                    let t = t0.elapsed();
                    tracing::info!(
                        "consensus lists all {N_CONSENSUS_RELAYS} relays with HSDir after {:.1} s",
                        t.as_secs_f64()
                    );
                    consensus_at = Some(t);
                }
            }
            if consensus_at.is_some() && !client_started {
                let dir = net.dir.clone();
                let client = tokio::task::spawn_blocking(move || {
                    let node_dir = dir.join(CLIENT_NAME);
                    process::start_tor(
                        CLIENT_NAME,
                        &node_dir,
                        &node_dir.join("torrc"),
                        &dir.join(DEFAULTS_TORRC),
                    )
                })
                .await
                .map_err(|e| TornetError::io("client start task", std::io::Error::other(e)))??;
                net.procs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(client);
                client_started = true;
            }
            if let Some(consensus) = consensus_at {
                if client_bootstrapped(&net.dir) {
                    net.timings.consensus = consensus;
                    net.timings.ready = t0.elapsed();
                    tracing::info!(
                        "C tor client (SOCKS 127.0.0.1:{}) bootstrapped after {:.1} s",
                        net.layout.socks_port,
                        net.timings.ready.as_secs_f64()
                    );
                    break;
                }
            }
            if Instant::now() >= deadline {
                let what = if consensus_at.is_none() {
                    format!("a consensus listing {N_CONSENSUS_RELAYS} relays with HSDir")
                } else {
                    "the C tor client's \"Bootstrapped 100%\"".to_owned()
                };
                return Err(TornetError::Timeout {
                    what,
                    waited: t0.elapsed(),
                    last: match last {
                        Ok(s) => s.to_string(),
                        Err(e) => e,
                    },
                    log_tails: log_tails(&net.dir, &net.layout),
                });
            }
            let pause = if consensus_at.is_some() { 200 } else { 1000 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }

        write_atomic(&net.arti_toml_path(), &net.arti_toml)?;
        write_atomic(
            &net.dir.join(SOCKS_PORT_FILE),
            &format!("{}\n", net.layout.socks_port),
        )?;
        Ok(net)
    }

    /// The network directory (canonical path).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/arti.toml`: the network part of an arti 0.47 client configuration.
    pub fn arti_toml_path(&self) -> PathBuf {
        self.dir.join(ARTI_TOML)
    }

    /// The text of `arti.toml`.
    pub fn arti_toml(&self) -> String {
        self.arti_toml.clone()
    }

    /// The C tor client's SOCKS port on 127.0.0.1.
    pub fn socks_port(&self) -> u16 {
        self.layout.socks_port
    }

    /// Nodes, ports and identities.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The tor daemons still under this handle's control (empty after `down`).
    pub fn processes(&self) -> Vec<TorProcess> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// When each stage of `up` finished.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Fetches the current consensus from an authority and counts its relays.
    pub async fn consensus_summary(&self) -> Result<ConsensusSummary, TornetError> {
        fetch_any(&self.layout).await
    }

    /// Gives up the handle but leaves the network running (for the `tornet up` command);
    /// stop it later with [`down_dir`].
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Stops every daemon of the network (SIGTERM, then SIGKILL after 3 s) and waits until
    /// they are gone. Blocking; idempotent; also called on drop. Failures are logged.
    pub fn down(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<TorProcess> = std::mem::take(&mut *procs);
        // Also anything recorded on disk (a PidFile we did not see, e.g. a restarted node).
        if let Ok(on_disk) = processes_in(&self.dir) {
            for p in on_disk {
                if !all.iter().any(|q| q.pid == p.pid) {
                    all.push(p);
                }
            }
        }
        match stop_procs(all) {
            Ok(r) if r.stopped.is_empty() => {}
            Ok(r) => tracing::info!(
                "stopped {} tor daemons in {} ({} needed SIGKILL)",
                r.stopped.len(),
                self.dir.display(),
                r.killed.len()
            ),
            Err(e) => tracing::error!("stopping the network in {}: {e}", self.dir.display()),
        }
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        if !self.detached {
            self.down();
        }
    }
}

/// The state of a network directory, for `tornet status`.
#[derive(Debug, Clone)]
pub struct NetworkStatus {
    /// The network description.
    pub layout: Layout,
    /// Every recorded daemon with whether it is alive.
    pub processes: Vec<(TorProcess, bool)>,
    /// The consensus summary, or why it could not be fetched.
    pub consensus: Result<ConsensusSummary, String>,
    /// Whether the C tor client has logged "Bootstrapped 100%".
    pub client_bootstrapped: bool,
}

impl fmt::Display for NetworkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in self.layout.nodes() {
            let state = self
                .processes
                .iter()
                .find(|(p, _)| p.name == n.name)
                .map_or("not running".to_owned(), |(p, alive)| {
                    format!("pid {} {}", p.pid, if *alive { "running" } else { "gone" })
                });
            writeln!(
                f,
                "{:<8} {:<9} ORPort {:<5} DirPort {:<5} {}",
                n.name,
                format!("{:?}", n.role).to_lowercase(),
                n.or_port,
                n.dir_port,
                state
            )?;
        }
        let client = self
            .processes
            .iter()
            .find(|(p, _)| p.name == CLIENT_NAME)
            .map_or("not running".to_owned(), |(p, alive)| {
                format!("pid {} {}", p.pid, if *alive { "running" } else { "gone" })
            });
        let bootstrap = match (self.client_bootstrapped, client.starts_with("pid")) {
            (true, true) => " (bootstrapped)",
            (false, true) => " (not bootstrapped)",
            _ => "",
        };
        writeln!(
            f,
            "{:<8} {:<9} SocksPort {:<5} {client}{bootstrap}",
            CLIENT_NAME, "client", self.layout.socks_port,
        )?;
        match &self.consensus {
            Ok(s) => write!(f, "consensus: {s}"),
            Err(e) => write!(f, "consensus: unavailable ({e})"),
        }
    }
}

/// Reports the state of the network in `dir`.
pub async fn status(dir: &Path) -> Result<NetworkStatus, TornetError> {
    let layout = read_layout(dir)?;
    let processes = processes_in(dir)?
        .into_iter()
        .map(|p| {
            let alive = p.is_alive();
            (p, alive)
        })
        .collect();
    let consensus = fetch_any(&layout).await.map_err(|e| e.to_string());
    Ok(NetworkStatus {
        client_bootstrapped: client_bootstrapped(dir),
        layout,
        processes,
        consensus,
    })
}
