//! Plain TCP listeners (`[smtp] listen`): accept connections and run an SMTP session on
//! each, with onion-side rules, at most `max_sessions` at once (421 beyond).
//!
//! The address the client comes from is never looked at for policy: behind C tor every
//! client is 127.0.0.1.

pub mod passwd;
pub mod submission;
pub mod tls;

use std::sync::Arc;

use smtorp_smtp::{serve, Policy, Session, SessionConfig, SessionKind};

use crate::config::Settings;
use std::future::Future;
use tokio::io::AsyncWriteExt;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::intake::SmtpHandler;

/// Everything a listener needs to run sessions.
pub struct SessionFactory<P> {
    /// Limits and our name.
    pub config: SessionConfig,
    /// Who may send to whom.
    pub policy: P,
    /// Where finished transactions go.
    pub handler: Arc<SmtpHandler>,
    /// Concurrent sessions allowed.
    pub max_sessions: usize,
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Runs one session on any stream, ending it with 421 when `shutdown` turns true.
pub async fn run_session<S, P>(
    stream: S,
    factory: &SessionFactory<P>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    P: Policy + Clone,
{
    let session = Session::new(factory.config.clone(), factory.policy.clone());
    let stop = async move { stopped(&mut shutdown).await };
    if let Err(e) = serve(stream, session, factory.handler.as_ref(), stop).await {
        debug!(error = %e, "session ended with an I/O error");
    }
}

/// Serves a bound listener until shutdown; waits (a few seconds at most) for open sessions.
pub async fn serve_tcp<P>(
    listener: TcpListener,
    factory: Arc<SessionFactory<P>>,
    shutdown: watch::Receiver<bool>,
) where
    P: Policy + Clone + Send + Sync + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "SMTP listener ready (onion-side rules)");
    }
    accept_loop(listener, factory, shutdown).await;
}

async fn accept_loop<P>(
    listener: TcpListener,
    factory: Arc<SessionFactory<P>>,
    shutdown: watch::Receiver<bool>,
) where
    P: Policy + Clone + Send + Sync + 'static,
{
    let (limit, hostname) = (factory.max_sessions, factory.config.hostname.clone());
    accept_sessions(
        listener,
        limit,
        &hostname,
        "smtp",
        shutdown,
        move |stream, stop| {
            let factory = factory.clone();
            async move { run_session(stream, &factory, stop).await }
        },
    )
    .await;
}

/// The accept loop every TCP listener shares: at most `max_sessions` sessions at once (a
/// connection beyond that gets `421 4.3.2` and is closed), each run by `run`; on shutdown,
/// stops accepting and gives open sessions (which got their 421 from the same signal) 5 s
/// to end before closing them.
pub async fn accept_sessions<F, Fut>(
    listener: TcpListener,
    max_sessions: usize,
    hostname: &str,
    kind: &'static str,
    mut shutdown: watch::Receiver<bool>,
    run: F,
) where
    F: Fn(TcpStream, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_sessions));
    let mut sessions = JoinSet::new();
    let session_stop = shutdown.clone();
    let busy = format!("421 4.3.2 {hostname} Too many connections, try again later\r\n");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let mut stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        warn!(error = %e, kind, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    let busy = busy.clone();
                    sessions.spawn(async move {
                        let _ = stream.write_all(busy.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let session = run(stream, session_stop.clone());
                sessions.spawn(async move {
                    session.await;
                    drop(permit);
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    let grace = tokio::time::sleep(std::time::Duration::from_secs(5));
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

/// The SMTP session limits of a listener of `kind`, from the configuration.
pub fn session_config(settings: &Settings, hostname: &str, kind: SessionKind) -> SessionConfig {
    let smtp = &settings.config.smtp;
    SessionConfig {
        hostname: hostname.to_owned(),
        max_message_size: smtp.max_message_size,
        max_recipients: smtp.max_recipients,
        max_errors: smtp.max_errors,
        command_timeout: settings.command_timeout,
        data_timeout: settings.data_timeout,
        kind,
        ..SessionConfig::default()
    }
}
