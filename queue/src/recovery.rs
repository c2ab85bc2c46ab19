//! Crash recovery at open: makes the three trees consistent again and makes every pending
//! message due now ("anything in flight becomes due again").

use std::collections::HashSet;

use sled::Tree;

use crate::keys::{due_key, parse_due_key, parse_id_key};
use crate::{Envelope, QueueError, RecoveryReport};

/// The trees recovery works on.
pub(crate) struct Trees<'a> {
    pub(crate) envelopes: &'a Tree,
    pub(crate) bodies: &'a Tree,
    pub(crate) due: &'a Tree,
    pub(crate) quarantine: &'a Tree,
}

/// What to do with one envelope record.
enum Fix {
    /// Undecodable: move envelope (and body) to the quarantine tree.
    Quarantine,
    /// Body missing: remove the envelope.
    NoBody,
    /// No recipient pending: remove envelope and body.
    Finished,
    /// Pending, due at or before now: keep as is.
    Keep,
    /// Pending: store it again with this (earlier) due time.
    MakeDue(Box<Envelope>),
}

/// Runs recovery. Every step is idempotent, so a crash during recovery is repaired by the
/// next open.
pub(crate) fn recover(t: &Trees<'_>, now: u64) -> Result<RecoveryReport, QueueError> {
    let mut report = RecoveryReport::default();
    // The due keys that must exist when we are done.
    let mut wanted: HashSet<[u8; 16]> = HashSet::new();

    // 1. Envelopes. Decide first, change afterwards (no writes under a live iterator).
    let mut fixes = Vec::new();
    for item in t.envelopes.iter() {
        let (key, value) = item?;
        let decoded = parse_id_key(&key).and_then(|id| {
            serde_json::from_slice::<Envelope>(&value)
                .ok()
                .filter(|env| env.id == id)
        });
        let fix = match decoded {
            None => Fix::Quarantine,
            Some(_) if !t.bodies.contains_key(&key)? => Fix::NoBody,
            Some(env) if !env.has_pending() => Fix::Finished,
            Some(mut env) => {
                let due = env.next_due.map_or(now, |d| d.min(now));
                wanted.insert(due_key(due, env.id));
                if env.next_due == Some(due) {
                    Fix::Keep
                } else {
                    env.next_due = Some(due);
                    Fix::MakeDue(Box::new(env))
                }
            }
        };
        fixes.push((key, value, fix));
    }
    for (key, value, fix) in fixes {
        match fix {
            Fix::Keep => {}
            Fix::Quarantine => {
                let mut qkey = b"e".to_vec();
                qkey.extend_from_slice(&key);
                t.quarantine.insert(qkey, value)?;
                if let Some(body) = t.bodies.get(&key)? {
                    let mut bkey = b"b".to_vec();
                    bkey.extend_from_slice(&key);
                    t.quarantine.insert(bkey, body)?;
                    t.bodies.remove(&key)?;
                }
                t.envelopes.remove(&key)?;
                tracing::error!(key = ?&key[..], "queue recovery: undecodable envelope moved to the quarantine tree");
                report.quarantined += 1;
            }
            Fix::NoBody => {
                t.envelopes.remove(&key)?;
                report.envelopes_without_body += 1;
            }
            Fix::Finished => {
                t.envelopes.remove(&key)?;
                t.bodies.remove(&key)?;
                report.finished_removed += 1;
            }
            Fix::MakeDue(env) => {
                let bytes = serde_json::to_vec(&env).map_err(|e| {
                    QueueError::Corrupt(format!("encoding envelope {}: {e}", env.id))
                })?;
                t.envelopes.insert(&key, bytes)?;
                report.made_due += 1;
            }
        }
    }

    // 2. Bodies without an envelope.
    for key in t.bodies.iter().keys() {
        let key = key?;
        if !t.envelopes.contains_key(&key)? {
            t.bodies.remove(&key)?;
            report.bodies_without_envelope += 1;
        }
    }

    // 3. Due keys: keep exactly the wanted ones.
    for key in t.due.iter().keys() {
        let key = key?;
        let keep = parse_due_key(&key)
            .map(|(secs, id)| wanted.remove(&due_key(secs, id)))
            .unwrap_or(false);
        if !keep {
            t.due.remove(&key)?;
            report.stale_due_keys += 1;
        }
    }
    for key in wanted {
        t.due.insert(key, &[][..])?;
        report.due_keys_added += 1;
    }
    Ok(report)
}
