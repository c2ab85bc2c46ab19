//! Tests of the public queue API: insert, due index, update, remove, sync, reopen, locking.

#![cfg(test)]

use std::path::Path;
use std::sync::Arc;

use smtorp_queue::{Envelope, NewMessage, Origin, Queue, QueueError, QueueId, RecipientState};

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn insert(q: &Queue, arrival: u64, to: &[&str], body: &[u8]) -> Envelope {
    let id = q.next_id().unwrap();
    let recipients = rcpts(to);
    q.insert(&NewMessage {
        id,
        sender: "alice@a.onion",
        recipients: &recipients,
        origin: Origin::Smtp,
        arrival,
        body,
    })
    .unwrap()
}

/// Commits `spool` from alice@a.onion to `to`, arriving at `arrival`, like [`insert`] for
/// a message written into a spool file.
fn commit(q: &Queue, spool: smtorp_queue::Spool, arrival: u64, to: &[&str]) -> Envelope {
    let recipients = rcpts(to);
    let envelope = smtorp_queue::NewEnvelope {
        sender: "alice@a.onion",
        recipients: &recipients,
        origin: Origin::Smtp,
        arrival,
    };
    q.commit(spool, &envelope, None).unwrap().unwrap()
}

/// The due keys as stored, read with sled directly (the queue must be closed).
fn raw_due_keys(dir: &Path) -> Vec<(u64, u64)> {
    let db = sled::open(dir).unwrap();
    let due = db.open_tree("due").unwrap();
    due.iter()
        .keys()
        .map(|k| {
            let k = k.unwrap();
            assert_eq!(k.len(), 16);
            (
                u64::from_be_bytes(k[..8].try_into().unwrap()),
                u64::from_be_bytes(k[8..].try_into().unwrap()),
            )
        })
        .collect()
}

#[test]
fn insert_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    assert!(q.is_empty());
    let body = b"Subject: x\r\n\r\nhello\r\n";
    let env = insert(&q, 1_000, &["bob@b.onion", "carol@c.onion"], body);
    assert_ne!(env.id.0, 0);
    assert_eq!(env.sender, "alice@a.onion");
    assert_eq!(env.recipients.len(), 2);
    for r in &env.recipients {
        assert_eq!(r.state, RecipientState::Pending);
        assert_eq!(r.attempts, 0);
        assert_eq!(r.last_reply, None);
    }
    assert_eq!(env.recipients[1].address, "carol@c.onion");
    assert_eq!(env.arrival, 1_000);
    assert_eq!(env.origin, Origin::Smtp);
    assert_eq!(env.size, body.len() as u64);
    assert_eq!(env.next_due, Some(1_000));
    assert_eq!(q.envelope(env.id).unwrap(), Some(env.clone()));
    assert_eq!(q.body(env.id).unwrap().as_deref(), Some(&body[..]));
    assert_eq!(q.len(), 1);
    assert_eq!(q.list().unwrap(), vec![env]);
    assert_eq!(q.envelope(QueueId(123_456)).unwrap(), None);
    assert_eq!(q.body(QueueId(123_456)).unwrap(), None);
}

#[test]
fn insert_with_used_id_fails() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let env = insert(&q, 1, &["b@b.onion"], b"one");
    let recipients = rcpts(&["x@x.onion"]);
    let again = q.insert(&NewMessage {
        id: env.id,
        sender: "",
        recipients: &recipients,
        origin: Origin::Bounce,
        arrival: 2,
        body: b"two",
    });
    assert!(again.is_err());
    assert_eq!(q.envelope(env.id).unwrap(), Some(env.clone()));
    assert_eq!(q.body(env.id).unwrap().unwrap(), b"one");
    assert_eq!(q.due(u64::MAX, 10).unwrap(), vec![env.id]);
}

