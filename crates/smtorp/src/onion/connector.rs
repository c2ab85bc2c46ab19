//! Outbound connections for the delivery worker: a configured static route (plain TCP to an
//! IP:PORT, for tests and for a peer behind C tor on the same machine), else an onion stream
//! through arti. Nothing here resolves a name or reaches a clearnet host.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtorp_delivery::{BoxedStream, ConnectError, ConnectFuture, Connector};
use smtorp_onion::{OnionError, OnionTransport};
use tokio::sync::OnceCell;

/// Static routes first, then the onion transport (once it has bootstrapped).
pub(crate) struct OutboundConnector {
    /// `[delivery] routes`.
    pub(crate) routes: BTreeMap<String, SocketAddr>,
    /// The onion transport, set once arti has bootstrapped; `None` inside if onion is off.
    pub(crate) onion: Arc<OnceCell<Arc<OnionTransport>>>,
    /// Whether `[onion] enabled` (a missing transport is then "not ready yet").
    pub(crate) onion_enabled: bool,
    /// Timeout of a TCP connect over a static route.
    pub(crate) connect_timeout: Duration,
}

fn temporary(message: String) -> ConnectError {
    ConnectError {
        temporary: true,
        message,
    }
}

impl OutboundConnector {
    async fn open(&self, domain: &str) -> Result<BoxedStream, ConnectError> {
        if let Some(addr) = self.routes.get(domain) {
            let connect = tokio::net::TcpStream::connect(addr);
            return match tokio::time::timeout(self.connect_timeout, connect).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    Ok(Box::new(stream))
                }
                Ok(Err(e)) => Err(temporary(format!("static route {domain} -> {addr}: {e}"))),
                Err(_) => Err(temporary(format!(
                    "static route {domain} -> {addr}: connect timed out"
                ))),
            };
        }
        if !domain.ends_with(".onion") {
            return Err(ConnectError {
                temporary: false,
                message: format!(
                    "{domain} is not an onion address; {}",
                    crate::policy::ONION_ONLY
                ),
            });
        }
        match self.onion.get() {
            Some(transport) => match transport.connect(domain, 25).await {
                Ok(stream) => Ok(Box::new(stream)),
                Err(OnionError::Connect { temporary, message }) => Err(ConnectError { temporary, message }),
                Err(other) => Err(temporary(other.to_string())),
            },
            None if self.onion_enabled => Err(temporary("Tor is not bootstrapped yet".into())),
            None => Err(temporary(format!(
                "no route to {domain}: the onion service is off ([onion] enabled = false) and no static route is set"
            ))),
        }
    }
}

impl Connector for OutboundConnector {
    fn connect<'a>(&'a self, domain: &'a str) -> ConnectFuture<'a> {
        Box::pin(self.open(domain))
    }
}
