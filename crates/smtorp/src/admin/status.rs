//! `smtorp status`: the facts (daemon, Tor, the onion service and its self-probe, the
//! queue, deliveries and the last error per destination), the verdict on them with a
//! Nagios-style exit code (0 healthy, 1 degraded, 2 down, 3 unknown), and their printing
//! for people (text) and machines (`--json`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use smtorp_queue::{Envelope, RecipientState};

use crate::onion::health::{DefencesReport, ProbeReport};

/// What `smtorp status` shows (also the JSON of `status --json`, with the verdict added).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StatusReport {
    /// True when a daemon answered.
    pub(crate) daemon_running: bool,
    /// When the daemon started (Unix seconds).
    #[serde(default)]
    pub(crate) started_at: Option<u64>,
    /// Seconds since the daemon started.
    pub(crate) uptime_secs: Option<u64>,
    /// Our onion address, if any.
    pub(crate) onion_address: Option<String>,
    /// arti's bootstrap status, when the onion service is on.
    pub(crate) tor: Option<String>,
    /// Whether arti says it is ready for traffic.
    #[serde(default)]
    pub(crate) tor_ready: Option<bool>,
    /// arti's view of the onion service (lags reachability on a young network).
    pub(crate) onion_service: Option<String>,
    /// The self-probe: the real test of reachability.
    #[serde(default)]
    pub(crate) probe: Option<ProbeReport>,
    /// The onion service's defences in force.
    #[serde(default)]
    pub(crate) defences: Option<DefencesReport>,
    /// Messages in the queue.
    pub(crate) messages: usize,
    /// Messages due now or being delivered, and the age of the oldest (seconds).
    #[serde(default)]
    pub(crate) active_messages: usize,
    #[serde(default)]
    pub(crate) oldest_active_secs: Option<u64>,
    /// Messages waiting for a later retry, and the age of the oldest (seconds).
    #[serde(default)]
    pub(crate) deferred_messages: usize,
    #[serde(default)]
    pub(crate) oldest_deferred_secs: Option<u64>,
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
    /// The last delivery error of each destination that had one since start (daemon only).
    #[serde(default)]
    pub(crate) destinations: Vec<DestinationStatus>,
    /// False while the queue's store does not answer (a full disk, a hung device, or, with
    /// no daemon, a store that cannot be opened).
    #[serde(default = "yes")]
    pub(crate) queue_available: bool,
    /// Peers known to authenticate their mail (XONIONAUTH).
    #[serde(default)]
    pub(crate) known_peers: usize,
}

fn yes() -> bool {
    true
}

/// A destination's last delivery error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DestinationStatus {
    /// The onion domain.
    pub(crate) name: String,
    /// When (Unix seconds) and the reply, e.g. `451 4.4.1 onion connection timed out`.
    pub(crate) last_error_at: u64,
    pub(crate) last_error: String,
    /// Held back until then (Unix seconds) because it is down.
    pub(crate) held_until: Option<u64>,
}

/// The queue's part of the report, from its envelopes.
pub(crate) struct QueueFacts {
    pub(crate) messages: usize,
    pub(crate) active: usize,
    pub(crate) oldest_active: Option<u64>,
    pub(crate) deferred: usize,
    pub(crate) oldest_deferred: Option<u64>,
    pub(crate) recipients_new: usize,
    pub(crate) recipients_deferred: usize,
}

impl QueueFacts {
    /// A message is deferred when its next attempt is in the future after a failed one, and
    /// active when it is due (or being delivered); ages count from arrival.
    pub(crate) fn of(list: &[Envelope], now: u64) -> QueueFacts {
        let mut f = QueueFacts {
            messages: list.len(),
            active: 0,
            oldest_active: None,
            deferred: 0,
            oldest_deferred: None,
            recipients_new: 0,
            recipients_deferred: 0,
        };
        for e in list.iter().filter(|e| e.has_pending()) {
            let pending = e
                .recipients
                .iter()
                .filter(|r| r.state == RecipientState::Pending);
            let mut tried = false;
            for r in pending {
                if r.attempts == 0 {
                    f.recipients_new += 1;
                } else {
                    f.recipients_deferred += 1;
                    tried = true;
                }
            }
            let age = now.saturating_sub(e.arrival);
            let later = e.next_due.is_some_and(|t| t > now);
            let (count, oldest) = if tried && later {
                (&mut f.deferred, &mut f.oldest_deferred)
            } else {
                (&mut f.active, &mut f.oldest_active)
            };
            *count += 1;
            *oldest = Some(oldest.map_or(age, |o: u64| o.max(age)));
        }
        f
    }
}