#[test]
fn due_ordering_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let a = insert(&q, 300, &["x@x.onion"], b"a").id;
    let b = insert(&q, 100, &["x@x.onion"], b"b").id;
    let c = insert(&q, 200, &["x@x.onion"], b"c").id;
    let d = insert(&q, 200, &["x@x.onion"], b"d").id;
    // Ids are random: messages due at the same second come in id order.
    let (c, d) = (c.min(d), c.max(d));
    assert_eq!(q.due(1_000, 10).unwrap(), vec![b, c, d, a]);
    assert_eq!(q.due(1_000, 2).unwrap(), vec![b, c]);
    assert_eq!(q.due(1_000, 0).unwrap(), Vec::<QueueId>::new());
    assert_eq!(q.due(99, 10).unwrap(), Vec::<QueueId>::new());
    assert_eq!(q.due(100, 10).unwrap(), vec![b]);
    assert_eq!(q.due(250, 10).unwrap(), vec![b, c, d]);
    assert_eq!(q.due(u64::MAX, 10).unwrap(), vec![b, c, d, a]);
    assert_eq!(q.next_due().unwrap(), Some(100));
    assert_eq!(q.len(), 4);
    let listed: Vec<QueueId> = q.list().unwrap().into_iter().map(|e| e.id).collect();
    let mut by_id = vec![a, b, c, d];
    by_id.sort();
    assert_eq!(listed, by_id, "list is by id");
}

#[test]
fn next_due_empty() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.next_due().unwrap(), None);
    assert!(q.due(u64::MAX, 5).unwrap().is_empty());
    assert!(q.list().unwrap().is_empty());
}

#[test]
fn update_moves_due_key() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let q = Queue::open(dir.path()).unwrap();
        let mut env = insert(&q, 100, &["x@x.onion", "y@y.onion"], b"m");
        id = env.id;
        env.recipients[0].state = RecipientState::Delivered;
        env.recipients[0].attempts = 1;
        env.recipients[1].attempts = 1;
        env.recipients[1].last_reply = Some(smtorp_queue::Reply::new(451, [4, 4, 1], "try later"));
        // Far in the future so that reopening (recovery makes it due now) is visible below.
        let later = u64::MAX - 10;
        env.next_due = Some(later);
        q.update(&env).unwrap();
        assert_eq!(q.envelope(id).unwrap(), Some(env.clone()));
        assert!(q.due(1_000_000, 10).unwrap().is_empty());
        assert!(q.due(later - 1, 10).unwrap().is_empty());
        assert_eq!(q.due(later, 10).unwrap(), vec![id]);
        assert_eq!(q.next_due().unwrap(), Some(later));
        assert_eq!(q.body(id).unwrap().unwrap(), b"m");
        q.sync_blocking().unwrap();
    }
    // Old key gone, new key there.
    assert_eq!(raw_due_keys(dir.path()), vec![(u64::MAX - 10, id.0)]);
}

#[test]
fn update_twice_keeps_one_due_key() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let mut env = insert(&q, 100, &["x@x.onion"], b"m");
    let other = insert(&q, 150, &["x@x.onion"], b"o").id;
    for t in [500, 300, 900] {
        env.next_due = Some(t);
        q.update(&env).unwrap();
    }
    assert_eq!(q.due(899, 10).unwrap(), vec![other]);
    assert_eq!(q.due(900, 10).unwrap(), vec![other, env.id]);
    drop(q);
    let mut keys = raw_due_keys(dir.path());
    keys.sort();
    assert_eq!(keys, vec![(150, other.0), (900, env.id.0)]);
}

#[test]
fn update_all_done_removes_message() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path()).unwrap();
        let mut env = insert(&q, 100, &["x@x.onion", "y@y.onion"], b"m");
        let keep = insert(&q, 100, &["z@z.onion"], b"k");
        env.recipients[0].state = RecipientState::Delivered;
        env.recipients[1].state = RecipientState::Failed;
        env.next_due = Some(5_000); // ignored: nothing pending
        q.update(&env).unwrap();
        assert_eq!(q.envelope(env.id).unwrap(), None);
        assert_eq!(q.body(env.id).unwrap(), None);
        assert_eq!(q.due(u64::MAX, 10).unwrap(), vec![keep.id]);
        assert_eq!(q.len(), 1);
        // A second update of the removed message is a no-op.
        q.update(&env).unwrap();
        let mut pending = env.clone();
        pending.recipients[1].state = RecipientState::Pending;
        q.update(&pending).unwrap();
        assert_eq!(q.envelope(env.id).unwrap(), None);
        assert_eq!(q.len(), 1);
        q.sync_blocking().unwrap();
    }
    assert_eq!(raw_due_keys(dir.path()).len(), 1);
}

