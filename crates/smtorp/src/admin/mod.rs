//! The administrative commands (`smtorp queue list|show|retry|delete`, `smtorp status`) as
//! one executor, used by the daemon behind its control socket and by the CLI directly when
//! no daemon runs (sled lets only one process open the queue).

pub(crate) mod control;
pub(crate) mod queue_cmd;

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use smtorp_delivery::{
    Bouncer, FailedRecipient, FailureReport, RemoteDelivery, Reply, SchedulerHandle, Stats,
};
use smtorp_onion::{OnionTransport, ServiceStatus};
use smtorp_queue::{Envelope, Origin, Queue, QueueId, RecipientState};
use tokio::sync::OnceCell;
use tracing::info;

use crate::intake::bounce::DsnBouncer;
use crate::intake::headers::{split_header, unix_now};
use crate::policy::KnownPeers;

/// A request (the JSON line sent over the control socket).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub(crate) enum Request {
    /// Every queued envelope.
    QueueList,
    /// One message: envelope and header.
    QueueShow {
        /// The queue id.
        id: String,
    },
    /// Make one message (or all with `None`) due now.
    QueueRetry {
        /// The queue id, or `None` for every message.
        id: Option<String>,
    },
    /// Remove a message, bouncing its pending recipients unless `silent`.
    QueueDelete {
        /// The queue id.
        id: String,
        /// No bounce.
        silent: bool,
    },
    /// Daemon, onion and queue state.
    Status,
    /// Forget that a peer authenticated its mail (XONIONAUTH), so that its unauthenticated
    /// mail is accepted again (e.g. after it lost its key or stopped signing).
    ForgetPeer {
        /// The peer's onion address.
        onion: String,
    },
}

/// A successful answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Answer {
    /// For `QueueList`.
    Envelopes(Vec<Envelope>),
    /// For `QueueShow`.
    Message {
        /// The envelope.
        envelope: Envelope,
        /// The header section, as text.
        header: String,
    },
    /// How many messages a retry or delete touched.
    Count(usize),
    /// For `Status`.
    Status(StatusReport),
    /// For `ForgetPeer`: whether the peer was known.
    Forgotten(bool),
}

/// What `smtorp status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StatusReport {
    /// True when a daemon answered.
    pub(crate) daemon_running: bool,
    /// Seconds since the daemon started.
    pub(crate) uptime_secs: Option<u64>,
    /// Our onion address, if any.
    pub(crate) onion_address: Option<String>,
    /// arti's bootstrap status, when the onion service is on.
    pub(crate) tor: Option<String>,
    /// arti's view of the onion service.
    pub(crate) onion_service: Option<String>,
    /// Messages in the queue.
    pub(crate) messages: usize,
    /// Recipients waiting for a first attempt.
    pub(crate) recipients_new: usize,
    /// Recipients deferred after a failed attempt.
    pub(crate) recipients_deferred: usize,
    /// Recipients delivered since start (daemon only).
    pub(crate) delivered_since_start: Option<u64>,
    /// Attempts deferred since start (daemon only).
    pub(crate) deferred_since_start: Option<u64>,
    /// Recipients failed since start (daemon only).
    pub(crate) failed_since_start: Option<u64>,
    /// Outbound SMTP connections opened since start (daemon only).
    pub(crate) connections_since_start: Option<u64>,
    /// False while the queue's store does not answer (a full disk, a hung device).
    #[serde(default = "yes")]
    pub(crate) queue_available: bool,
    /// Peers known to authenticate their mail (XONIONAUTH).
    #[serde(default)]
    pub(crate) known_peers: usize,
}

fn yes() -> bool {
    true
}

/// Runs administrative requests against a queue.
pub(crate) struct Admin {
    /// The queue.
    pub(crate) queue: Arc<Queue>,
    /// Bounces for `queue delete`.
    pub(crate) bouncer: Arc<DsnBouncer>,
    /// The delivery scheduler: wake-up, back-offs, counters (daemon only).
    pub(crate) scheduler: Option<SchedulerHandle>,
    /// The remote deliverer, for its connection counter (daemon only).
    pub(crate) remote: Option<Arc<RemoteDelivery>>,
    /// The Tor client, once bootstrapped (daemon only).
    pub(crate) transport: Option<Arc<OnceCell<Arc<OnionTransport>>>>,
    /// The onion service, once launched (daemon only).
    pub(crate) service: Option<Arc<OnceCell<ServiceStatus>>>,
    /// Our onion address.
    pub(crate) address: Option<String>,
    /// When the daemon started (daemon only).
    pub(crate) started: Option<Instant>,
    /// The peers known to authenticate their mail.
    pub(crate) peers: Arc<KnownPeers>,
}

fn parse_id(text: &str) -> Result<QueueId, String> {
    text.parse::<QueueId>().map_err(|e| e.to_string())
}

impl Admin {
    async fn envelope(&self, id: QueueId) -> Result<Envelope, String> {
        self.queue
            .call(move |q| q.envelope(id))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no message {id} in the queue"))
    }