/// How healthy the server is, as a monitoring system wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Level {
    Ok,
    Degraded,
    Down,
}

impl Level {
    /// The Nagios exit code: 0, 1, 2.
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Degraded => 1,
            Level::Down => 2,
        }
    }
}

/// The verdict and its reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Verdict {
    pub(crate) status: Level,
    pub(crate) code: u8,
    pub(crate) reasons: Vec<String>,
}

/// The thresholds of the verdict (`smtorp status` flags).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    /// A deferred message older than this makes the server degraded; zero: never.
    pub(crate) deferred_age: Duration,
}

/// Judges a report:
/// - down: no daemon, the queue's store unavailable, or the self-probe failing
///   `probe_failures` times in a row (or more);
/// - degraded: the self-probe failing fewer times than that, a repair in progress, or a
///   deferred message older than `deferred_age`;
/// - ok otherwise (also before the first probe: nothing is known to be wrong).
pub(crate) fn evaluate(report: &StatusReport, thresholds: Thresholds) -> Verdict {
    let mut reasons = Vec::new();
    let mut level = Level::Ok;
    let mut say = |l: Level, reason: String| {
        level = level.max(l);
        reasons.push(reason);
    };
    if !report.daemon_running {
        say(Level::Down, "the daemon is not running".into());
    }
    if !report.queue_available {
        say(Level::Down, "the queue's store does not answer".into());
    }
    if let Some(probe) = &report.probe {
        let failures = probe.consecutive_failures;
        let error = probe.last_error.as_deref().unwrap_or("?");
        if failures >= probe.threshold.max(1) {
            say(
                Level::Down,
                format!("our onion service is unreachable: {failures} self-probes failed in a row ({error})"),
            );
        } else if failures > 0 {
            say(
                Level::Degraded,
                format!("{failures} self-probe(s) failed in a row ({error})"),
            );
        }
        if let Some(action) = probe.repairing {
            say(
                Level::Degraded,
                format!("a {} is in progress", action.name()),
            );
        }
    }
    let limit = thresholds.deferred_age.as_secs();
    if let Some(age) = report
        .oldest_deferred_secs
        .filter(|a| limit > 0 && *a > limit)
    {
        say(
            Level::Degraded,
            format!(
                "deferred mail older than {}: the oldest is {}",
                age_text(limit),
                age_text(age)
            ),
        );
    }
    Verdict {
        status: level,
        code: level.exit_code(),
        reasons,
    }
}

/// The JSON of `status --json`: the report and the verdict.
#[derive(Serialize)]
pub(crate) struct StatusJson<'a> {
    #[serde(flatten)]
    pub(crate) report: &'a StatusReport,
    pub(crate) health: &'a Verdict,
}

