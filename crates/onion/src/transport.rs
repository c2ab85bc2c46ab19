//! The arti client and the onion service: bootstrap, offline identity, launch with inbound
//! streams to virtual port 25, isolated outbound connections, and the repairs of the
//! self-probe (a relaunch of the service, a new client on the same state folder).
//!
//! Ownership. Each Tor client runs on a tokio runtime of its own (a "generation"), and the
//! transport is the only long-lived holder of both: outbound attempts and probes borrow
//! the client for their duration, the running service is owned by one [`InboundStreams`]
//! and everything else sees it through a weak [`ServiceStatus`]. Dropping a client is not
//! enough to free arti's lock files, because some of arti's tasks outlive it (a dropped
//! service's proof-of-work manager loops forever and keeps the client's directory manager
//! with it: module `rotate`); shutting the generation's runtime down drops every one of
//! them, so the next client owns the state and cache folders instead of running
//! read-only beside a leftover.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use arti_client::{IsolationToken, StreamPrefs, TorClient};
use futures::{Stream, StreamExt};
use safelog::DisplayRedacted;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::{RunningOnionService, StreamRequest};
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;
use tracing::{debug, info, warn};

use crate::attempt::{self, Failure, Isolation};
use crate::config::{client_config, service_config, OnionSettings};
use crate::rotate;
use crate::DataStream;

/// How long an outbound attempt may go without a stream before a fresh one starts beside it
/// (at most half of the connect timeout). A connection to an onion service takes about a
/// second on the private test network and a few seconds on the real Tor network.
pub const FRESH_ATTEMPT_AFTER: Duration = Duration::from_secs(15);

/// What can go wrong in the onion transport.
#[derive(Debug, thiserror::Error)]
pub enum OnionError {
    /// The configuration (ours or the arti file) is unusable.
    #[error("onion configuration: {0}")]
    Config(String),
    /// arti could not start or bootstrap.
    #[error("Tor bootstrap: {0}")]
    Bootstrap(String),
    /// The onion service could not be created or launched.
    #[error("onion service: {0}")]
    Launch(String),
    /// An outbound connection failed.
    #[error("{message}")]
    Connect {
        /// True if a later attempt may succeed (the usual case on Tor).
        temporary: bool,
        /// What happened.
        message: String,
    },
}

type Client = Arc<TorClient<PreferredRuntime>>;

/// Our onion address (`<56 chars>.onion`), creating the identity key in arti's keystore if
/// there is none yet. Offline: touches no network.
pub fn onion_address(settings: &OnionSettings) -> Result<String, OnionError> {
    let config = client_config(settings)?;
    let service =
        TorClient::<PreferredRuntime>::create_onion_service(&config, service_config(settings)?)
            .map_err(|e| OnionError::Launch(format!("{e}")))?;
    let hsid = service
        .generate_identity_key(tor_keymgr::KeystoreSelector::Primary)
        .map_err(|e| OnionError::Launch(format!("identity key: {e}")))?;
    let address = hsid.display_unredacted().to_string();
    Ok(address)
}

/// The Tor client, shared by the onion service and outbound delivery. The client inside can
/// be replaced ([`OnionTransport::rebuild`]); callers never keep it.
pub struct OnionTransport {
    generation: RwLock<Option<Generation>>,
    /// Generations made so far (names the runtimes' threads).
    made: Mutex<u64>,
    /// The rotation of the service's nickname in use (module `rotate`; 0: its own).
    rotation: Mutex<u32>,
    settings: OnionSettings,
    isolation: Isolation,
}

/// A Tor client and the runtime its tasks run on; dropping it shuts the runtime down
/// without waiting (every task of that client is dropped).
struct Generation {
    client: Option<Client>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The message of a tokio timer used after its runtime was shut down.
const SHUT_DOWN: &str = "being shutdown";

/// Keeps the panics of arti's leftover threads out of the log: when a generation's runtime
/// is shut down, the blocking threads of a service's proof-of-work manager (which loop
/// forever) find their timer gone and panic, which is how they end. Every other panic is
/// reported as before.
fn quiet_shutdown_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("arti-"));
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if ours && text.contains(SHUT_DOWN) {
                debug!("a task of a replaced Tor client ended with its runtime");
                return;
            }
            previous(info);
        }));
    });
}