#[test]
fn update_pending_without_due_time_is_due_now() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let mut env = insert(&q, 100, &["x@x.onion"], b"m");
    env.next_due = None;
    q.update(&env).unwrap();
    let stored = q.envelope(env.id).unwrap().unwrap();
    let t = stored.next_due.unwrap();
    assert!(t > 1_600_000_000);
    assert_eq!(q.due(t, 10).unwrap(), vec![env.id]);
    assert_eq!(q.next_due().unwrap(), Some(t));
}

#[test]
fn remove_message() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let env = insert(&q, 100, &["x@x.onion"], b"m");
    let other = insert(&q, 200, &["x@x.onion"], b"o");
    assert!(q.remove(env.id).unwrap());
    assert!(!q.remove(env.id).unwrap());
    assert_eq!(q.envelope(env.id).unwrap(), None);
    assert_eq!(q.body(env.id).unwrap(), None);
    assert_eq!(q.due(u64::MAX, 10).unwrap(), vec![other.id]);
    assert_eq!(q.len(), 1);
    assert!(!q.remove(QueueId(999_999)).unwrap());
}

#[test]
fn queue_id_display_and_parse() {
    for n in [0u64, 1, 0xAB, 0xDEAD_BEEF, u64::MAX] {
        let id = QueueId(n);
        let s = id.to_string();
        assert_eq!(s.len(), 16);
        assert_eq!(s, s.to_uppercase());
        assert_eq!(s.parse::<QueueId>().unwrap(), id);
    }
    assert_eq!(QueueId(0xAB).to_string(), "00000000000000AB");
    assert_eq!(
        "00000000000000ab".parse::<QueueId>().unwrap(),
        QueueId(0xAB)
    );
    for bad in ["", "xyz", "10000000000000000A", "-1"] {
        assert!(matches!(bad.parse::<QueueId>(), Err(QueueError::BadId(s)) if s == bad));
    }
}

#[test]
fn ids_are_unique_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let q = Queue::open(dir.path()).unwrap();
        for _ in 0..100 {
            let id = q.next_id().unwrap();
            assert_ne!(id.0, 0);
            assert!(seen.insert(id), "duplicate id {id}");
        }
    }
}

#[test]
fn sync_blocking_works() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    insert(&q, 1, &["x@x.onion"], b"m");
    let before = q.flush_count();
    q.sync_blocking().unwrap();
    q.sync_blocking().unwrap();
    assert_eq!(q.flush_count(), before + 2);
}

#[tokio::test]
async fn sync_works() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    insert(&q, 1, &["x@x.onion"], b"m");
    q.sync().await.unwrap();
    assert!(q.flush_count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_syncs_share_flushes() {
    const TASKS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(Queue::open(dir.path()).unwrap());
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let q = Arc::clone(&q);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let body = format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes();
            let env = insert(&q, i as u64, &["x@x.onion"], &body);
            barrier.wait().await;
            q.sync().await.unwrap();
            env.id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let flushes = q.flush_count();
    assert!(flushes >= 1);
    assert!(
        flushes < TASKS as u64,
        "{flushes} flushes for {TASKS} syncs"
    );
    assert_eq!(q.len(), TASKS);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    for id in ids {
        assert!(q.envelope(id).unwrap().is_some());
    }
}

#[test]
fn durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let env = {
        let q = Queue::open(dir.path()).unwrap();
        let env = insert(&q, 42, &["x@x.onion", "y@y.onion"], &body);
        q.sync_blocking().unwrap();
        env
    };
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.envelope(env.id).unwrap(), Some(env.clone()));
    assert_eq!(q.body(env.id).unwrap().unwrap(), body);
    assert_eq!(q.due(42, 10).unwrap(), vec![env.id]);
    assert!(q.recovery().is_clean(), "{:?}", q.recovery());
    assert_eq!(*q.recovery(), Default::default());
}

