//! `smtorp run`: wires the parts together — queue, delivery scheduler, intake, SMTP
//! listeners, maildrop pickup, control socket — and stops them cleanly on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use smtorp_delivery::{
    BounceFuture, Bouncer, ClientAuth, FailureReport, MaildirSink, Parts, RemoteDelivery,
    Scheduler, SchedulerConfig, SystemClock,
};
use smtorp_queue::{Origin, Queue};
use smtorp_smtp::{SessionKind, Slots};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, OnceCell};
use tracing::{error, info, warn};

use crate::admin::control;
use crate::admin::Admin;
use crate::config::layout;
use crate::config::SenderAuth;
use crate::config::Settings;
use crate::intake::bounce::DsnBouncer;
use crate::intake::headers::unix_now;
use crate::intake::space::DiskSpace;
use crate::intake::Intake;
use crate::listen::handler::Shared;
use crate::listen::{serve_tcp, Guarded, SessionFactory};
use crate::local::{maildrop, socket};
use crate::onion;
use crate::onion::connector::OutboundConnector;
use crate::policy::{Directory, KnownPeers, OnionSidePolicy, SenderRules};

/// How long a peer may take to answer one SMTP command (RFC 5321 4.5.3.2 suggests 5 min).
const REMOTE_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Sessions to one destination at once (all on one circuit: `[onion] max_streams_per_circuit`
/// may not be lower).
pub(crate) const SESSIONS_PER_DESTINATION: usize = 4;

/// The bouncer, once the intake it queues through exists.
struct LateBouncer(Arc<OnceCell<Arc<DsnBouncer>>>);

impl Bouncer for LateBouncer {
    fn bounce<'a>(&'a self, report: &'a FailureReport<'a>) -> BounceFuture<'a> {
        Box::pin(async move {
            match self.0.get() {
                Some(bouncer) => bouncer.bounce(report).await,
                None => Err("the bouncer is not ready yet".into()),
            }
        })
    }
}

