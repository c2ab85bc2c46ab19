//! The submission port for mail clients (RFC 6409, `[submission] listen`, default
//! 127.0.0.1:587): STARTTLS, then AUTH PLAIN or LOGIN against `<data_dir>/passwd`
//! ([`super::auth`]), and only then MAIL, with the rules of [`SubmissionPolicy`]. The
//! client's address is never trusted, loopback included (with C tor in front, onion clients
//! are loopback too); it only counts password failures. Messages get the privacy hygiene of
//! submitted mail and a Received header that names no client, in the one intake
//! (`Origin::Submission`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use smtorp_queue::Origin;
use smtorp_smtp::{SessionKind, Slots};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::info;

use super::auth::Authenticator;
use super::handler::Shared;
use super::{serve_tcp, session_config, tls, Guarded, SessionFactory};
use crate::config::Settings;
use crate::intake::Intake;
use crate::policy::{Directory, SubmissionPolicy};

/// Binds the `[submission] listen` sockets and spawns their accept loops into `tasks`. Makes
/// the self-signed certificate first if there is none. Does nothing without listeners.
pub(crate) async fn spawn(
    settings: &Arc<Settings>,
    directory: &Arc<Directory>,
    intake: &Arc<Intake>,
    tasks: &mut JoinSet<()>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listen = &settings.config.submission.listen;
    if listen.is_empty() {
        return Ok(());
    }
    if let Some(path) = tls::ensure(settings, directory.primary_domain())? {
        info!(path = %path.display(), "made a self-signed certificate for the submission port");
    }
    let acceptor = tls::acceptor(settings)?;
    if let Ok(fp) = tls::fingerprint(settings) {
        info!(sha256 = %fp, "submission certificate");
    }
    let factory = Arc::new(SessionFactory {
        config: session_config(settings, directory, SessionKind::Submission),
        policy: Guarded {
            rules: SubmissionPolicy(directory.clone()),
            space: intake.space().clone(),
        },
        shared: Arc::new(Shared {
            intake: intake.clone(),
            origin: Origin::Submission,
            auth: Some(Arc::new(Authenticator::new(directory.clone()))),
        }),
        slots: Slots::new(
            settings.config.smtp.max_sessions,
            settings.config.smtp.wait_for_session,
        ),
        tls: Some(acceptor),
    });
    for text in listen {
        let addr: SocketAddr = text
            .parse()
            .with_context(|| format!("submission.listen: `{text}` is not IP:PORT"))?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ([submission] listen)"))?;
        tasks.spawn(serve_tcp(
            listener,
            factory.clone(),
            "submission",
            shutdown.clone(),
        ));
    }
    Ok(())
}