#[test]
fn second_open_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    match Queue::open(dir.path()) {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("locked"), "{text}");
            assert!(text.contains("daemon"), "{text}");
        }
        Ok(_) => panic!("second open succeeded"),
    }
    drop(q);
    Queue::open(dir.path()).unwrap();
}

#[test]
fn open_creates_private_folder() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool/queue");
    let _q = Queue::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn open_on_a_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, b"x").unwrap();
    assert!(Queue::open(&path).is_err());
}

#[test]
fn insert_once_refuses_a_token_seen_before() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let rcpts = vec!["bob@b.onion".to_string()];
    let msg = |id| NewMessage {
        id,
        sender: "a@a.onion",
        recipients: &rcpts,
        origin: Origin::Maildrop,
        arrival: 100,
        body: b"x\r\n",
    };
    let first = queue.next_id().unwrap();
    assert!(queue.insert_once(&msg(first), "drop-1").unwrap().is_some());
    assert!(queue.has_token("drop-1").unwrap());
    let second = queue.next_id().unwrap();
    assert!(queue.insert_once(&msg(second), "drop-1").unwrap().is_none());
    assert!(
        queue.envelope(second).unwrap().is_none(),
        "nothing written the second time"
    );
    assert_eq!(queue.len(), 1);
    queue.sync_blocking().unwrap();
    drop(queue);
    let queue = Queue::open(dir.path()).unwrap();
    assert_eq!(queue.tokens().unwrap(), vec!["drop-1".to_string()]);
    queue.forget_token("drop-1").unwrap();
    assert!(!queue.has_token("drop-1").unwrap());
    assert!(queue.insert_once(&msg(second), "drop-1").unwrap().is_some());
}

#[test]
fn a_spool_file_for_a_chosen_id_is_refused_while_that_id_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let id = q.next_id().unwrap();
    let mut spool = q.create_spool_for(id).unwrap().unwrap();
    assert_eq!(spool.id(), id);
    spool.write_all(b"Subject: chosen\r\n\r\nbody\r\n").unwrap();
    // Another incoming message with the same id: refused, the first file untouched.
    assert!(q.create_spool_for(id).unwrap().is_none());
    let env = commit(&q, spool, 10, &["bob@b.onion"]);
    assert_eq!(env.id, id);
    // A queued message's id: refused too.
    assert!(q.create_spool_for(id).unwrap().is_none());
    assert_eq!(
        q.body(id).unwrap().unwrap(),
        b"Subject: chosen\r\n\r\nbody\r\n"
    );
    // Dropped without a commit, a spool file for a fresh id leaves nothing behind.
    let other = q.next_id().unwrap();
    drop(q.create_spool_for(other).unwrap().unwrap());
    assert_eq!(std::fs::read_dir(q.spool_dir()).unwrap().count(), 1);
}

#[test]
fn spool_files_live_exactly_as_long_as_their_message() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let files = || std::fs::read_dir(q.spool_dir()).unwrap().count();
    // A message being received that is never committed leaves nothing.
    let mut spool = q.create_spool().unwrap();
    spool.write_all(b"Subject: abandoned\r\n").unwrap();
    assert_eq!(files(), 1);
    drop(spool);
    assert_eq!(files(), 0);
    // A committed one keeps its file until nothing is pending.
    let recipients = rcpts(&["bob@b.onion"]);
    let mut spool = q.create_spool().unwrap();
    spool.write_all(b"Subject: kept\r\n\r\nbody\r\n").unwrap();
    let envelope = smtorp_queue::NewEnvelope {
        sender: "alice@a.onion",
        recipients: &recipients,
        origin: Origin::Smtp,
        arrival: 10,
    };
    let mut env = q.commit(spool, &envelope, None).unwrap().unwrap();
    assert_eq!(env.size, 23);
    assert_eq!(
        q.body(env.id).unwrap().unwrap(),
        b"Subject: kept\r\n\r\nbody\r\n"
    );
    assert_eq!(q.body_prefix(env.id, 7).unwrap().unwrap(), b"Subject");
    assert_eq!(files(), 1);
    env.recipients[0].state = RecipientState::Delivered;
    q.update(&env).unwrap();
    assert_eq!(files(), 0);
    // A token seen before: nothing queued, the spool file goes away.
    let first = q.create_spool().unwrap();
    assert!(q.commit(first, &envelope, Some("t")).unwrap().is_some());
    let second = q.create_spool().unwrap();
    assert!(q.commit(second, &envelope, Some("t")).unwrap().is_none());
    assert_eq!(files(), 1);
}

