//! The self-probe loop: every `[onion] probe_interval` (with jitter) the daemon connects to
//! its own onion address through Tor and records the outcome in [`Health`]. After
//! `probe_failures` failures in a row it asks the onion supervisor for a repair
//! ([`repair_due`]) and waits until it is done. Reachability is judged by the probe alone,
//! never by arti's reported service state.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use smtorp_onion::OnionTransport;
use tokio::sync::{mpsc, oneshot, watch, OnceCell};
use tracing::{info, warn};

use crate::intake::headers::unix_now;
use crate::listen::stopped;
use crate::onion::health::{repair_due, Health, Repair};

/// The first probe comes after at most this long (publication takes a minute or two on
/// the real Tor network), then every `probe_interval`.
const FIRST_PROBE_AT_MOST: Duration = Duration::from_secs(120);

/// A repair asked of the onion supervisor, and where it answers (`Ok` with what was done,
/// or the error).
pub(crate) struct RepairRequest {
    pub(crate) action: Repair,
    pub(crate) reason: String,
    pub(crate) done: oneshot::Sender<Result<String, String>>,
}

/// The probe's timing and threshold (`[onion]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeConfig {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) failures: u32,
}

/// A wait of `base` times a random factor between 0.5 and 1.5: probes at a fixed period
/// would be a pattern that an observer of our guard could pick out.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// Probes until shutdown.
pub(crate) async fn run(
    config: ProbeConfig,
    address: String,
    health: Arc<Health>,
    transport: Arc<OnceCell<Arc<OnionTransport>>>,
    repairs: mpsc::Sender<RepairRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = jittered(config.interval.min(FIRST_PROBE_AT_MOST)).min(FIRST_PROBE_AT_MOST);
    loop {
        health.next_probe_in(wait);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut shutdown) => return,
        }
        wait = jittered(config.interval);
        let outcome = match transport.get() {
            None => Err("Tor is not bootstrapped yet".to_owned()),
            Some(t) => tokio::select! {
                r = t.probe(&address, config.timeout) => r.map_err(|e| e.to_string()),
                () = stopped(&mut shutdown) => return,
            },
        };
        let error = match outcome {
            Ok(probed) => {
                let ended = health.success(probed.elapsed, probed.code);
                if ended > 0 {
                    warn!(
                        failures = ended,
                        seconds = probed.elapsed.as_secs_f64(),
                        "self-probe: our onion service is reachable again"
                    );
                } else {
                    info!(
                        seconds = probed.elapsed.as_secs_f64(),
                        code = probed.code,
                        "self-probe: our onion service is reachable"
                    );
                }
                continue;
            }
            Err(e) => e,
        };
        let failures = health.failure(error.clone());
        warn!(failures, threshold = config.failures, error = %error, "self-probe: our onion service did not answer");
        let Some(action) = repair_due(failures, config.failures) else {
            continue;
        };
        let reason = format!("{failures} self-probes failed in a row; the last: {error}");
        if transport.get().is_none() {
            warn!(reason = %reason, "self-probe: no repair possible while Tor has not bootstrapped (it keeps trying)");
            continue;
        }
        let at = unix_now();
        health.repair_started(action);
        let (done, answer) = oneshot::channel();
        let asked = repairs
            .send(RepairRequest {
                action,
                reason: reason.clone(),
                done,
            })
            .await;
        let outcome = match asked {
            Err(_) => Err("the onion supervisor has stopped".to_owned()),
            Ok(()) => tokio::select! {
                r = answer => r.unwrap_or_else(|_| Err("the onion supervisor has stopped".to_owned())),
                () = stopped(&mut shutdown) => return,
            },
        };
        match &outcome {
            Ok(what) => {
                warn!(repair = action.name(), outcome = %what, "self-probe: repair done; probing again")
            }
            Err(e) => {
                warn!(repair = action.name(), error = %e, "self-probe: repair failed; probing again")
            }
        }
        health.repair_done(
            action,
            at,
            reason,
            outcome.unwrap_or_else(|e| format!("failed: {e}")),
        );
        // After a repair, probe again soon (the new descriptor takes a moment to publish).
        wait = wait.min(config.interval.min(FIRST_PROBE_AT_MOST));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        let base = Duration::from_secs(600);
        for _ in 0..1000 {
            let w = jittered(base);
            assert!(
                w >= Duration::from_secs(300) && w < Duration::from_secs(900),
                "{w:?}"
            );
        }
    }
}
