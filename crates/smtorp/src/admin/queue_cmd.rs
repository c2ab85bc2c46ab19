//! `smtorp queue ...` and `smtorp status`: they ask the running daemon over its control
//! socket, or, when none runs, execute the same request on the store directly.

use std::sync::Arc;

use crate::say;

use anyhow::bail;
use smtorp_queue::{Envelope, RecipientState};

use crate::admin::control;
use crate::admin::{Admin, Answer, Request, StatusReport};
use crate::config::layout;
use crate::config::Settings;
use crate::daemon;
use crate::intake::bounce::DsnBouncer;
use crate::intake::headers::unix_now;
use crate::intake::Intake;
use crate::policy::{Directory, KnownPeers, SenderRules};

/// Runs `request` on the daemon, or on the store when no daemon answers.
pub(crate) fn run(settings: &Arc<Settings>, request: Request) -> anyhow::Result<Answer> {
    if let Some(answer) = control::ask(&settings.control_socket(), &request)? {
        return Ok(answer);
    }
    run_here(settings, request)
}

/// `smtorp status`'s facts: from the daemon, or from the store when none runs; with no
/// daemon and a store that cannot be opened, a report that says so.
pub(crate) fn status(settings: &Arc<Settings>) -> anyhow::Result<StatusReport> {
    let answer = match control::ask(&settings.control_socket(), &Request::Status)? {
        Some(answer) => answer,
        None => match run_here(settings, Request::Status) {
            Ok(answer) => answer,
            Err(e) => {
                eprintln!("smtorp: {e:#}");
                return Ok(StatusReport {
                    daemon_running: false,
                    onion_address: layout::onion_address(settings),
                    queue_available: false,
                    ..StatusReport::default()
                });
            }
        },
    };
    match answer {
        Answer::Status(report) => Ok(*report),
        _ => bail!("the daemon answered something else than a status"),
    }
}

/// Runs `request` on the store itself (no daemon runs).
fn run_here(settings: &Arc<Settings>, request: Request) -> anyhow::Result<Answer> {
    let queue = Arc::new(daemon::open_queue(settings)?);
    let address = layout::onion_address(settings);
    let directory = Arc::new(Directory::new(settings.clone(), address.as_deref()));
    let peers = Arc::new(KnownPeers::load(
        &settings.peers_key(),
        queue.clone(),
        unix_now(),
    )?);
    let senders = Arc::new(SenderRules::new(
        settings.config.smtp.sender_auth,
        directory.clone(),
        Some(peers.clone()),
    ));
    let intake = Arc::new(Intake::new(
        queue.clone(),
        directory.clone(),
        Arc::new(tokio::sync::Notify::new()),
        crate::intake::space::DiskSpace::new(&settings.queue_dir(), 0),
        senders,
    ));
    let admin = Admin {
        queue,
        bouncer: Arc::new(DsnBouncer {
            intake,
            domain: directory.primary_domain().to_owned(),
        }),
        scheduler: None,
        remote: None,
        transport: None,
        health: None,
        address,
        started: None,
        peers,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(admin.execute(request))
        .map_err(|e| anyhow::anyhow!(e))
}

use crate::admin::status::age_text as age;

fn state(s: RecipientState) -> &'static str {
    match s {
        RecipientState::Pending => "pending",
        RecipientState::Delivered => "delivered",
        RecipientState::Failed => "failed",
    }
}

/// One line of `queue list`.
pub(crate) fn format_line(env: &Envelope, now: u64) -> String {
    let sender = if env.sender.is_empty() {
        "<>"
    } else {
        env.sender.as_str()
    };
    let next = match env.next_due {
        Some(t) if t > now => format!("next try in {}", age(t - now)),
        Some(_) => "due now".into(),
        None => "done".into(),
    };
    let recipients: Vec<String> = env
        .recipients
        .iter()
        .map(|r| match &r.last_reply {
            Some(e) => format!(
                "{} ({}, {} attempts: {e})",
                r.address,
                state(r.state),
                r.attempts
            ),
            None => format!(
                "{} ({}, {} attempts)",
                r.address,
                state(r.state),
                r.attempts
            ),
        })
        .collect();
    format!(
        "{}  {:>4}  {:>8}  {}  {}  -> {}",
        env.id,
        age(now.saturating_sub(env.arrival)),
        env.size,
        sender,
        next,
        recipients.join(", ")
    )
}

/// Prints an answer for a person.
pub(crate) fn print(answer: Answer) -> anyhow::Result<()> {
    let now = unix_now();
    match answer {
        Answer::Envelopes(list) => {
            for env in &list {
                say!("{}", format_line(env, now));
            }
            say!("-- {} message(s) in the queue", list.len());
        }
        Answer::Message { envelope, header } => {
            say!("queue id:  {}", envelope.id);
            say!(
                "arrived:   {} ({} ago)",
                crate::intake::headers::rfc5322_date(envelope.arrival),
                age(now.saturating_sub(envelope.arrival))
            );
            say!("origin:    {:?}", envelope.origin);
            say!("size:      {} bytes", envelope.size);
            say!("sender:    <{}>", envelope.sender);
            match envelope.next_due {
                Some(t) if t > now => say!("next try:  in {}", age(t - now)),
                Some(_) => say!("next try:  now"),
                None => say!("next try:  none"),
            }
            for r in &envelope.recipients {
                say!(
                    "recipient: {} ({}, {} attempts){}",
                    r.address,
                    state(r.state),
                    r.attempts,
                    r.last_reply
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
            say!();
            say!("{}", header.replace("\r\n", "\n").trim_end_matches('\n'));
        }
        Answer::Count(n) => say!("{n} message(s)"),
        // `smtorp status` prints its report itself (with its verdict and exit code).
        Answer::Status(_) => bail!("the daemon answered a status to a queue request"),
        Answer::Forgotten(true) => say!("forgotten: its unauthenticated mail is accepted again"),
        Answer::Forgotten(false) => say!("not a known peer: nothing to forget"),
    }
    Ok(())
}

/// Checks a queue id argument early, with a clear message.
pub(crate) fn check_id(id: &str) -> anyhow::Result<()> {
    if id.len() != 16 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("`{id}` is not a queue id (16 hex digits, as `smtorp queue list` shows)");
    }
    Ok(())
}
