//! Crash recovery at `Queue::open`: inconsistent states are written with sled directly
//! (the on-disk layout described in README.md), then the queue must repair them.

#![cfg(test)]

use std::path::Path;

use smtorp_queue::{Envelope, Origin, Queue, QueueId, Recipient, RecipientState, RecoveryReport};

fn due_key(t: u64, id: u64) -> Vec<u8> {
    let mut k = t.to_be_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn envelope(id: u64, states: &[RecipientState], next_due: Option<u64>) -> Envelope {
    Envelope {
        id: QueueId(id),
        sender: "a@a.onion".into(),
        recipients: states
            .iter()
            .enumerate()
            .map(|(i, s)| Recipient {
                address: format!("r{i}@b.onion"),
                state: *s,
                attempts: 1,
                last_reply: None,
            })
            .collect(),
        arrival: 1_000,
        origin: Origin::Submission,
        size: 4,
        next_due,
    }
}

/// Writes raw records with sled and raw spool files (the queue must not be open).
struct Raw {
    db: sled::Db,
    envelopes: sled::Tree,
    due: sled::Tree,
    spool: std::path::PathBuf,
}

impl Raw {
    fn open(dir: &Path) -> Raw {
        let db = sled::open(dir).unwrap();
        Raw {
            envelopes: db.open_tree("envelopes").unwrap(),
            due: db.open_tree("due").unwrap(),
            spool: dir.join("spool"),
            db,
        }
    }
    fn envelope(&self, env: &Envelope) {
        self.envelopes
            .insert(env.id.0.to_be_bytes(), serde_json::to_vec(env).unwrap())
            .unwrap();
    }
    fn body(&self, id: u64, body: &[u8]) {
        std::fs::write(self.spool.join(format!("{id:016X}")), body).unwrap();
    }
    fn due(&self, t: u64, id: u64) {
        self.due.insert(due_key(t, id), &[][..]).unwrap();
    }
    /// A complete, consistent message.
    fn message(&self, env: &Envelope) {
        self.envelope(env);
        self.body(env.id.0, b"body");
        if let Some(t) = env.next_due {
            self.due(t, env.id.0);
        }
    }
    fn due_keys(&self) -> Vec<Vec<u8>> {
        self.due
            .iter()
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect()
    }
    fn close(self) {
        self.db.flush().unwrap();
    }
}

use RecipientState::{Delivered, Failed, Pending};

const FUTURE: u64 = u64::MAX / 2;

#[test]
fn repairs_inconsistent_store() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path()).unwrap());
    let raw = Raw::open(dir.path());
    // 1: consistent, due in the past: untouched.
    raw.message(&envelope(1, &[Pending, Delivered], Some(500)));
    // 2: envelope without body.
    raw.envelope(&envelope(2, &[Pending], Some(600)));
    raw.due(600, 2);
    // 3: body without envelope (and a due key for it).
    raw.body(3, b"orphan");
    raw.due(700, 3);
    // 4: due key pointing nowhere.
    raw.due(800, 4);
    // 5: pending envelope without due key.
    raw.envelope(&envelope(5, &[Pending], Some(900)));
    raw.body(5, b"body");
    // 6: pending envelope with next_due None and no due key.
    raw.envelope(&envelope(6, &[Failed, Pending], None));
    raw.body(6, b"body");
    // 7: nothing pending: removed with its body and due key.
    raw.message(&envelope(7, &[Delivered, Failed], Some(950)));
    // 8: due key at a time other than next_due (an update half-seen), plus the right one.
    raw.message(&envelope(8, &[Pending], Some(400)));
    raw.due(1_200, 8);
    // 9: malformed due key.
    raw.due.insert(b"garbage", &[][..]).unwrap();
    // 10: a file in the spool folder that is no spool file.
    std::fs::write(raw.spool.join("stray"), b"?").unwrap();
    raw.close();

    let before = now();
    let q = Queue::open(dir.path()).unwrap();
    let after = now();
    let r = *q.recovery();
    assert_eq!(
        r,
        RecoveryReport {
            envelopes_without_body: 1,
            bodies_without_envelope: 2, // 3 and the stray file
            bodies_migrated: 0,
            finished_removed: 1,
            made_due: 1,       // #6 (next_due None); #5 was already in the past
            stale_due_keys: 6, // 2, 3, 4, 7, 8@1200, garbage
            due_keys_added: 2, // 5, 6
            quarantined: 0,
        }
    );
    assert!(!r.is_clean());

    let mut ids: Vec<u64> = q.list().unwrap().iter().map(|e| e.id.0).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 5, 6, 8]);
    assert_eq!(q.len(), 4);
    for gone in [2, 3, 4, 7] {
        assert_eq!(q.envelope(QueueId(gone)).unwrap(), None, "{gone}");
        assert_eq!(q.body(QueueId(gone)).unwrap(), None, "{gone}");
    }
    assert_eq!(q.envelope(QueueId(1)).unwrap().unwrap().next_due, Some(500));
    assert_eq!(q.envelope(QueueId(5)).unwrap().unwrap().next_due, Some(900));
    let t6 = q.envelope(QueueId(6)).unwrap().unwrap().next_due.unwrap();
    assert!((before..=after).contains(&t6));
    assert_eq!(
        q.due(u64::MAX, 100).unwrap(),
        vec![QueueId(8), QueueId(1), QueueId(5), QueueId(6)]
    );
    drop(q);

    // The due index holds exactly one key per message, at its next_due.
    let raw = Raw::open(dir.path());
    assert_eq!(
        raw.due_keys(),
        vec![
            due_key(400, 8),
            due_key(500, 1),
            due_key(900, 5),
            due_key(t6, 6)
        ]
    );
    raw.close();

    // Recovery is idempotent: a second open finds nothing to repair.
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(*q.recovery(), RecoveryReport::default());
}

