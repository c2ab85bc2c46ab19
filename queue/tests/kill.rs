//! SIGKILL test: a child process (this test binary re-invoked) inserts messages and prints
//! each id once `sync` returned; the parent kills it mid-loop, reopens the queue and checks
//! that every printed id is there with its complete body.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smtorp_queue::{NewMessage, Origin, Queue, QueueId};

/// Set (to the queue folder) in the child only.
const CHILD_ENV: &str = "SMTORP_QUEUE_KILL_TEST_DIR";
const PREFIX: &str = "SYNCED ";

/// A body that depends on the id, of varying size (up to ~40 KB).
fn body_for(id: QueueId) -> Vec<u8> {
    let mut body =
        format!("Message-ID: <{id}@kill.test>\r\nSubject: kill test\r\n\r\n").into_bytes();
    let lines = (id.0 % 800) as usize;
    for i in 0..lines {
        body.extend_from_slice(
            format!("{id} line {i:05} abcdefghijklmnopqrstuvwxyz\r\n").as_bytes(),
        );
    }
    body
}

/// The writer. Runs only when re-invoked by `sigkill_loses_no_synced_message`.
#[test]
fn kill_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let q = Queue::open(Path::new(&dir)).unwrap();
    let rcpts = vec!["bob@b.onion".to_string()];
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    for _ in 0..20_000 {
        if start.elapsed() > Duration::from_secs(30) {
            break;
        }
        let id = q.next_id().unwrap();
        let body = body_for(id);
        q.insert(&NewMessage {
            id,
            sender: "alice@a.onion",
            recipients: &rcpts,
            origin: Origin::Submission,
            arrival: 1_000 + id.0,
            body: &body,
        })
        .unwrap();
        // Written but never synced: may or may not survive, must not break anything.
        let id2 = q.next_id().unwrap();
        q.insert(&NewMessage {
            id: id2,
            sender: "",
            recipients: &rcpts,
            origin: Origin::Bounce,
            arrival: 1,
            body: &body_for(id2),
        })
        .unwrap();
        q.sync_blocking().unwrap();
        writeln!(out, "{PREFIX}{id}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_loses_no_synced_message() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qdir = dir.path().join("queue");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &qdir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut ids = Vec::new();
    let parse = |line: &str| {
        line.strip_prefix(PREFIX)
            .map(|s| s.parse::<QueueId>().unwrap())
    };

    // Kill at a point that differs between runs.
    let kill_after = 50 + (std::process::id() as usize % 100);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.len() < kill_after && Instant::now() < deadline {
        match lines.next() {
            Some(line) => ids.extend(parse(&line.unwrap())),
            None => break,
        }
    }
    let _ = child.kill(); // SIGKILL
                          // Lines printed before the kill were synced too.
    for line in lines {
        ids.extend(parse(&line.unwrap()));
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child should have been killed: {status}"
    );
    assert!(ids.len() >= 10, "child synced only {} messages", ids.len());

    let q = Queue::open(&qdir).unwrap();
    for id in &ids {
        let env = q
            .envelope(*id)
            .unwrap()
            .unwrap_or_else(|| panic!("synced message {id} lost"));
        let body = q
            .body(*id)
            .unwrap()
            .unwrap_or_else(|| panic!("body of {id} lost"));
        assert_eq!(body, body_for(*id), "body of {id}");
        assert_eq!(env.size, body.len() as u64);
        assert!(env.has_pending());
    }
    // Whatever else survived is complete and consistent too.
    for env in q.list().unwrap() {
        assert_eq!(q.body(env.id).unwrap().unwrap(), body_for(env.id));
    }
    assert!(q.len() >= ids.len());
    assert!(q.due(u64::MAX, usize::MAX).unwrap().len() == q.len());
    eprintln!(
        "kill test: {} synced ids checked, {} messages after recovery: {:?}",
        ids.len(),
        q.len(),
        q.recovery()
    );
}