#[test]
fn disk_use_is_near_the_size_of_the_mail() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let body = vec![b'x'; 1024 * 1024];
    for _ in 0..20 {
        insert(&q, 1, &["bob@b.onion"], &body);
    }
    q.sync_blocking().unwrap();
    let mail = 20 * body.len() as u64;
    let used = q.disk_usage();
    assert!(used >= mail, "{used} < {mail}");
    assert!(
        used < mail + mail / 4,
        "the queue takes {used} bytes for {mail} bytes of mail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_call_is_answered_in_time_and_the_queue_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(Queue::open(dir.path()).unwrap());
    q.set_store_timeout(std::time::Duration::from_millis(200));
    let release = Arc::new(std::sync::Barrier::new(2));
    let held = release.clone();
    // A call that blocks (as sled does on a full disk) until released.
    let stuck = q
        .call(move |q| {
            held.wait();
            Ok(q.len())
        })
        .await;
    assert!(
        matches!(stuck, Err(QueueError::Unavailable(_))),
        "{stuck:?}"
    );
    assert!(!q.is_available());
    // While it is stuck, other calls are refused at once instead of piling up.
    let started = std::time::Instant::now();
    let refused = q.call(|q| Ok(q.len())).await;
    assert!(matches!(refused, Err(QueueError::Unavailable(_))));
    assert!(started.elapsed() < std::time::Duration::from_millis(150));
    // Once it returns, the queue answers again.
    tokio::task::spawn_blocking(move || release.wait())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !q.is_available() {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never recovered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(q.call(|q| Ok(q.len())).await.unwrap(), 0);
}

#[test]
fn peers_are_opaque_keys_with_a_time() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path()).unwrap();
        q.record_peer(&[1u8; 32], 100).unwrap();
        q.record_peer(&[2u8; 32], 200).unwrap();
        q.record_peer(&[1u8; 32], 300).unwrap();
        q.sync_blocking().unwrap();
    }
    let q = Queue::open(dir.path()).unwrap();
    let mut peers = q.peers().unwrap();
    peers.sort();
    assert_eq!(peers, vec![([1u8; 32], 300), ([2u8; 32], 200)]);
    assert!(q.forget_peer(&[1u8; 32]).unwrap());
    assert!(!q.forget_peer(&[1u8; 32]).unwrap());
    assert_eq!(q.peers().unwrap().len(), 1);
}

#[test]
fn a_delivered_message_leaves_its_file_for_the_next_one() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let inode = |id: QueueId| {
        std::fs::metadata(q.spool_dir().join(id.to_string()))
            .unwrap()
            .ino()
    };
    let first_body = b"Subject: first\r\n\r\na longer secret than the next one\r\n";
    let mut env = insert(&q, 1, &["bob@b.onion"], first_body);
    let first = inode(env.id);
    env.recipients[0].state = RecipientState::Delivered;
    q.update(&env).unwrap();
    assert!(q.body(env.id).unwrap().is_none());
    assert_eq!(std::fs::read_dir(q.spool_dir()).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool.free"))
            .unwrap()
            .count(),
        1,
        "the file is pooled"
    );
    // Not reused before the spool folder's next fsync: until then the folder on disk may
    // still name it `spool/<first id>`.
    let early = q.create_spool().unwrap();
    assert_ne!(
        inode(early.id()),
        first,
        "a pooled file is reused only after a sync"
    );
    drop(early);
    q.sync_blocking().unwrap();
    // The next message gets the same file, written over the first one's content; what is
    // left of that beyond the new content is cut at commit.
    let mut spool = q.create_spool().unwrap();
    let id = spool.id();
    assert_eq!(inode(id), first, "the pooled file is reused");
    spool.write_all(b"Subject: second\r\n\r\nx\r\n").unwrap();
    let env = commit(&q, spool, 2, &["carol@c.onion"]);
    q.sync_blocking().unwrap();
    assert_eq!(
        q.body(env.id).unwrap().unwrap(),
        b"Subject: second\r\n\r\nx\r\n"
    );
    assert_eq!(env.size, 22);
    drop(q);
    // And after a restart (recovery compares the file with the recorded size).
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(
        q.body(env.id).unwrap().unwrap(),
        b"Subject: second\r\n\r\nx\r\n"
    );
}