impl Generation {
    /// A new runtime and an unbootstrapped client on it (it bootstraps on demand).
    fn new(settings: &OnionSettings, number: u64) -> Result<Generation, OnionError> {
        quiet_shutdown_panics();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("arti-{number}"))
            .enable_all()
            .build()
            .map_err(|e| OnionError::Bootstrap(format!("cannot start a runtime for Tor: {e}")))?;
        let client = {
            let _inside = runtime.enter();
            let handle = PreferredRuntime::current()
                .map_err(|e| OnionError::Bootstrap(format!("runtime: {e}")))?;
            TorClient::with_runtime(handle)
                .config(client_config(settings)?)
                .create_unbootstrapped()
                .map_err(|e| OnionError::Bootstrap(format!("{e}")))?
        };
        Ok(Generation {
            client: Some(client),
            runtime: Some(runtime),
        })
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        drop(self.client.take());
        if let Some(runtime) = self.runtime.take() {
            // Allowed in async code, unlike a plain drop; blocking threads end on their own.
            runtime.shutdown_background();
        }
    }
}

/// Accepted streams to our virtual port 25. The only owner of the running service: it stops
/// (publishing, introductions) when this is dropped; sessions already open go on.
pub struct InboundStreams {
    service: Arc<RunningOnionService>,
    requests: Pin<Box<dyn Stream<Item = StreamRequest> + Send>>,
}

impl InboundStreams {
    /// The next accepted stream to port 25; `None` when the service has stopped. Streams to
    /// other ports are refused on the way.
    pub async fn next(&mut self) -> Option<DataStream> {
        while let Some(request) = self.requests.next().await {
            let port = match request.request() {
                IncomingStreamRequest::Begin(begin) => Some(begin.port()),
                _ => None,
            };
            if port != Some(25) {
                debug!(?port, "refusing an onion stream to a port other than 25");
                // DONE is what other onion services answer: we stay indistinguishable.
                let _ = request.reject(End::new_with_reason(EndReason::DONE)).await;
                continue;
            }
            match request.accept(Connected::new_empty()).await {
                Ok(stream) => return Some(stream),
                Err(e) => debug!(error = %e, "could not accept an onion stream"),
            }
        }
        None
    }

    /// A handle on the service's state that does not keep it running.
    pub fn status(&self) -> ServiceStatus {
        ServiceStatus(Arc::downgrade(&self.service))
    }
}

/// A weak handle on the running onion service's state, for `smtorp status`.
#[derive(Clone, Default)]
pub struct ServiceStatus(Weak<RunningOnionService>);

impl ServiceStatus {
    /// arti's view of the service (`Running`, `DegradedUnreachable`, ...), or `None` if the
    /// service is not running. On a young network it lags reachability: informative only.
    pub fn state(&self) -> Option<String> {
        self.0
            .upgrade()
            .map(|s| format!("{:?}", s.status().state()))
    }
}

/// How a rebuild of the Tor client went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// arti's lock files (state and directory cache) were free when the new client started,
    /// so it owns them; otherwise it starts read-only and takes them over once released.
    pub locks_free: bool,
    /// How long it waited for them.
    pub waited: Duration,
}

impl OnionTransport {
    /// Creates the Tor client (on a runtime of its own) and bootstraps it (fetches the
    /// consensus). Removes what earlier relaunches left (module `rotate`).
    pub async fn bootstrap(settings: OnionSettings) -> Result<OnionTransport, OnionError> {
        rotate::remove_rotated(&settings);
        let generation = Generation::new(&settings, 1)?;
        let client = generation.client.clone();
        if let Some(client) = client {
            client
                .bootstrap()
                .await
                .map_err(|e| OnionError::Bootstrap(format!("{e}")))?;
        }
        info!("Tor client bootstrapped");
        Ok(OnionTransport {
            generation: RwLock::new(Some(generation)),
            made: Mutex::new(1),
            rotation: Mutex::new(0),
            settings,
            isolation: Isolation::default(),
        })
    }