/// "45s", "3m", "2h", "4d": a short age.
pub(crate) fn age_text(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The report for a person, one fact a line.
pub(crate) fn lines(s: &StatusReport, verdict: &Verdict, now: u64) -> Vec<String> {
    let ago = |t: u64| age_text(now.saturating_sub(t));
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = Vec::new();
    let mut line =
        |label: &str, text: String| out.push(format!("{:<18}{text}", format!("{label}:")));
    match (s.daemon_running, s.started_at) {
        (true, Some(at)) => line(
            "daemon",
            format!(
                "running since {} ({})",
                crate::intake::headers::rfc5322_date(at),
                ago(at)
            ),
        ),
        (true, None) => line("daemon", "running".into()),
        (false, _) => line("daemon", "not running".into()),
    }
    line("onion address", opt(&s.onion_address));
    if s.daemon_running && s.tor.is_some() {
        line("tor", opt(&s.tor));
        line(
            "onion service",
            format!(
                "{} (arti's view; the self-probe is the test)",
                opt(&s.onion_service)
            ),
        );
    }
    if let Some(p) = &s.probe {
        let reach = match (p.last_success, p.consecutive_failures) {
            (None, 0) => match p.next_probe {
                Some(t) if t > now => {
                    format!("not probed yet (first self-probe in {})", age_text(t - now))
                }
                _ => "not probed yet".into(),
            },
            (Some(at), 0) => format!(
                "reachable: last self-probe {} ago took {:.1} s{}",
                ago(at),
                p.last_success_took_secs.unwrap_or(0.0),
                if p.last_code == Some(421) {
                    " (every session was busy)"
                } else {
                    ""
                }
            ),
            (last, n) => format!(
                "UNREACHABLE for {n} self-probe(s) in a row (repair after {}); last success {}",
                p.threshold,
                last.map(|t| format!("{} ago", ago(t)))
                    .unwrap_or_else(|| "never".into())
            ),
        };
        line("reachability", reach);
        if let (true, Some(e)) = (p.consecutive_failures > 0, &p.last_error) {
            line("last probe error", e.clone());
        }
        line(
            "self-probes",
            format!(
                "{} since start, {} failed; every ~{}{}",
                p.probes,
                p.probes_failed,
                age_text(p.interval_secs),
                p.next_probe
                    .filter(|t| *t > now)
                    .map(|t| format!(", next in {}", age_text(t - now)))
                    .unwrap_or_default()
            ),
        );
        let mut repairs = format!("{} relaunch(es), {} rebuild(s)", p.relaunches, p.rebuilds);
        if let Some(r) = &p.last_repair {
            repairs.push_str(&format!(
                "; last: {} {} ago ({}): {}",
                r.action.name(),
                ago(r.at),
                r.reason,
                r.outcome
            ));
        }
        if let Some(action) = p.repairing {
            repairs.push_str(&format!("; now: {}", action.name()));
        }
        line("repairs", repairs);
    }
    if let Some(d) = &s.defences {
        let limit = if d.intro_rate > 0 {
            format!("{}/s (burst {})", d.intro_rate, d.intro_burst)
        } else {
            "none sent".into()
        };
        line(
            "defences",
            format!(
                "proof-of-work {}, introductions {limit}, {} streams per circuit",
                if d.pow { "on" } else { "off" },
                d.max_streams_per_circuit
            ),
        );
    }
    let oldest = |o: Option<u64>| {
        o.map(|a| format!(", oldest {}", age_text(a)))
            .unwrap_or_default()
    };
    line(
        "queued messages",
        format!(
            "{} ({} active{}; {} deferred{})",
            s.messages,
            s.active_messages,
            oldest(s.oldest_active_secs),
            s.deferred_messages,
            oldest(s.oldest_deferred_secs)
        ),
    );
    line(
        "recipients",
        format!(
            "{} new, {} deferred",
            s.recipients_new, s.recipients_deferred
        ),
    );
    if !s.queue_available {
        line("queue store", "NOT ANSWERING".into());
    }
    if let (Some(d), Some(f), Some(r)) = (
        s.delivered_since_start,
        s.failed_since_start,
        s.deferred_since_start,
    ) {
        line(
            "since start",
            format!("{d} delivered, {f} failed, {r} deferred attempts"),
        );
    }
    if let Some(c) = s.connections_since_start {
        line("outbound", format!("{c} connections opened since start"));
    }
    line(
        "known peers",
        format!("{} (authenticate their mail)", s.known_peers),
    );
    for d in &s.destinations {
        let held = d
            .held_until
            .filter(|t| *t > now)
            .map(|t| format!("; held for {}", age_text(t - now)))
            .unwrap_or_default();
        line(
            "last error",
            format!(
                "{}: {} ({} ago{held})",
                d.name,
                d.last_error,
                ago(d.last_error_at)
            ),
        );
    }
    let word = match verdict.status {
        Level::Ok => "OK",
        Level::Degraded => "DEGRADED",
        Level::Down => "DOWN",
    };
    if verdict.reasons.is_empty() {
        line("health", word.into());
    } else {
        line("health", format!("{word}: {}", verdict.reasons.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onion::health::Repair;
    use smtorp_queue::{Origin, QueueId, Recipient};

    fn envelope(arrival: u64, next_due: Option<u64>, attempts: &[u32]) -> Envelope {
        Envelope {
            id: QueueId(arrival),
            sender: "a@x.onion".into(),
            recipients: attempts
                .iter()
                .map(|&attempts| Recipient {
                    address: "b@y.onion".into(),
                    state: RecipientState::Pending,
                    attempts,
                    last_reply: None,
                })
                .collect(),
            arrival,
            origin: Origin::Smtp,
            size: 10,
            next_due,
        }
    }

    fn running() -> StatusReport {
        StatusReport {
            daemon_running: true,
            queue_available: true,
            ..StatusReport::default()
        }
    }

    const DAY: Thresholds = Thresholds {
        deferred_age: Duration::from_secs(86400),
    };

    #[test]
    fn queue_facts_split_active_and_deferred() {
        let now = 100_000;
        let list = vec![
            envelope(now - 50, Some(now), &[0]),           // new, due
            envelope(now - 7000, Some(now + 60), &[2, 0]), // deferred
            envelope(now - 9000, Some(now + 600), &[1]),   // deferred, older
            envelope(now - 30, Some(now - 1), &[3]),       // retried, due now: active
        ];
        let f = QueueFacts::of(&list, now);
        assert_eq!((f.messages, f.active, f.deferred), (4, 2, 2));
        assert_eq!(f.oldest_active, Some(50));
        assert_eq!(f.oldest_deferred, Some(9000));
        assert_eq!((f.recipients_new, f.recipients_deferred), (2, 3));
    }

    #[test]
    fn a_running_daemon_with_nothing_wrong_is_ok() {
        let v = evaluate(&running(), DAY);
        assert_eq!((v.status, v.code), (Level::Ok, 0));
        assert!(v.reasons.is_empty());
        // Not probed yet: nothing is known to be wrong.
        let mut r = running();
        r.probe = Some(ProbeReport {
            threshold: 3,
            ..ProbeReport::default()
        });
        assert_eq!(evaluate(&r, DAY).code, 0);
    }

    #[test]
    fn probe_failures_degrade_then_take_it_down() {
        let mut r = running();
        r.probe = Some(ProbeReport {
            threshold: 3,
            consecutive_failures: 2,
            last_error: Some("timed out".into()),
            ..ProbeReport::default()
        });
        let v = evaluate(&r, DAY);
        assert_eq!(v.code, 1, "{v:?}");
        assert!(v.reasons[0].contains("timed out"));
        if let Some(p) = r.probe.as_mut() {
            p.consecutive_failures = 3;
        }
        assert_eq!(evaluate(&r, DAY).code, 2);
        if let Some(p) = r.probe.as_mut() {
            p.consecutive_failures = 0;
            p.repairing = Some(Repair::Relaunch);
        }
        assert_eq!(evaluate(&r, DAY).code, 1);
    }

    #[test]
    fn no_daemon_or_no_store_is_down_and_old_deferred_mail_degrades() {
        assert_eq!(evaluate(&StatusReport::default(), DAY).code, 2);
        let mut r = running();
        r.queue_available = false;
        assert_eq!(evaluate(&r, DAY).code, 2);
        let mut r = running();
        r.oldest_deferred_secs = Some(86_401);
        let v = evaluate(&r, DAY);
        assert_eq!(v.code, 1);
        assert!(v.reasons[0].contains("older than 24h"), "{v:?}");
        let off = Thresholds {
            deferred_age: Duration::ZERO,
        };
        assert_eq!(evaluate(&r, off).code, 0);
    }

    #[test]
    fn the_json_has_the_facts_and_the_verdict() {
        let r = running();
        let v = evaluate(&r, DAY);
        let json = serde_json::to_value(StatusJson {
            report: &r,
            health: &v,
        })
        .unwrap_or_default();
        assert_eq!(json["daemon_running"], true);
        assert_eq!(json["health"]["status"], "ok");
        assert_eq!(json["health"]["code"], 0);
    }
}
