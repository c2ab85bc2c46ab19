//! The submission port for mail clients (RFC 6409, `[submission] listen`, default
//! 127.0.0.1:587): STARTTLS, then AUTH PLAIN or LOGIN against `<data_dir>/passwd`, and only
//! then MAIL. The client's address is never trusted, loopback included: with C tor in front,
//! onion clients are loopback too.
//!
//! Rules: an authenticated user sends only as one of their own addresses (user@ each of our
//! domains, and the aliases that point at them); recipients are local users or any valid
//! `.onion` address (relayed). Every message gets the privacy hygiene of submitted mail
//! (crate::intake::privacy) and a Received header that names no client, then goes through the one
//! intake with `Origin::Submission`.
//!
//! Failed AUTH: the session waits 1 s, 2 s, 3 s ... before answering and closes after 3
//! failures; and a user with [`USER_FAILURE_LIMIT`] failures within [`USER_FAILURE_WINDOW`]
//! (from any session) is refused with 454 4.7.0 until the window passes. Failures are
//! logged with the user name (escaped, shortened), never the password.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use smtorp_queue::Origin;
use smtorp_smtp::{
    serve_submission, Credentials, Handler, Reply, Session, SessionConfig, SessionKind, Transaction,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::{PrivacyConfig, Settings};
use crate::intake::privacy;
use crate::intake::{Arrival, Intake, IntakeError};
use crate::listen::{accept_sessions, stopped};
use crate::listen::{passwd, tls};
use crate::policy::{Directory, SubmissionPolicy};

/// Failed AUTH attempts for one user (from all sessions) that lock the user out for a while.
pub const USER_FAILURE_LIMIT: u32 = 10;
/// The window of [`USER_FAILURE_LIMIT`].
pub const USER_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Users tracked at most by the failure counter (the oldest entries are dropped).
const MAX_TRACKED_USERS: usize = 4096;

/// Recent AUTH failures per user.
#[derive(Debug, Default)]
struct Failures(HashMap<String, (u32, Instant)>);

impl Failures {
    fn locked(&mut self, user: &str) -> bool {
        match self.0.get(user) {
            Some((_, since)) if since.elapsed() > USER_FAILURE_WINDOW => {
                self.0.remove(user);
                false
            }
            Some((count, _)) => *count >= USER_FAILURE_LIMIT,
            None => false,
        }
    }

    fn failed(&mut self, user: &str) -> u32 {
        if self.0.len() >= MAX_TRACKED_USERS && !self.0.contains_key(user) {
            self.0
                .retain(|_, (_, since)| since.elapsed() <= USER_FAILURE_WINDOW);
            if self.0.len() >= MAX_TRACKED_USERS {
                if let Some(oldest) = self
                    .0
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| k.clone())
                {
                    self.0.remove(&oldest);
                }
            }
        }
        let entry = self.0.entry(user.to_owned()).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.0
    }

    fn succeeded(&mut self, user: &str) {
        self.0.remove(user);
    }
}

/// A user name fit for a log line: at most 64 characters, printed with `?` (escaped).
fn loggable(user: &str) -> String {
    user.chars().take(64).collect()
}

/// The submission sessions' handler: checks passwords, cleans and enqueues messages.
pub struct SubmissionHandler {
    /// The intake.
    pub intake: Arc<Intake>,
    /// Our domains and users.
    pub directory: Arc<Directory>,
    /// The configuration (users, the password file).
    pub settings: Arc<Settings>,
    failures: Mutex<Failures>,
}

impl SubmissionHandler {
    /// A handler for these parts.
    pub fn new(
        intake: Arc<Intake>,
        directory: Arc<Directory>,
        settings: Arc<Settings>,
    ) -> SubmissionHandler {
        SubmissionHandler {
            intake,
            directory,
            settings,
            failures: Mutex::new(Failures::default()),
        }
    }