/// Opens the queue, naming the likely cause when another process holds it.
pub(crate) fn open_queue(settings: &Settings) -> anyhow::Result<Queue> {
    Queue::open(&settings.queue_dir()).with_context(|| {
        format!(
            "cannot open the queue in {} (is another smtorp daemon running with this data_dir?)",
            settings.queue_dir().display()
        )
    })
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    layout::create(&settings)?;
    let queue = Arc::new(open_queue(&settings)?);
    let onion_enabled = settings.config.onion.enabled;
    let onion = if onion_enabled {
        Some(onion::ensure_address(&settings)?)
    } else {
        layout::onion_address(&settings)
    };
    let directory = Arc::new(Directory::new(settings.clone(), onion.as_deref()));
    info!(domain = %directory.primary_domain(), queued = queue.len(), "smtorp starting");
    let sender_auth = settings.config.smtp.sender_auth;
    if sender_auth != SenderAuth::Off && directory.onion_domains().is_empty() {
        let text = "sender authentication needs our onion address: turn on [onion] enabled, \
                    or put the onion address of the C tor service in [local] domains";
        if sender_auth == SenderAuth::Require {
            anyhow::bail!("[smtp] sender_auth = \"require\": {text}");
        }
        warn!("XONIONAUTH not offered: {text}");
    }
    let peers = Arc::new(KnownPeers::load(
        &settings.peers_key(),
        queue.clone(),
        crate::intake::headers::unix_now(),
    )?);
    let senders = Arc::new(SenderRules::new(
        sender_auth,
        directory.clone(),
        Some(peers.clone()),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let transport = Arc::new(OnceCell::new());
    let connector = OutboundConnector {
        routes: settings.routes.clone(),
        onion: transport.clone(),
        onion_enabled,
        connect_timeout: Duration::from_secs(30),
        route_auth: settings.config.delivery.route_auth,
    };
    let client_auth = match sender_auth {
        SenderAuth::Off => None,
        _ => ClientAuth::new(onion::signers(&settings)?).map(Arc::new),
    };
    let remote = Arc::new(
        RemoteDelivery::new(
            Arc::new(connector),
            directory.primary_domain().to_owned(),
            REMOTE_COMMAND_TIMEOUT,
        )
        .with_auth(client_auth),
    );
    // The bouncer queues through the intake, and the intake wakes the scheduler: the
    // bouncer is set once both exist.
    let bouncer_cell: Arc<OnceCell<Arc<DsnBouncer>>> = Arc::new(OnceCell::new());
    let scheduler = Scheduler::new(
        Parts {
            queue: queue.clone(),
            router: directory.clone(),
            local: Arc::new(MaildirSink {
                host: directory.primary_domain().to_owned(),
            }),
            remote: Some(remote.clone()),
            bouncer: Some(Arc::new(LateBouncer(bouncer_cell.clone()))),
            clock: Arc::new(SystemClock),
        },
        SchedulerConfig {
            retry_after: settings.retry_after.clone(),
            max_lifetime: settings.config.delivery.max_lifetime,
            concurrency: settings.config.delivery.concurrency,
            sessions_per_destination: SESSIONS_PER_DESTINATION,
        },
    );
    let handle = scheduler.handle();
    let intake = Arc::new(Intake::new(
        queue.clone(),
        directory.clone(),
        Arc::new(handle.clone()),
        DiskSpace::new(&settings.queue_dir(), settings.config.smtp.min_free_space),
        senders.clone(),
    ));
    let bouncer = Arc::new(DsnBouncer {
        intake: intake.clone(),
        domain: directory.primary_domain().to_owned(),
    });
    let _ = bouncer_cell.set(bouncer.clone());
    let onion_config = &settings.config.onion;
    let health = Arc::new(onion::health::Health::new(
        onion::defences(&settings),
        onion_config.probe_interval,
        onion_config.probe_failures,
    ));
    let admin = Arc::new(Admin {
        queue: queue.clone(),
        bouncer,
        scheduler: Some(handle),
        remote: Some(remote),
        transport: onion_enabled.then(|| transport.clone()),
        health: onion_enabled.then(|| health.clone()),
        address: onion.clone(),
        started: Some((std::time::Instant::now(), unix_now())),
        peers,
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(scheduler.run(stop_rx.clone()));
    tasks.spawn(maildrop::Pickup::new(intake.clone(), directory.clone()).run(stop_rx.clone()));
    tasks.spawn(socket::serve(
        settings.submit_socket(),
        intake.clone(),
        directory.clone(),
        stop_rx.clone(),
    ));
    {
        let (path, admin, stop) = (settings.control_socket(), admin.clone(), stop_rx.clone());
        tasks.spawn(async move {
            if let Err(e) = control::serve(path, admin, stop).await {
                error!(error = %e, "control socket failed");
            }
        });
    }
    let factory = Arc::new(SessionFactory {
        config: crate::listen::session_config(&settings, &directory, SessionKind::OnionSide),
        policy: Guarded {
            rules: OnionSidePolicy {
                directory: directory.clone(),
                senders,
            },
            space: intake.space().clone(),
        },
        shared: Arc::new(Shared {
            intake: intake.clone(),
            origin: Origin::Smtp,
            auth: None,
        }),
        slots: Slots::new(
            settings.config.smtp.max_sessions,
            settings.config.smtp.wait_for_session,
        ),
        tls: None,
    });
    for addr in &settings.smtp_listen {
        // Bound before "ready", so that a bad address fails the start.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ([smtp] listen)"))?;
        tasks.spawn(serve_tcp(
            listener,
            factory.clone(),
            "smtp",
            stop_rx.clone(),
        ));
    }
    // The submission port (STARTTLS + AUTH), bound before "ready" too.
    crate::listen::submission::spawn(&settings, &directory, &intake, &mut tasks, &stop_rx).await?;
    if let (true, Some(address)) = (onion_enabled, onion.clone()) {
        // The supervisor owns the service and carries out the repairs the probe asks for.
        let (repair_tx, repair_rx) = tokio::sync::mpsc::channel(1);
        tasks.spawn(onion::serve(
            settings.clone(),
            factory.clone(),
            transport.clone(),
            address.clone(),
            health.clone(),
            repair_rx,
            stop_rx.clone(),
        ));
        let probe = onion::probe::ProbeConfig {
            interval: onion_config.probe_interval,
            timeout: onion_config.probe_timeout,
            failures: onion_config.probe_failures,
        };
        tasks.spawn(onion::probe::run(
            probe,
            address,
            health.clone(),
            transport.clone(),
            repair_tx,
            stop_rx.clone(),
        ));
    }
    info!("smtorp ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
    let _ = stop_tx.send(true);
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(8), all_done)
        .await
        .is_err()
    {
        warn!("some tasks did not stop in time");
    }
    queue.sync().await.context("final queue flush")?;
    info!("smtorp stopped");
    Ok(())
}
