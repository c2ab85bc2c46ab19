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

use crate::config::RouteAuth;

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
    /// `[delivery] route_auth`: when a static route counts as reaching the real peer.
    pub(crate) route_auth: RouteAuth,
}

/// The lowest port an unprivileged process may listen on (Linux lets the administrator
/// lower it from 1024).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// True if only root can listen on `addr`: a loopback address and a port below both 1024
/// and `unprivileged_start`.
pub(crate) fn is_privileged_loopback(addr: &SocketAddr, unprivileged_start: u16) -> bool {
    addr.ip().is_loopback() && addr.port() < 1024 && addr.port() < unprivileged_start
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

    fn authenticates_server(&self, domain: &str) -> bool {
        match self.routes.get(domain) {
            // Tor authenticates the onion service at the other end.
            None => true,
            Some(addr) => match self.route_auth {
                RouteAuth::Always => true,
                RouteAuth::Never => false,
                RouteAuth::Privileged => is_privileged_loopback(addr, unprivileged_port_start()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_routes_are_loopback_ports_only_root_can_bind() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(is_privileged_loopback(&addr("127.0.0.1:25"), 1024));
        assert!(is_privileged_loopback(&addr("127.0.0.2:587"), 1024));
        assert!(is_privileged_loopback(&addr("[::1]:25"), 1024));
        assert!(!is_privileged_loopback(&addr("127.0.0.1:2525"), 1024));
        assert!(!is_privileged_loopback(&addr("192.168.1.2:25"), 1024));
        // An administrator who lowered the bound made port 25 anyone's.
        assert!(!is_privileged_loopback(&addr("127.0.0.1:25"), 0));
        assert!(!is_privileged_loopback(&addr("127.0.0.1:80"), 80));
    }

    #[test]
    fn route_auth_rules() {
        let mut connector = OutboundConnector {
            routes: [("a.onion".to_owned(), "127.0.0.1:2525".parse().unwrap())].into(),
            onion: Arc::new(OnceCell::new()),
            onion_enabled: false,
            connect_timeout: Duration::from_secs(1),
            route_auth: RouteAuth::Privileged,
        };
        assert!(connector.authenticates_server("b.onion"));
        assert!(!connector.authenticates_server("a.onion"));
        connector.route_auth = RouteAuth::Always;
        assert!(connector.authenticates_server("a.onion"));
        connector.route_auth = RouteAuth::Never;
        assert!(!connector.authenticates_server("a.onion"));
        assert!(connector.authenticates_server("b.onion"));
    }
}