/// The pool empties a delivered message's spool file. If the store had not yet recorded the
/// delivery when the daemon died, the envelope is still pending: with an emptied (or cut
/// short) spool file its content is gone, and recovery must drop it rather than queue an
/// empty or truncated message for a second delivery.
#[test]
fn pending_envelope_with_an_emptied_spool_file_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path()).unwrap());
    let raw = Raw::open(dir.path());
    let committed_size = 4; // envelope() records size 4, like b"body"
    raw.envelope(&envelope(1, &[Pending], Some(500)));
    raw.body(1, b"");
    raw.due(500, 1);
    raw.envelope(&envelope(2, &[Pending], Some(500)));
    raw.body(2, &b"body"[..committed_size - 1]);
    raw.due(500, 2);
    raw.message(&envelope(3, &[Pending], Some(500))); // whole: kept
    raw.close();

    let q = Queue::open(dir.path()).unwrap();
    let r = *q.recovery();
    assert_eq!(r.envelopes_without_body, 2, "{r:?}");
    assert_eq!(r.bodies_without_envelope, 2, "{r:?}");
    let ids: Vec<u64> = q.list().unwrap().iter().map(|e| e.id.0).collect();
    assert_eq!(ids, vec![3]);
    for gone in [1, 2] {
        assert_eq!(q.body(QueueId(gone)).unwrap(), None, "{gone}");
        assert!(!dir.path().join(format!("spool/{gone:016X}")).exists());
    }
    assert_eq!(q.due(u64::MAX, 10).unwrap(), vec![QueueId(3)]);
}

#[test]
fn in_flight_becomes_due_now() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let q = Queue::open(dir.path()).unwrap();
        let id = q.next_id().unwrap();
        let rcpts = vec!["b@b.onion".to_string()];
        let mut env = q
            .insert(&smtorp_queue::NewMessage {
                id,
                sender: "",
                recipients: &rcpts,
                origin: Origin::Maildrop,
                arrival: 10,
                body: b"body",
            })
            .unwrap();
        env.next_due = Some(FUTURE);
        q.update(&env).unwrap();
        assert!(q.due(now(), 10).unwrap().is_empty());
        q.sync_blocking().unwrap();
        id
    };
    let q = Queue::open(dir.path()).unwrap();
    let r = *q.recovery();
    assert_eq!((r.made_due, r.stale_due_keys, r.due_keys_added), (1, 1, 1));
    assert!(r.is_clean(), "only due times changed: {r:?}");
    let n = now();
    assert_eq!(q.due(n, 10).unwrap(), vec![id]);
    let t = q.envelope(id).unwrap().unwrap().next_due.unwrap();
    assert!(t <= n && t + 60 > n);
    assert_eq!(q.next_due().unwrap(), Some(t));
}