    /// Executes one request. Store calls are bounded in time: a stuck store gives an error,
    /// never a hang.
    pub(crate) async fn execute(&self, request: Request) -> Result<Answer, String> {
        let queue = &self.queue;
        match request {
            Request::QueueList => queue
                .call(|q| q.list())
                .await
                .map(Answer::Envelopes)
                .map_err(|e| e.to_string()),
            Request::QueueShow { id } => {
                let envelope = self.envelope(parse_id(&id)?).await?;
                let id = envelope.id;
                let prefix = queue
                    .call(move |q| q.body_prefix(id, 64 * 1024))
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                let header = String::from_utf8_lossy(split_header(&prefix).0).into_owned();
                Ok(Answer::Message { envelope, header })
            }
            Request::QueueRetry { id } => {
                let targets = match id {
                    Some(id) => vec![self.envelope(parse_id(&id)?).await?],
                    None => queue.call(|q| q.list()).await.map_err(|e| e.to_string())?,
                };
                let now = unix_now();
                let due: Vec<Envelope> = targets
                    .into_iter()
                    .filter(Envelope::has_pending)
                    .map(|mut envelope| {
                        envelope.next_due = Some(now);
                        envelope
                    })
                    .collect();
                let count = due.len();
                queue
                    .call(move |q| due.iter().try_for_each(|e| q.update(e)))
                    .await
                    .map_err(|e| e.to_string())?;
                queue.sync().await.map_err(|e| e.to_string())?;
                if let Some(scheduler) = &self.scheduler {
                    scheduler.reset_backoff();
                    scheduler.wake();
                }
                info!(count, "queue retry: messages made due now");
                Ok(Answer::Count(count))
            }
            Request::QueueDelete { id, silent } => {
                let id = parse_id(&id)?;
                let envelope = self.envelope(id).await?;
                let failed: Vec<FailedRecipient> = envelope
                    .recipients
                    .iter()
                    .filter(|r| r.state == RecipientState::Pending)
                    .map(|r| FailedRecipient {
                        address: r.address.clone(),
                        reply: Reply::new(
                            550,
                            [5, 0, 0],
                            "deleted from the queue by the administrator",
                        ),
                        expired: false,
                    })
                    .collect();
                let bounce = !silent
                    && !failed.is_empty()
                    && !envelope.sender.is_empty()
                    && envelope.origin != Origin::Bounce;
                if bounce {
                    let prefix = queue
                        .call(move |q| q.body_prefix(id, 64 * 1024))
                        .await
                        .map_err(|e| e.to_string())?
                        .unwrap_or_default();
                    let report = FailureReport {
                        envelope: &envelope,
                        failed: &failed,
                        header: split_header(&prefix).0,
                    };
                    self.bouncer.bounce(&report).await?;
                }
                let removed = queue
                    .call(move |q| q.remove(id))
                    .await
                    .map_err(|e| e.to_string())?;
                queue.sync().await.map_err(|e| e.to_string())?;
                info!(queue_id = %id, bounced = bounce, "deleted from the queue");
                Ok(Answer::Count(usize::from(removed)))
            }
            Request::Status => Ok(Answer::Status(self.status().await)),
            Request::ForgetPeer { onion } => {
                let onion = onion.trim().trim_end_matches('.').to_ascii_lowercase();
                smtorp_smtp::Onion::parse(&onion).map_err(|e| format!("{onion}: {e}"))?;
                let known = self.peers.forget(&onion).await.map_err(|e| e.to_string())?;
                info!(known, "peer forgotten");
                Ok(Answer::Forgotten(known))
            }
        }
    }

    async fn status(&self) -> StatusReport {
        let listed = self.queue.call(|q| q.list()).await;
        let queue_available = listed.is_ok();
        let list = listed.unwrap_or_default();
        let pending = list
            .iter()
            .flat_map(|e| &e.recipients)
            .filter(|r| r.state == RecipientState::Pending);
        let (new, deferred) = pending.fold((0, 0), |(n, d), r| {
            if r.attempts == 0 {
                (n + 1, d)
            } else {
                (n, d + 1)
            }
        });
        let count = |f: fn(&Stats) -> &std::sync::atomic::AtomicU64| {
            self.scheduler
                .as_ref()
                .map(|s| f(s.stats()).load(std::sync::atomic::Ordering::Relaxed))
        };
        StatusReport {
            daemon_running: self.started.is_some(),
            uptime_secs: self.started.map(|s| s.elapsed().as_secs()),
            onion_address: self.address.clone(),
            tor: self.transport.as_ref().map(|cell| match cell.get() {
                Some(t) => t.bootstrap_status(),
                None => "not bootstrapped yet".into(),
            }),
            onion_service: self.service.as_ref().map(|cell| match cell.get() {
                Some(s) => s.state(),
                None => "not launched yet".into(),
            }),
            messages: list.len(),
            recipients_new: new,
            recipients_deferred: deferred,
            delivered_since_start: count(|s| &s.delivered),
            deferred_since_start: count(|s| &s.deferred),
            failed_since_start: count(|s| &s.failed),
            connections_since_start: self.remote.as_ref().map(|r| r.connections_opened()),
            queue_available,
            known_peers: self.peers.count(),
        }
    }
}
