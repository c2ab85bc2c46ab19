//! The onion side of the daemon: our onion address (kept in arti's keystore under data_dir,
//! mirrored to `onion/hostname`), bootstrapping arti, publishing the SMTP onion service,
//! running a session on every stream that reaches virtual port 25, and the repairs the
//! self-probe (`probe.rs`) asks for. The supervisor here is the only owner of the running
//! service: a relaunch or a rebuild replaces it without anything else holding the old one.

pub(crate) mod connector;
pub(crate) mod health;
pub(crate) mod probe;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use smtorp_onion::{Defences, InboundStreams, OnionError, OnionSettings, OnionTransport};
use tokio::sync::{mpsc, watch, OnceCell};
use tracing::{error, info, warn};

use self::health::{Health, Repair};
use self::probe::RepairRequest;

use crate::config::Settings;
use crate::listen::{stopped, Guarded, SessionFactory};
use crate::policy::OnionSidePolicy;

/// The nickname of our onion service in arti's keystore.
pub(crate) const NICKNAME: &str = "smtorp";

/// The arti settings of a configuration.
pub(crate) fn onion_settings(settings: &Settings) -> OnionSettings {
    let arti_config = &settings.config.onion.arti_config;
    OnionSettings {
        state_dir: settings.arti_state_dir(),
        cache_dir: settings.arti_cache_dir(),
        arti_config: (!arti_config.is_empty()).then(|| PathBuf::from(arti_config)),
        nickname: NICKNAME.into(),
        connect_timeout: settings.config.onion.connect_timeout,
        defences: defences(settings),
    }
}

/// The `[onion]` defences.
pub(crate) fn defences(settings: &Settings) -> Defences {
    let onion = &settings.config.onion;
    Defences {
        pow: onion.pow,
        intro_rate: onion.intro_rate,
        intro_burst: onion.intro_burst,
        max_streams_per_circuit: onion.max_streams_per_circuit,
    }
}

fn hostname_file(settings: &Settings) -> PathBuf {
    settings.config.data_dir.join("onion").join("hostname")
}

/// Our onion address: creates the identity key if there is none (offline), and mirrors the
/// address into `<data_dir>/onion/hostname` (like C tor's `hostname` file).
pub(crate) fn ensure_address(settings: &Settings) -> anyhow::Result<String> {
    prepare_arti_dirs(settings)?;
    let address = smtorp_onion::onion_address(&onion_settings(settings))
        .context("cannot read or create the onion service key")?;
    let file = hostname_file(settings);
    if fs::read_to_string(&file).ok().as_deref().map(str::trim) != Some(address.as_str()) {
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent)?;
        }
        crate::config::layout::write_atomically(&file, format!("{address}\n").as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(address)
}

/// Imports a C tor onion service key (see `smtorp import-key`), then mirrors the address
/// as [`ensure_address`] does.
pub(crate) fn import_key(settings: &Settings, path: &std::path::Path) -> anyhow::Result<String> {
    prepare_arti_dirs(settings)?;
    smtorp_onion::import_ctor_key(&onion_settings(settings), path)?;
    ensure_address(settings)
}

/// Our XONIONAUTH signing keys (docs/sender-auth.md): arti's identity key first when the
/// onion service is on, then `[onion] key_file` (a C tor `hs_ed25519_secret_key`) when set.
/// The keys stay in this process; only their onions are logged.
pub(crate) fn signers(settings: &Settings) -> anyhow::Result<Vec<smtorp_onionauth::Signer>> {
    let mut out = Vec::new();
    if settings.config.onion.enabled {
        let secret = smtorp_onion::identity_secret(&onion_settings(settings))
            .context("cannot read the onion service key for signing")?;
        if let Some(secret) = secret {
            out.push(
                smtorp_onionauth::Signer::from_expanded_secret(&secret)
                    .context("the onion service key cannot sign")?,
            );
        }
    }
    let key_file = &settings.config.onion.key_file;
    if !key_file.is_empty() {
        let bytes = fs::read(key_file)
            .with_context(|| format!("cannot read [onion] key_file {key_file}"))?;
        let signer =
            smtorp_onionauth::Signer::from_ctor_secret_key_file(&bytes).with_context(|| {
                format!("[onion] key_file {key_file} is not a C tor hs_ed25519_secret_key")
            })?;
        if !out.iter().any(|s| s.onion() == signer.onion()) {
            out.push(signer);
        }
    }
    for signer in &out {
        info!(onion = %signer.onion(), "signing our mail (XONIONAUTH)");
    }
    Ok(out)
}

fn prepare_arti_dirs(settings: &Settings) -> anyhow::Result<()> {
    for dir in [settings.arti_state_dir(), settings.arti_cache_dir()] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        set_mode(&dir, 0o700)?;
    }
    set_mode(&settings.config.data_dir.join("arti"), 0o700)
}