    /// The current client, if there is one (not while it is being rebuilt).
    pub(crate) fn client(&self) -> Option<Client> {
        self.generation
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|g| g.client.clone())
    }

    /// The settings this transport was made with.
    pub fn settings(&self) -> &OnionSettings {
        &self.settings
    }

    /// Launches the onion service on the current client; returns our address and the stream
    /// of accepted connections to port 25. Status changes are logged; none of them is fatal.
    ///
    /// If an earlier service of this client still holds the nickname's state after
    /// `lock_wait` (arti 0.47 with proof-of-work never lets go of it), the service is
    /// launched under the next rotated nickname, with a copy of the same identity key: the
    /// address does not change (module `rotate`).
    pub async fn launch(
        &self,
        lock_wait: Duration,
    ) -> Result<(String, InboundStreams), OnionError> {
        let current = *self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        let mut nickname = rotate::rotated(&self.settings.nickname, current);
        let lock = rotate::instance_lock(&self.settings, &nickname);
        if !wait_for_locks(&[lock], lock_wait).await {
            let next = current + 1;
            nickname = rotate::rotated(&self.settings.nickname, next);
            warn!(
                held = %rotate::rotated(&self.settings.nickname, current),
                nickname = %nickname,
                "the previous onion service still holds its state (arti keeps its proof-of-work task); launching under a new nickname with the same key"
            );
            rotate::copy_identity(&self.settings, &nickname)?;
            *self.rotation.lock().unwrap_or_else(|p| p.into_inner()) = next;
        }
        self.launch_as(&nickname)
    }

    fn launch_as(&self, nickname: &str) -> Result<(String, InboundStreams), OnionError> {
        let client = self
            .client()
            .ok_or_else(|| OnionError::Launch("the Tor client is being rebuilt".into()))?;
        let settings = OnionSettings {
            nickname: nickname.to_owned(),
            ..self.settings.clone()
        };
        let launched = client
            .launch_onion_service(service_config(&settings)?)
            .map_err(|e| OnionError::Launch(format!("{e}")))?;
        let Some((service, rend_requests)) = launched else {
            return Err(OnionError::Launch(
                "the onion service is disabled in arti's configuration".into(),
            ));
        };
        let address = service
            .onion_address()
            .map(|a| a.display_unredacted().to_string())
            .ok_or_else(|| OnionError::Launch("no identity key after launch".into()))?;
        let mut events = service.status_events();
        tokio::spawn(async move {
            let mut last = None;
            // Ends when the service is dropped.
            while let Some(status) = events.next().await {
                let state = format!("{:?}", status.state());
                if last.as_ref() != Some(&state) {
                    // Reported states lag reachability on young networks; never fatal.
                    info!(state = %state, "onion service status");
                    last = Some(state);
                }
            }
        });
        let requests = tor_hsservice::handle_rend_requests(rend_requests);
        Ok((
            address,
            InboundStreams {
                service,
                requests: Box::pin(requests),
            },
        ))
    }

    /// arti's bootstrap status, in words, and whether it is ready for traffic.
    pub fn bootstrap_status(&self) -> (String, bool) {
        match self.client() {
            Some(client) => {
                let status = client.bootstrap_status();
                (status.to_string(), status.ready_for_traffic())
            }
            None => ("the Tor client is being rebuilt".into(), false),
        }
    }

    /// Replaces the Tor client with a new one on the same state and cache folders (same
    /// keys, same address). The caller must have dropped the onion service first.
    ///
    /// arti lets one client own those folders (lock files); a second one runs read-only
    /// until the first lets go: it neither saves its guards nor downloads the directory
    /// itself. So the old generation's runtime is shut down first (every task of the old
    /// client and of its services is dropped; streams still open on it end), and the new
    /// client is made once the lock files are free, or after `lock_wait`. Meanwhile
    /// outbound connections fail as temporary (mail waits in the queue). The new client
    /// bootstraps in the background, from its cache at once if the cached directory is
    /// still usable; the service goes back to its own nickname.
    pub async fn rebuild(&self, lock_wait: Duration) -> Result<Rebuilt, OnionError> {
        let old = self
            .generation
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(old);
        let started = Instant::now();
        let mut locks = vec![
            self.settings.state_dir.join("state").join("state.lock"),
            self.settings.cache_dir.join("dir.lock"),
        ];
        let rotation = *self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        locks.extend((0..=rotation).map(|n| {
            rotate::instance_lock(&self.settings, &rotate::rotated(&self.settings.nickname, n))
        }));
        let locks_free = wait_for_locks(&locks, lock_wait).await;
        let waited = started.elapsed();
        if locks_free {
            *self.rotation.lock().unwrap_or_else(|p| p.into_inner()) = 0;
            rotate::remove_rotated(&self.settings);
        }
        let number = {
            let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
            *made += 1;
            *made
        };
        let generation = Generation::new(&self.settings, number)?;
        if let (Some(client), Some(runtime)) = (generation.client.clone(), &generation.runtime) {
            // On the generation's own runtime: it goes with it.
            runtime.spawn(async move {
                match client.bootstrap().await {
                    Ok(()) => info!("the new Tor client is bootstrapped"),
                    Err(e) => warn!(error = %e, "the new Tor client could not bootstrap yet; it keeps trying on demand"),
                }
            });
        }
        *self.generation.write().unwrap_or_else(|p| p.into_inner()) = Some(generation);
        Ok(Rebuilt { locks_free, waited })
    }

    /// Opens a stream to `<domain>:port` (an onion domain), isolated per domain. A failed
    /// or timed-out attempt makes the next one start afresh in arti, and an attempt still
    /// without a stream after [`FRESH_ATTEMPT_AFTER`] gets a fresh one beside it
    /// (module `attempt`; why: docs/onion.md, "After a peer restarts").
    pub async fn connect(&self, domain: &str, port: u16) -> Result<DataStream, OnionError> {
        if !domain.ends_with(".onion") {
            return Err(OnionError::Connect {
                temporary: false,
                message: format!(
                    "{domain} is not an onion address; smtorp connects only to onion services"
                ),
            });
        }
        let Some(client) = self.client() else {
            return Err(OnionError::Connect {
                temporary: true,
                message: "the Tor client is being rebuilt".into(),
            });
        };
        let timeout = self.settings.connect_timeout;
        let fresh_after = FRESH_ATTEMPT_AFTER.min(timeout / 2);
        let attempt = |token: IsolationToken| {
            let mut prefs = StreamPrefs::new();
            prefs.set_isolation(token);
            let client = &client;
            async move { client.connect_with_prefs((domain, port), &prefs).await }
        };
        match attempt::connect(&self.isolation, domain, fresh_after, timeout, attempt).await {
            Ok(stream) => Ok(stream),
            Err(Failure::Failed(e)) => {
                let kind = tor_error::HasKind::kind(&e);
                let permanent = matches!(
                    kind,
                    tor_error::ErrorKind::InvalidStreamTarget
                        | tor_error::ErrorKind::OnionServiceAddressInvalid
                );
                warn!(error = %e, ?kind, "onion connection failed");
                Err(OnionError::Connect {
                    temporary: !permanent,
                    message: format!("onion connection failed: {e}"),
                })
            }
            Err(Failure::TimedOut) => Err(OnionError::Connect {
                temporary: true,
                message: format!("onion connection timed out after {} s", timeout.as_secs()),
            }),
        }
    }
}

/// Waits until nobody holds any of these lock files (arti's `fslock-guard` locks), polling
/// for at most `limit`; true if they all came free.
async fn wait_for_locks(paths: &[PathBuf], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let free = paths.iter().all(|p| lock_is_free(p));
        if free || Instant::now() >= deadline {
            return free;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// True if we could take the lock (and released it at once), or the file does not exist.
fn lock_is_free(path: &std::path::Path) -> bool {
    if !path.exists() {
        return true;
    }
    matches!(fslock_guard::LockFileGuard::try_lock(path), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_held_lock_is_waited_for_and_a_free_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.lock");
        let guard = fslock_guard::LockFileGuard::try_lock(&path)
            .unwrap()
            .unwrap();
        let t0 = Instant::now();
        assert!(!wait_for_locks(std::slice::from_ref(&path), Duration::from_millis(600)).await);
        assert!(t0.elapsed() >= Duration::from_millis(600));
        drop(guard);
        assert!(wait_for_locks(&[path, dir.path().join("missing.lock")], Duration::ZERO).await);
    }
}
