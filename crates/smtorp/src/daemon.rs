//! `smtorp run`: wires the parts together — queue, delivery scheduler, intake, SMTP
//! listeners, maildrop pickup, control socket — and stops them cleanly on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use smtorp_delivery::{RemoteDelivery, Scheduler, SchedulerConfig};
use smtorp_queue::{Origin, Queue};
use smtorp_smtp::SessionKind;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, OnceCell};
use tracing::{error, info, warn};

use crate::admin::control;
use crate::admin::Admin;
use crate::config::layout;
use crate::config::Settings;
use crate::intake::bounce::DsnBouncer;
use crate::intake::{Intake, SmtpHandler};
use crate::listen::{serve_tcp, SessionFactory};
use crate::local::maildrop;
use crate::onion;
use crate::onion::connector::OutboundConnector;
use crate::policy::{Directory, OnionSidePolicy};

/// How long a peer may take to answer one SMTP command (RFC 5321 4.5.3.2 suggests 5 min).
const REMOTE_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Opens the queue, naming the likely cause when another process holds it.
pub fn open_queue(settings: &Settings) -> anyhow::Result<Queue> {
    Queue::open(&settings.queue_dir()).with_context(|| {
        format!(
            "cannot open the queue in {} (is another smtorp daemon running with this data_dir?)",
            settings.queue_dir().display()
        )
    })
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
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

    let (stop_tx, stop_rx) = watch::channel(false);
    let transport = Arc::new(OnceCell::new());
    let connector = OutboundConnector {
        routes: settings.routes.clone(),
        onion: transport.clone(),
        onion_enabled,
        connect_timeout: Duration::from_secs(30),
    };
    let remote = RemoteDelivery::new(
        Arc::new(connector),
        directory.primary_domain().to_owned(),
        REMOTE_COMMAND_TIMEOUT,
    );
    let scheduler = Scheduler::new(
        queue.clone(),
        directory.clone(),
        SchedulerConfig {
            retry_after: settings.retry_after.clone(),
            max_lifetime: settings.max_lifetime,
            concurrency: settings.config.delivery.concurrency,
            maildir_host: directory.primary_domain().to_owned(),
        },
    )
    .with_remote(remote);
    let intake = Arc::new(Intake::new(
        queue.clone(),
        directory.clone(),
        scheduler.waker(),
    ));
    let bouncer = Arc::new(DsnBouncer {
        intake: intake.clone(),
        domain: directory.primary_domain().to_owned(),
    });
    let scheduler = scheduler.with_bouncer(bouncer.clone());
    let service_status = Arc::new(OnceCell::new());
    let admin = Arc::new(Admin {
        queue: queue.clone(),
        bouncer,
        waker: Some(scheduler.waker()),
        backoff: Some(scheduler.backoff_reset()),
        stats: Some(scheduler.stats()),
        remote: scheduler.remote(),
        transport: onion_enabled.then(|| transport.clone()),
        service: onion_enabled.then(|| service_status.clone()),
        address: onion.clone(),
        started: Some(std::time::Instant::now()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(scheduler.run(stop_rx.clone()));
    tasks.spawn(maildrop::run(
        settings.maildrop_dir(),
        intake.clone(),
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
        config: crate::listen::session_config(
            &settings,
            directory.primary_domain(),
            SessionKind::OnionSide,
        ),
        policy: OnionSidePolicy(directory.clone()),
        handler: Arc::new(SmtpHandler {
            intake: intake.clone(),
            origin: Origin::Smtp,
        }),
        max_sessions: settings.config.smtp.max_sessions,
    });
    for addr in &settings.smtp_listen {
        // Bound before "ready", so that a bad address fails the start.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ([smtp] listen)"))?;
        tasks.spawn(serve_tcp(listener, factory.clone(), stop_rx.clone()));
    }
    // The submission port (STARTTLS + AUTH), bound before "ready" too.
    crate::listen::submission::spawn(&settings, &directory, &intake, &mut tasks, &stop_rx).await?;
    if onion_enabled {
        tasks.spawn(onion::serve(
            settings.clone(),
            factory.clone(),
            transport.clone(),
            service_status.clone(),
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
