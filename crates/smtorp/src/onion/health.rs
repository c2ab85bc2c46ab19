//! What the daemon knows of its own reachability: the self-probes (last success, failures
//! in a row, last error), the repairs they led to, the running service's handle and the
//! defences in force. Shared by the probe loop, the onion supervisor and `smtorp status`.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smtorp_onion::{Defences, ServiceStatus};

use crate::intake::headers::unix_now;

/// A repair of the onion side, in escalating order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Repair {
    /// Drop the onion service and launch it again on the same client (same key).
    Relaunch,
    /// Drop the service and the Tor client; make a new client on the same state folder and
    /// launch the service on it.
    Rebuild,
}

impl Repair {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Repair::Relaunch => "relaunch of the onion service",
            Repair::Rebuild => "rebuild of the Tor client",
        }
    }
}

/// The repair due after `failures` failed probes in a row, `threshold` being
/// `[onion] probe_failures`: a relaunch at the threshold, then a rebuild at 2, 4, 8, ...
/// times it. The gaps double, so a long outage of the network itself (the machine offline)
/// costs a few rebuilds, not one every few probes.
pub(crate) fn repair_due(failures: u32, threshold: u32) -> Option<Repair> {
    let threshold = threshold.max(1);
    if failures == 0 || !failures.is_multiple_of(threshold) {
        return None;
    }
    match failures / threshold {
        1 => Some(Repair::Relaunch),
        k if k.is_power_of_two() => Some(Repair::Rebuild),
        _ => None,
    }
}

/// One repair, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RepairRecord {
    /// When it started (Unix seconds).
    pub(crate) at: u64,
    /// What it was.
    pub(crate) action: Repair,
    /// Why: the failures that led to it.
    pub(crate) reason: String,
    /// How it went ("done", or the error).
    pub(crate) outcome: String,
}

/// The self-probe's record (the JSON of `status --json`, under `probe`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProbeReport {
    /// `[onion] probe_interval`, seconds.
    pub(crate) interval_secs: u64,
    /// `[onion] probe_failures`.
    pub(crate) threshold: u32,
    /// Probes made since start, and how many failed.
    pub(crate) probes: u64,
    pub(crate) probes_failed: u64,
    /// The last probe that reached our service (Unix seconds), how long it took, and the
    /// greeting's code (421: reachable, every session busy).
    pub(crate) last_success: Option<u64>,
    pub(crate) last_success_took_secs: Option<f64>,
    pub(crate) last_code: Option<u16>,
    /// Failed probes since the last success.
    pub(crate) consecutive_failures: u32,
    /// The last failure (Unix seconds) and why.
    pub(crate) last_failure: Option<u64>,
    pub(crate) last_error: Option<String>,
    /// When the next probe is due (Unix seconds).
    pub(crate) next_probe: Option<u64>,
    /// Repairs since start.
    pub(crate) relaunches: u64,
    pub(crate) rebuilds: u64,
    /// The last repair.
    pub(crate) last_repair: Option<RepairRecord>,
    /// A repair in progress, if any.
    pub(crate) repairing: Option<Repair>,
}

/// The defences in force (`status --json`, under `defences`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DefencesReport {
    pub(crate) pow: bool,
    pub(crate) intro_rate: u32,
    pub(crate) intro_burst: u32,
    pub(crate) max_streams_per_circuit: u32,
}

impl From<Defences> for DefencesReport {
    fn from(d: Defences) -> Self {
        DefencesReport {
            pow: d.pow,
            intro_rate: d.intro_rate,
            intro_burst: d.intro_burst,
            max_streams_per_circuit: d.max_streams_per_circuit,
        }
    }
}

/// The shared record.
pub(crate) struct Health {
    defences: Defences,
    report: Mutex<ProbeReport>,
    service: Mutex<ServiceStatus>,
}

