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
        service: None,
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

/// "3m", "2h", "4d": a short age.
fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

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
        Answer::Status(s) => print_status(&s),
        Answer::Forgotten(true) => say!("forgotten: its unauthenticated mail is accepted again"),
        Answer::Forgotten(false) => say!("not a known peer: nothing to forget"),
    }
    Ok(())
}

fn print_status(s: &StatusReport) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    say!(
        "daemon:           {}",
        if s.daemon_running {
            "running"
        } else {
            "not running"
        }
    );
    if let Some(up) = s.uptime_secs {
        say!("uptime:           {}", age(up));
    }
    say!("onion address:    {}", opt(&s.onion_address));
    if s.daemon_running {
        say!("tor:              {}", opt(&s.tor));
        say!("onion service:    {}", opt(&s.onion_service));
    }
    say!("queued messages:  {}", s.messages);
    say!(
        "recipients:       {} new, {} deferred",
        s.recipients_new,
        s.recipients_deferred
    );
    if let (Some(d), Some(f), Some(r)) = (
        s.delivered_since_start,
        s.failed_since_start,
        s.deferred_since_start,
    ) {
        say!("since start:      {d} delivered, {f} failed, {r} deferred attempts");
    }
    if let Some(c) = s.connections_since_start {
        say!("outbound:         {c} connections opened since start");
    }
    say!(
        "known peers:      {} (authenticate their mail)",
        s.known_peers
    );
}

/// Checks a queue id argument early, with a clear message.
pub(crate) fn check_id(id: &str) -> anyhow::Result<()> {
    if id.len() != 16 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("`{id}` is not a queue id (16 hex digits, as `smtorp queue list` shows)");
    }
    Ok(())
}
