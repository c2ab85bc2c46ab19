//! The administrative commands (`smtorp queue list|show|retry|delete`, `smtorp status`) as
//! one executor, used by the daemon behind its control socket and by the CLI directly when
//! no daemon runs (sled lets only one process open the queue).

pub(crate) mod control;
pub(crate) mod queue_cmd;
pub(crate) mod status;

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use smtorp_delivery::{
    Bouncer, FailedRecipient, FailureReport, RemoteDelivery, Reply, SchedulerHandle, Stats,
};
use smtorp_onion::OnionTransport;
use smtorp_queue::{Envelope, Origin, Queue, QueueId, RecipientState};
use tokio::sync::OnceCell;
use tracing::info;

use crate::intake::bounce::DsnBouncer;
use crate::intake::headers::{split_header, unix_now};
use crate::onion::health::Health;
use crate::policy::KnownPeers;

pub(crate) use self::status::StatusReport;
use self::status::{DestinationStatus, QueueFacts};

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
    Status(Box<StatusReport>),
    /// For `ForgetPeer`: whether the peer was known.
    Forgotten(bool),
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
    /// The onion service and its self-probe (daemon only, onion on).
    pub(crate) health: Option<Arc<Health>>,
    /// Our onion address.
    pub(crate) address: Option<String>,
    /// When the daemon started, monotonic and in Unix seconds (daemon only).
    pub(crate) started: Option<(Instant, u64)>,
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
            Request::Status => Ok(Answer::Status(Box::new(self.status().await))),
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
        let now = unix_now();
        let q = QueueFacts::of(&list, now);
        let count = |f: fn(&Stats) -> &std::sync::atomic::AtomicU64| {
            self.scheduler
                .as_ref()
                .map(|s| f(s.stats()).load(std::sync::atomic::Ordering::Relaxed))
        };
        let tor = self.transport.as_ref().map(|cell| match cell.get() {
            Some(t) => t.bootstrap_status(),
            None => ("not bootstrapped yet".into(), false),
        });
        let destinations = self
            .scheduler
            .as_ref()
            .map(|s| s.destinations(now))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| {
                let (at, reply) = d.last_error?;
                Some(DestinationStatus {
                    name: d.name,
                    last_error_at: at,
                    last_error: reply.to_string(),
                    held_until: d.down_until,
                })
            })
            .collect();
        StatusReport {
            daemon_running: self.started.is_some(),
            started_at: self.started.map(|(_, at)| at),
            uptime_secs: self.started.map(|(s, _)| s.elapsed().as_secs()),
            onion_address: self.address.clone(),
            tor_ready: tor.as_ref().map(|(_, ready)| *ready),
            tor: tor.map(|(text, _)| text),
            onion_service: self.health.as_ref().map(|h| {
                h.service_state()
                    .unwrap_or_else(|| "not running (being launched)".into())
            }),
            probe: self.health.as_ref().map(|h| h.report()),
            defences: self.health.as_ref().map(|h| h.defences()),
            messages: q.messages,
            active_messages: q.active,
            oldest_active_secs: q.oldest_active,
            deferred_messages: q.deferred,
            oldest_deferred_secs: q.oldest_deferred,
            recipients_new: q.recipients_new,
            recipients_deferred: q.recipients_deferred,
            delivered_since_start: count(|s| &s.delivered),
            deferred_since_start: count(|s| &s.deferred),
            failed_since_start: count(|s| &s.failed),
            connections_since_start: self.remote.as_ref().map(|r| r.connections_opened()),
            destinations,
            queue_available,
            known_peers: self.peers.count(),
        }
    }
}