#[test]
fn an_explicit_removal_unlinks_and_the_pool_is_emptied_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("spool.free");
    {
        let q = Queue::open(dir.path()).unwrap();
        // `remove` (queue delete): a reader may still hold the file; it is not pooled.
        let env = insert(&q, 1, &["bob@b.onion"], b"Subject: a\r\n\r\na\r\n");
        let mut reader = q.open_body(env.id).unwrap().unwrap();
        assert!(q.remove(env.id).unwrap());
        assert_eq!(std::fs::read_dir(&pool).unwrap().count(), 0);
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut text).unwrap();
        assert_eq!(text, b"Subject: a\r\n\r\na\r\n");
        // A large message's file is unlinked too; small delivered ones are pooled.
        let mut big = insert(&q, 1, &["bob@b.onion"], &vec![b'x'; 300 * 1024]);
        big.recipients[0].state = RecipientState::Delivered;
        q.update(&big).unwrap();
        assert_eq!(std::fs::read_dir(&pool).unwrap().count(), 0);
        let envs: Vec<Envelope> = (0..3)
            .map(|_| insert(&q, 1, &["bob@b.onion"], b"Subject: b\r\n\r\nb\r\n"))
            .collect();
        for mut env in envs {
            env.recipients[0].state = RecipientState::Failed;
            q.update(&env).unwrap();
        }
        assert_eq!(std::fs::read_dir(&pool).unwrap().count(), 3);
    }
    // Nothing in the pool survives a reopen, and it is no crash to repair.
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(std::fs::read_dir(&pool).unwrap().count(), 0);
    assert!(q.recovery().is_clean(), "{:?}", q.recovery());
}

#[test]
fn the_pool_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let mut envs: Vec<Envelope> = (0..100)
        .map(|_| insert(&q, 1, &["bob@b.onion"], b"Subject: c\r\n\r\nc\r\n"))
        .collect();
    for env in &mut envs {
        env.recipients[0].state = RecipientState::Delivered;
        q.update(env).unwrap();
    }
    let pooled = std::fs::read_dir(dir.path().join("spool.free"))
        .unwrap()
        .count();
    assert_eq!(pooled, 64);
    assert_eq!(std::fs::read_dir(q.spool_dir()).unwrap().count(), 0);
}

#[test]
fn concurrent_updates_of_one_message_leave_exactly_its_due_key() {
    // The writers are plain sled writes serialized by the queue's lock (no transaction):
    // however their updates interleave, the message ends with one due key, at the
    // `next_due` of the envelope stored last, and no other.
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let q = std::sync::Arc::new(Queue::open(dir.path()).unwrap());
        let env = insert(&q, 1, &["bob@b.onion"], b"Subject: x\r\n\r\nx\r\n");
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let q = std::sync::Arc::clone(&q);
                let start = std::sync::Arc::clone(&start);
                let mut env = env.clone();
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..2000u64 {
                        env.next_due = Some(10 + (i * 7 + t * 13) % 50);
                        q.update(&env).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let last = q.envelope(env.id).unwrap().unwrap().next_due.unwrap();
        assert_eq!(q.due(u64::MAX - 1, 100).unwrap(), vec![env.id]);
        assert_eq!(q.next_due().unwrap(), Some(last));
        q.sync_blocking().unwrap();
        (env.id, last)
    };
    assert_eq!(raw_due_keys(dir.path()), vec![(id.1, id.0 .0)]);
}
