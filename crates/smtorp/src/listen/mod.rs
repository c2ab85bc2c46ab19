//! The SMTP listeners: plain TCP listeners with the onion side's rules (`[smtp] listen`),
//! the submission port (STARTTLS, AUTH), and what they share with the onion service's
//! listener: one [`SessionFactory`] per listener and one accept loop.
//!
//! Every listener has fair [`Slots`]: at most `max_sessions` sessions, shorter timeouts
//! under stress, and a newcomer takes the place of the session idle the longest instead of
//! being turned away; when every session is busy it waits in line for the next free place
//! (up to `[smtp] wait_for_session`; 421 when that runs out or the line is full). The
//! address a client comes from is never looked at for policy (behind C tor every client is
//! 127.0.0.1); the submission port uses it only to count password failures.

pub(crate) mod auth;
pub(crate) mod handler;
pub(crate) mod passwd;
pub(crate) mod submission;
pub(crate) mod tls;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use smtorp_smtp::{
    serve, serve_submission, Admission, Onion, Policy, SenderAuthMode, Session, SessionConfig,
    SessionKind, Slot, Slots,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use self::handler::{SessionHandler, Shared};
use crate::config::{SenderAuth, Settings};
use crate::policy::Directory;

/// Everything a listener needs to run sessions.
pub(crate) struct SessionFactory<P> {
    /// Limits and our name.
    pub(crate) config: SessionConfig,
    /// Who may send to whom.
    pub(crate) policy: P,
    /// Where messages go, and password checks.
    pub(crate) shared: Arc<Shared>,
    /// The listener's places.
    pub(crate) slots: Arc<Slots>,
    /// STARTTLS (the submission port only).
    pub(crate) tls: Option<TlsAcceptor>,
}

impl<P: Policy + Clone> SessionFactory<P> {
    /// The reply to a connection that finds every place busy.
    pub(crate) fn busy_reply(&self) -> String {
        format!(
            "421 4.3.2 {} Too many connections, try again later\r\n",
            self.config.hostname
        )
    }

    /// Takes a new connection (from `peer`, when known) into `sessions`: a session at once
    /// if there is a place, after a wait in line if every session is busy, or 421.
    pub(crate) fn accept<S>(
        self: &Arc<Self>,
        sessions: &mut JoinSet<()>,
        stream: S,
        peer: Option<IpAddr>,
        shutdown: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        P: Send + Sync + 'static,
    {
        let factory = Arc::clone(self);
        match self.slots.admit() {
            Admission::Now(slot) => {
                sessions
                    .spawn(async move { factory.run_session(stream, peer, slot, shutdown).await });
            }
            Admission::Queued(queued) => {
                let mut shutdown = shutdown;
                sessions.spawn(async move {
                    // Shutdown first: the sessions it ends hand their places to those in
                    // line, who must then hear 421, not a greeting.
                    let slot = tokio::select! {
                        biased;
                        _ = stopped(&mut shutdown) => None,
                        slot = queued.place() => slot,
                    };
                    match slot {
                        Some(slot) => factory.run_session(stream, peer, slot, shutdown).await,
                        None => turn_away(stream, factory.busy_reply()).await,
                    }
                });
            }
            Admission::Refused => {
                sessions.spawn(turn_away(stream, self.busy_reply()));
            }
        }
    }

    /// Runs one session on any stream (from `peer`, when known) in `slot`, ending it with
    /// 421 when `shutdown` turns true.
    pub(crate) async fn run_session<S>(
        &self,
        stream: S,
        peer: Option<IpAddr>,
        slot: Arc<Slot>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let session = Session::new(self.config.clone(), self.policy.clone());
        let handler = SessionHandler::new(self.shared.clone(), peer);
        let stop = async move { stopped(&mut shutdown).await };
        let result = match &self.tls {
            Some(tls) => serve_submission(stream, session, &handler, tls, stop, Some(slot)).await,
            None => serve(stream, session, &handler, stop, Some(slot)).await,
        };
        if let Err(e) = result {
            debug!(error = %e, "session ended with an I/O error");
        }
    }
}

/// A listener's rules with the free-space gate in front (`[smtp] min_free_space`): MAIL
/// gets 452 4.3.1 when the queue's disk is nearly full.
#[derive(Debug, Clone)]
pub(crate) struct Guarded<P> {
    /// Who may send what.
    pub(crate) rules: P,
    /// The queue's disk.
    pub(crate) space: crate::intake::space::DiskSpace,
}

impl<P: Policy> Policy for Guarded<P> {
    fn check_sender(
        &self,
        sender: Option<&smtorp_smtp::Address>,
        context: &smtorp_smtp::SenderContext<'_>,
    ) -> Result<(), smtorp_smtp::Reply> {
        self.rules.check_sender(sender, context)
    }

    fn check_recipient(&self, recipient: &smtorp_smtp::Address) -> Result<(), smtorp_smtp::Reply> {
        self.rules.check_recipient(recipient)
    }

    fn check_resources(&self, size: usize) -> Result<(), smtorp_smtp::Reply> {
        self.space.check(size as u64)
    }
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Says 421 to a connection that finds every place busy, and closes it.
pub(crate) async fn turn_away<S: AsyncWrite + Unpin>(mut stream: S, reply: String) {
    let write = async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
}

/// Serves a bound TCP listener until shutdown: each connection gets a place (at once or
/// after a wait in line, else 421) and a session; on shutdown, stops accepting and gives
/// open sessions (which got their 421 from the same signal) 5 s to end before closing them.
pub(crate) async fn serve_tcp<P>(
    listener: TcpListener,
    factory: Arc<SessionFactory<P>>,
    kind: &'static str,
    mut shutdown: watch::Receiver<bool>,
) where
    P: Policy + Clone + Send + Sync + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, kind, "SMTP listener ready");
    }
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, kind, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                factory.accept(&mut sessions, stream, Some(peer.ip()), shutdown.clone());
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    finish(sessions, kind).await;
}

/// Gives open sessions 5 s to end after shutdown, then closes them.
pub(crate) async fn finish(mut sessions: JoinSet<()>, kind: &'static str) {
    let grace = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = sessions.join_next() => if next.is_none() { break },
            _ = &mut grace => {
                warn!(open = sessions.len(), kind, "sessions still open after 5 s; closing them");
                sessions.abort_all();
                break;
            }
        }
    }
}

/// The SMTP session limits of a listener of `kind`, from the configuration; on the onion
/// side also sender authentication, with our onion domains as the servers a peer may sign
/// for.
pub(crate) fn session_config(
    settings: &Settings,
    directory: &Directory,
    kind: SessionKind,
) -> SessionConfig {
    let smtp = &settings.config.smtp;
    let sender_auth = match smtp.sender_auth {
        SenderAuth::Off => SenderAuthMode::Off,
        SenderAuth::Verify => SenderAuthMode::Verify,
        SenderAuth::Require => SenderAuthMode::Require,
    };
    let own_onions = directory
        .onion_domains()
        .iter()
        .filter_map(|d| Onion::parse(d).ok())
        .collect();
    SessionConfig {
        hostname: directory.primary_domain().to_owned(),
        sender_auth,
        own_onions,
        max_message_size: smtp.max_message_size,
        max_recipients: smtp.max_recipients,
        max_errors: smtp.max_errors,
        command_timeout: smtp.command_timeout,
        data_timeout: smtp.data_timeout,
        stress_command_timeout: smtp.stress_command_timeout,
        stress_data_timeout: smtp.stress_data_timeout,
        min_data_rate: smtp.min_data_rate,
        kind,
        ..SessionConfig::default()
    }
}
