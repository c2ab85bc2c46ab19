//! `smtorp queue ...`: the queue commands, which work with the daemon running (through its
//! control socket) or stopped (opening the queue directly).

use smtorp_queue::{Envelope, RecipientState};

use crate::config::Settings;
use crate::control::{self, Request};
use crate::daemon;
use crate::headers::unix_now;

/// Every envelope: from the daemon if it runs, else from the store.
fn envelopes(settings: &Settings) -> anyhow::Result<Vec<Envelope>> {
    if let Some(list) = control::ask(&settings.control_socket(), &Request::QueueList)? {
        return Ok(list);
    }
    let queue = daemon::open_queue(settings)?;
    Ok(queue.list()?)
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

/// One line of `queue list`.
pub fn format_line(env: &Envelope, now: u64) -> String {
    let sender = if env.sender.is_empty() { "<>" } else { env.sender.as_str() };
    let next = match env.next_due {
        Some(t) if t > now => format!("next try in {}", age(t - now)),
        Some(_) => "due now".into(),
        None => "done".into(),
    };
    let recipients: Vec<String> = env
        .recipients
        .iter()
        .map(|r| {
            let state = match r.state {
                RecipientState::Pending => "pending",
                RecipientState::Delivered => "delivered",
                RecipientState::Failed => "failed",
            };
            match &r.last_error {
                Some(e) => format!("{} ({state}, {} attempts: {e})", r.address, r.attempts),
                None => format!("{} ({state}, {} attempts)", r.address, r.attempts),
            }
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

/// Prints the queue.
pub fn list(settings: &Settings) -> anyhow::Result<()> {
    let envelopes = envelopes(settings)?;
    let now = unix_now();
    for env in &envelopes {
        println!("{}", format_line(env, now));
    }
    println!("-- {} message(s) in the queue", envelopes.len());
    Ok(())
}
