//! Crash recovery at open: makes the trees and the spool files consistent again and makes
//! every pending message due now ("anything in flight becomes due again"); before that,
//! moves the bodies an older version kept in sled into spool files.

use std::collections::HashSet;

use sled::Tree;

use crate::keys::{due_key, id_key, parse_due_key, parse_id_key};
use crate::spool::SpoolDir;
use crate::{Envelope, QueueError, RecoveryReport};

/// What recovery works on.
pub(crate) struct Trees<'a> {
    pub(crate) envelopes: &'a Tree,
    pub(crate) due: &'a Tree,
    pub(crate) quarantine: &'a Tree,
    pub(crate) spool: &'a SpoolDir,
}

/// Moves every body of the `bodies` tree (older versions kept message content in sled)
/// into its spool file, durably, then removes it from the tree. Idempotent: a crash in
/// the middle writes the same file again at the next open. Returns how many moved.
pub(crate) fn migrate_bodies(bodies: &Tree, spool: &SpoolDir) -> Result<u64, QueueError> {
    let mut moved = 0;
    for item in bodies.iter() {
        let (key, body) = item?;
        if let Some(id) = parse_id_key(&key) {
            spool.write_durably(id, &body)?;
        }
        bodies.remove(&key)?;
        moved += 1;
    }
    if moved > 0 {
        bodies.flush()?;
        tracing::info!(
            moved,
            "moved message bodies from the store into spool files"
        );
    }
    Ok(moved)
}

/// What to do with one envelope record.
enum Fix {
    /// Undecodable: move envelope (and body) to the quarantine tree.
    Quarantine,
    /// Body missing (or shorter than committed): remove the envelope (the file, if any,
    /// goes with the files that no envelope names).
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
        let body_len = parse_id_key(&key).and_then(|id| t.spool.len_of(id));
        let fix = match decoded {
            None => Fix::Quarantine,
            // A spool file shorter than the committed content is one emptied after its
            // delivery (see `SpoolDir::recycle`): the content is gone as surely as when the
            // file is. Delivering what is left would send a truncated copy.
            Some(env) if body_len.is_none_or(|len| len < env.size) => Fix::NoBody,
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
                if let Some(id) = parse_id_key(&key) {
                    if let Some(body) = t.spool.open_body(id)? {
                        let mut bkey = b"b".to_vec();
                        bkey.extend_from_slice(&key);
                        t.quarantine.insert(bkey, body.read_all()?)?;
                        t.quarantine.flush()?;
                        t.spool.remove(id)?;
                    }
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
                if let Some(id) = parse_id_key(&key) {
                    t.spool.remove(id)?;
                }
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

    // 2. Spool files without an envelope: sessions that never committed, removals not
    //    recorded. Nothing else belongs in the folder.
    for (name, id) in t.spool.entries()? {
        let queued = match id {
            Some(id) => t.envelopes.contains_key(id_key(id))?,
            None => false,
        };
        if !queued {
            t.spool.remove_name(&name)?;
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