impl Health {
    pub(crate) fn new(defences: Defences, interval: Duration, threshold: u32) -> Health {
        Health {
            defences,
            report: Mutex::new(ProbeReport {
                interval_secs: interval.as_secs(),
                threshold,
                ..ProbeReport::default()
            }),
            service: Mutex::new(ServiceStatus::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ProbeReport) -> T) -> T {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A copy of the probe record.
    pub(crate) fn report(&self) -> ProbeReport {
        self.with(|r| r.clone())
    }

    pub(crate) fn defences(&self) -> DefencesReport {
        self.defences.into()
    }

    /// arti's state of the running service, or `None` if none runs (being relaunched).
    pub(crate) fn service_state(&self) -> Option<String> {
        self.service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state()
    }

    pub(crate) fn set_service(&self, service: ServiceStatus) {
        *self.service.lock().unwrap_or_else(|p| p.into_inner()) = service;
    }

    pub(crate) fn next_probe_in(&self, wait: Duration) {
        self.with(|r| r.next_probe = Some(unix_now() + wait.as_secs()));
    }

    /// Records a probe that reached us; returns the failures it ends.
    pub(crate) fn success(&self, took: Duration, code: u16) -> u32 {
        self.with(|r| {
            r.probes += 1;
            r.last_success = Some(unix_now());
            r.last_success_took_secs = Some((took.as_secs_f64() * 100.0).round() / 100.0);
            r.last_code = Some(code);
            std::mem::take(&mut r.consecutive_failures)
        })
    }

    /// Records a failed probe; returns the failures in a row.
    pub(crate) fn failure(&self, error: String) -> u32 {
        self.with(|r| {
            r.probes += 1;
            r.probes_failed += 1;
            r.consecutive_failures += 1;
            r.last_failure = Some(unix_now());
            r.last_error = Some(error);
            r.consecutive_failures
        })
    }

    pub(crate) fn repair_started(&self, action: Repair) {
        self.with(|r| r.repairing = Some(action));
    }

    pub(crate) fn repair_done(&self, action: Repair, at: u64, reason: String, outcome: String) {
        self.with(|r| {
            r.repairing = None;
            match action {
                Repair::Relaunch => r.relaunches += 1,
                Repair::Rebuild => r.rebuilds += 1,
            }
            r.last_repair = Some(RepairRecord {
                at,
                action,
                reason,
                outcome,
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_escalate_and_then_space_out() {
        let due: Vec<(u32, Repair)> = (0..=50)
            .filter_map(|f| repair_due(f, 3).map(|r| (f, r)))
            .collect();
        assert_eq!(
            due,
            vec![
                (3, Repair::Relaunch),
                (6, Repair::Rebuild),
                (12, Repair::Rebuild),
                (24, Repair::Rebuild),
                (48, Repair::Rebuild),
            ]
        );
        assert_eq!(repair_due(1, 1), Some(Repair::Relaunch));
        assert_eq!(repair_due(2, 1), Some(Repair::Rebuild));
        assert_eq!(repair_due(3, 1), None);
    }

    #[test]
    fn the_record_counts_failures_until_a_success() {
        let h = Health::new(Defences::default(), Duration::from_secs(600), 3);
        assert_eq!(h.failure("a".into()), 1);
        assert_eq!(h.failure("b".into()), 2);
        let r = h.report();
        assert_eq!(
            (r.probes, r.probes_failed, r.consecutive_failures),
            (2, 2, 2)
        );
        assert_eq!(r.last_error.as_deref(), Some("b"));
        assert_eq!(h.success(Duration::from_millis(1234), 220), 2);
        let r = h.report();
        assert_eq!(r.consecutive_failures, 0);
        assert_eq!(r.last_success_took_secs, Some(1.23));
        assert!(r.last_success.is_some());
        h.repair_started(Repair::Relaunch);
        assert_eq!(h.report().repairing, Some(Repair::Relaunch));
        h.repair_done(Repair::Relaunch, 7, "x".into(), "done".into());
        let r = h.report();
        assert_eq!((r.relaunches, r.rebuilds, r.repairing), (1, 0, None));
        assert_eq!(h.service_state(), None);
    }
}
