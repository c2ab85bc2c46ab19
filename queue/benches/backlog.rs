//! A deferred backlog must not slow down fresh mail: with N messages deferred into the
//! future, how long do the scheduler's reads (`due`, `next_due`) and a fresh message's
//! insert + sync take, compared with an empty queue? Run: `cargo bench -p smtorp-queue`
//! (N defaults to 100000; set BACKLOG=N to change it). Prints figures; asserts nothing.

use std::time::{Duration, Instant};

use smtorp_queue::{NewMessage, Origin, Queue};

const NOW: u64 = 1_800_000_000;

fn fill(queue: &Queue, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let rcpts = vec!["bob@b.onion".to_string()];
    let body = vec![b'x'; 2048];
    for i in 0..n {
        let id = queue.next_id()?;
        let msg = NewMessage {
            id,
            sender: "a@a.onion",
            recipients: &rcpts,
            origin: Origin::Smtp,
            arrival: NOW,
            body: &body,
        };
        let mut env = queue.insert(&msg)?;
        // Deferred: due between 1 h and 4 h from now.
        env.next_due = Some(NOW + 3600 + (i as u64 % 10_800));
        env.recipients[0].attempts = 3;
        queue.update(&env)?;
    }
    queue.sync_blocking()?;
    Ok(())
}

fn measure(label: &str, queue: &Queue) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = 1000;
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(queue.due(NOW, 256)?);
        std::hint::black_box(queue.next_due()?);
    }
    let reads = start.elapsed() / rounds;
    let rcpts = vec!["alice@a.onion".to_string()];
    let body = vec![b'y'; 10 * 1024];
    let mut fresh = Duration::ZERO;
    let fresh_rounds = 50;
    for _ in 0..fresh_rounds {
        let t = Instant::now();
        let id = queue.next_id()?;
        let msg = NewMessage {
            id,
            sender: "a@a.onion",
            recipients: &rcpts,
            origin: Origin::Smtp,
            arrival: NOW,
            body: &body,
        };
        queue.insert(&msg)?;
        queue.sync_blocking()?;
        let due = queue.due(NOW, 256)?;
        assert!(due.contains(&id), "the fresh message is due at once");
        fresh += t.elapsed();
        queue.remove(id)?;
    }
    println!(
        "{label:>28}: due()+next_due() {:>8.1} us   fresh insert+sync+found due {:>8.2} ms",
        reads.as_secs_f64() * 1e6,
        (fresh / fresh_rounds).as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let empty = tempfile::tempdir()?;
    let queue = Queue::open(empty.path())?;
    measure("empty queue", &queue)?;
    drop(queue);

    let full = tempfile::tempdir()?;
    let queue = Queue::open(full.path())?;
    let t = Instant::now();
    fill(&queue, n)?;
    println!(
        "(filled {n} deferred messages in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    measure(&format!("{n} deferred"), &queue)?;
    Ok(())
}