    fn privacy(&self) -> &PrivacyConfig {
        &self.settings.config.privacy
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Handler for SubmissionHandler {
    async fn enqueue(&self, tx: Transaction) -> Result<String, Reply> {
        let data = privacy::clean_submitted(
            &tx.data,
            &tx.sender,
            self.directory.primary_domain(),
            self.privacy(),
        );
        let arrival = Arrival {
            sender: &tx.sender,
            recipients: &tx.recipients,
            // Our Received names no client: no HELO name, no address.
            helo: None,
            origin: Origin::Submission,
            data: &data,
        };
        match self.intake.enqueue(arrival).await {
            Ok(id) => {
                debug!(queue_id = %id, user = ?tx.auth_user, "submitted");
                Ok(id.to_string())
            }
            Err(IntakeError::Rejected(why)) => Err(Reply::new(554, [5, 6, 0], why)),
            Err(IntakeError::Store(e)) => {
                warn!(error = %e, "cannot queue a submitted message: answering 451");
                Err(Reply::new(
                    451,
                    [4, 3, 0],
                    "Queue temporarily unavailable, try again later",
                ))
            }
        }
    }

    async fn authenticate(&self, credentials: Credentials) -> Result<String, Reply> {
        let Credentials {
            user: login,
            password,
        } = credentials;
        let user = passwd::login_user(&self.directory, &self.settings, &login);
        let key = user.clone().unwrap_or_else(|| login.to_ascii_lowercase());
        if self.failures().locked(&key) {
            warn!(user = ?loggable(&login), "AUTH refused: too many recent failures for this user");
            return Err(Reply::new(
                454,
                [4, 7, 0],
                "Temporary authentication failure, try again later",
            ));
        }
        let file = passwd::path(&self.settings);
        let candidate = user.clone();
        let ok = tokio::task::spawn_blocking(move || {
            passwd::check(&file, candidate.as_deref(), &password)
        })
        .await
        .unwrap_or(false);
        match (ok, user) {
            (true, Some(user)) => {
                self.failures().succeeded(&user);
                info!(user = %user, "AUTH succeeded");
                Ok(user)
            }
            _ => {
                let count = self.failures().failed(&key);
                warn!(user = ?loggable(&login), recent_failures = count, "AUTH failed");
                Err(Reply::new(
                    535,
                    [5, 7, 8],
                    "Authentication credentials invalid",
                ))
            }
        }
    }
}

/// Binds the `[submission] listen` sockets and spawns their accept loops into `tasks`. Makes
/// the self-signed certificate first if there is none. Does nothing without listeners.
pub async fn spawn(
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
    let handler = Arc::new(SubmissionHandler::new(
        intake.clone(),
        directory.clone(),
        settings.clone(),
    ));
    let port = Arc::new(Port {
        config: super::session_config(
            settings,
            directory.primary_domain(),
            SessionKind::Submission,
        ),
        policy: SubmissionPolicy(directory.clone()),
        handler,
        acceptor,
        max_sessions: settings.config.smtp.max_sessions,
    });
    for text in listen {
        let addr: SocketAddr = text
            .parse()
            .with_context(|| format!("submission.listen: `{text}` is not IP:PORT"))?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ([submission] listen)"))?;
        info!(%addr, "submission listener ready (STARTTLS + AUTH)");
        tasks.spawn(accept_loop(listener, port.clone(), shutdown.clone()));
    }
    Ok(())
}

/// Everything a submission session needs.
struct Port {
    config: SessionConfig,
    policy: SubmissionPolicy,
    handler: Arc<SubmissionHandler>,
    acceptor: TlsAcceptor,
    max_sessions: usize,
}

async fn accept_loop(listener: TcpListener, port: Arc<Port>, shutdown: watch::Receiver<bool>) {
    let (limit, hostname) = (port.max_sessions, port.config.hostname.clone());
    accept_sessions(
        listener,
        limit,
        &hostname,
        "submission",
        shutdown,
        move |stream, mut stop| {
            let port = port.clone();
            async move {
                let session = Session::new(port.config.clone(), port.policy.clone());
                let stopping = async move { stopped(&mut stop).await };
                if let Err(e) = serve_submission(
                    stream,
                    session,
                    port.handler.as_ref(),
                    &port.acceptor,
                    stopping,
                )
                .await
                {
                    debug!(error = %e, "submission session ended with an I/O error");
                }
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn failure_counter_locks_and_forgets() {
        let mut f = Failures::default();
        for _ in 0..USER_FAILURE_LIMIT {
            assert!(!f.locked("alice"));
            f.failed("alice");
        }
        assert!(f.locked("alice"));
        assert!(!f.locked("bob"));
        f.succeeded("alice");
        assert!(!f.locked("alice"));
    }
}