#[test]
fn undecodable_envelope_is_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path()).unwrap());
    let raw = Raw::open(dir.path());
    raw.envelopes
        .insert(20u64.to_be_bytes(), &b"{not json"[..])
        .unwrap();
    raw.body(20, b"precious");
    raw.due(100, 20);
    // An envelope whose id field does not match its key.
    raw.envelopes
        .insert(
            21u64.to_be_bytes(),
            serde_json::to_vec(&envelope(99, &[Pending], Some(1))).unwrap(),
        )
        .unwrap();
    raw.body(21, b"b");
    // A key of the wrong length.
    raw.envelopes.insert(b"short", &b"x"[..]).unwrap();
    raw.message(&envelope(22, &[Pending], Some(5)));
    raw.close();

    let q = Queue::open(dir.path()).unwrap();
    let r = *q.recovery();
    assert_eq!(r.quarantined, 3);
    assert_eq!(r.stale_due_keys, 1);
    assert_eq!(
        r.bodies_without_envelope, 0,
        "bodies go to quarantine, not away"
    );
    assert_eq!(q.list().unwrap().len(), 1);
    assert_eq!(q.due(u64::MAX, 10).unwrap(), vec![QueueId(22)]);
    drop(q);

    let db = sled::open(dir.path()).unwrap();
    let quarantine = db.open_tree("quarantine").unwrap();
    let mut bkey = b"b".to_vec();
    bkey.extend_from_slice(&20u64.to_be_bytes());
    assert_eq!(&quarantine.get(bkey).unwrap().unwrap()[..], b"precious");
    let mut ekey = b"e".to_vec();
    ekey.extend_from_slice(&20u64.to_be_bytes());
    assert_eq!(&quarantine.get(ekey).unwrap().unwrap()[..], b"{not json");
    assert_eq!(quarantine.len(), 5);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn bodies_of_an_older_queue_move_to_spool_files() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path()).unwrap());
    {
        // The layout of earlier versions: bodies in the `bodies` tree.
        let raw = Raw::open(dir.path());
        let bodies = raw.db.open_tree("bodies").unwrap();
        raw.envelope(&envelope(41, &[Pending], Some(500)));
        raw.due(500, 41);
        bodies
            .insert(41u64.to_be_bytes(), &b"old body"[..])
            .unwrap();
        bodies.insert(42u64.to_be_bytes(), &b"orphan"[..]).unwrap();
        raw.close();
    }
    let q = Queue::open(dir.path()).unwrap();
    let r = *q.recovery();
    assert_eq!(r.bodies_migrated, 2);
    assert_eq!(r.bodies_without_envelope, 1, "42 had no envelope");
    assert_eq!(q.body(QueueId(41)).unwrap().unwrap(), b"old body");
    assert!(dir
        .path()
        .join("spool")
        .join(format!("{:016X}", 41))
        .is_file());
    drop(q);
    // Nothing is left in the tree: the next open has nothing to move.
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.recovery().bodies_migrated, 0);
    assert!(q.recovery().is_clean(), "{:?}", q.recovery());
}

#[test]
fn envelopes_of_earlier_versions_keep_their_last_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path()).unwrap());
    {
        let raw = Raw::open(dir.path());
        // The form of earlier versions: the last error as text.
        let old = br#"{"id":77,"sender":"a@a.onion","recipients":[{"address":"r@b.onion","state":"pending","attempts":2,"last_error":"b.onion answered RCPT TO with 451 4.3.0 busy"}],"arrival":1000,"origin":"smtp","size":4,"next_due":500}"#;
        raw.envelopes.insert(77u64.to_be_bytes(), &old[..]).unwrap();
        raw.body(77, b"body");
        raw.due(500, 77);
        raw.close();
    }
    let q = Queue::open(dir.path()).unwrap();
    let env = q.envelope(QueueId(77)).unwrap().unwrap();
    let reply = env.recipients[0].last_reply.clone().unwrap();
    assert_eq!(reply.code, 451);
    assert_eq!(reply.text, "b.onion answered RCPT TO with 451 4.3.0 busy");
    // Written back in the current form.
    q.update(&env).unwrap();
    assert_eq!(q.envelope(QueueId(77)).unwrap().unwrap(), env);
}
