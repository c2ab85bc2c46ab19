//! The arti client and the onion service: bootstrap, offline identity, launch with inbound
//! streams to virtual port 25, and isolated outbound connections.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arti_client::config::onion_service::OnionServiceConfigBuilder;
use arti_client::{IsolationToken, StreamPrefs, TorClient};
use futures::{Stream, StreamExt};
use safelog::DisplayRedacted;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::{HsNickname, RunningOnionService, StreamRequest};
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;
use tracing::{debug, info, warn};

use crate::attempt::{self, Failure, Isolation};
use crate::config::{client_config, OnionSettings};
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

fn service_config(
    settings: &OnionSettings,
) -> Result<tor_hsservice::OnionServiceConfig, OnionError> {
    let nickname = HsNickname::new(settings.nickname.clone())
        .map_err(|e| OnionError::Config(format!("onion service nickname: {e}")))?;
    OnionServiceConfigBuilder::default()
        .nickname(nickname)
        .build()
        .map_err(|e| OnionError::Config(format!("onion service: {e}")))
}

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

/// The bootstrapped Tor client, shared by the onion service and outbound delivery.
pub struct OnionTransport {
    client: Arc<TorClient<PreferredRuntime>>,
    settings: OnionSettings,
    isolation: Isolation,
}

/// Accepted streams to our virtual port 25. Keeps the service running while it lives.
pub struct InboundStreams {
    _service: Arc<RunningOnionService>,
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
}

/// A handle on the running onion service's state, for `smtorp status`.
#[derive(Clone)]
pub struct ServiceStatus(Arc<RunningOnionService>);

impl ServiceStatus {
    /// arti's view of the service (`Running`, `DegradedUnreachable`, ...). On a young
    /// network it lags reachability; it is informative only.
    pub fn state(&self) -> String {
        format!("{:?}", self.0.status().state())
    }
}

impl InboundStreams {
    /// A handle on the service's state that lives independently of this stream.
    pub fn status(&self) -> ServiceStatus {
        ServiceStatus(self._service.clone())
    }
}

impl Stream for InboundStreams {
    type Item = StreamRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamRequest>> {
        self.requests.as_mut().poll_next(cx)
    }
}

impl OnionTransport {
    /// Creates the Tor client and bootstraps it (fetches the consensus).
    pub async fn bootstrap(settings: OnionSettings) -> Result<OnionTransport, OnionError> {
        let config = client_config(&settings)?;
        let client = TorClient::create_bootstrapped(config)
            .await
            .map_err(|e| OnionError::Bootstrap(format!("{e}")))?;
        info!("Tor client bootstrapped");
        Ok(OnionTransport {
            client,
            settings,
            isolation: Isolation::default(),
        })
    }

    /// Launches the onion service; returns our address and the stream of accepted
    /// connections to port 25. Status changes are logged; none of them is fatal.
    pub fn launch(&self) -> Result<(String, InboundStreams), OnionError> {
        let launched = self
            .client
            .launch_onion_service(service_config(&self.settings)?)
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
                _service: service,
                requests: Box::pin(requests),
            },
        ))
    }

    /// arti's bootstrap status, in words.
    pub fn bootstrap_status(&self) -> String {
        self.client.bootstrap_status().to_string()
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
        let timeout = self.settings.connect_timeout;
        let fresh_after = FRESH_ATTEMPT_AFTER.min(timeout / 2);
        let attempt = |token: IsolationToken| {
            let mut prefs = StreamPrefs::new();
            prefs.set_isolation(token);
            let client = &self.client;
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