fn set_mode(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// How long a launch waits for a dropped service to let go of its state before it uses a
/// rotated nickname (same key, same address; `smtorp_onion` module `rotate`).
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How long a rebuild waits for the old client's lock files once its runtime is shut down.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Launches the service on the transport's current client.
async fn launch(transport: &OnionTransport) -> Result<(String, InboundStreams), OnionError> {
    transport.launch(RELEASE_WAIT).await
}

/// Carries out a repair: drops the service (sessions in progress go on), rebuilds the
/// client if asked, and launches the service again with the same key.
async fn repair(
    transport: &OnionTransport,
    streams: &mut Option<InboundStreams>,
    health: &Health,
    address: &str,
    action: Repair,
    reason: &str,
) -> Result<String, String> {
    *streams = None;
    let mut done = Vec::new();
    match action {
        Repair::Relaunch => warn!(
            reason,
            "repair: relaunching the onion service (same key, same address)"
        ),
        Repair::Rebuild => {
            warn!(
                reason,
                "repair: rebuilding the Tor client on the same state folder (same key, same address); outbound connections wait for it"
            );
            let rebuilt = transport
                .rebuild(LOCK_WAIT)
                .await
                .map_err(|e| e.to_string())?;
            if rebuilt.locks_free {
                done.push(format!(
                    "new Tor client (took over arti's state after {:.0} s)",
                    rebuilt.waited.as_secs_f64()
                ));
            } else {
                warn!(
                    waited = rebuilt.waited.as_secs(),
                    "repair: the old Tor client still holds arti's lock files; the new one runs read-only until they are released"
                );
                done.push("new Tor client (read-only until the old one lets go)".into());
            }
        }
    }
    let (launched, new_streams) = launch(transport).await.map_err(|e| e.to_string())?;
    if launched != address {
        // The key is read from the same keystore: this cannot happen; say so loudly.
        error!(expected = %address, got = %launched, "repair: the relaunched service has another address");
    }
    health.set_service(new_streams.status());
    *streams = Some(new_streams);
    done.push("onion service relaunched".into());
    Ok(done.join(", "))
}

/// The next stream, or never while no service runs.
async fn next_stream(streams: &mut Option<InboundStreams>) -> Option<smtorp_onion::DataStream> {
    match streams {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Bootstraps arti (retrying on failure), publishes the onion service and serves SMTP on
/// every accepted stream until shutdown; carries out the repairs the self-probe asks for.
/// Puts the transport into `cell` for outbound use.
pub(crate) async fn serve(
    settings: Arc<Settings>,
    factory: Arc<SessionFactory<Guarded<OnionSidePolicy>>>,
    cell: Arc<OnceCell<Arc<OnionTransport>>>,
    address: String,
    health: Arc<Health>,
    mut repairs: mpsc::Receiver<RepairRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = std::time::Instant::now();
    let transport = loop {
        let attempt = OnionTransport::bootstrap(onion_settings(&settings));
        tokio::select! {
            result = attempt => match result {
                Ok(t) => break Arc::new(t),
                Err(e) => {
                    error!(error = %e, "Tor bootstrap failed; retrying in 30 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
                        _ = stopped(&mut shutdown) => return,
                    }
                }
            },
            _ = stopped(&mut shutdown) => return,
        }
    };
    info!(
        seconds = started.elapsed().as_secs_f64(),
        "Tor bootstrapped"
    );
    let _ = cell.set(transport.clone());
    let mut streams = match launch(&transport).await {
        Ok((launched, streams)) => {
            health.set_service(streams.status());
            info!(address = %launched, seconds = started.elapsed().as_secs_f64(), "onion service launched (SMTP on port 25)");
            Some(streams)
        }
        Err(e) => {
            error!(error = %e, "cannot launch the onion service; only outbound mail works until a repair");
            None
        }
    };
    let session_stop = shutdown.clone();
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            next = next_stream(&mut streams) => {
                let Some(stream) = next else {
                    // The self-probe notices and relaunches it.
                    warn!("the onion service stopped");
                    streams = None;
                    continue;
                };
                // The same fair places as every listener: a newcomer may take an idle
                // session's place, or waits in line for one; 421 when that fails.
                factory.accept(&mut sessions, stream, None, session_stop.clone());
            }
            Some(request) = repairs.recv() => {
                let RepairRequest { action, reason, done } = request;
                let work = repair(&transport, &mut streams, &health, &address, action, &reason);
                let outcome = tokio::select! {
                    outcome = work => outcome,
                    _ = stopped(&mut shutdown) => break,
                };
                let _ = done.send(outcome);
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    crate::listen::finish(sessions, "onion").await;
}
