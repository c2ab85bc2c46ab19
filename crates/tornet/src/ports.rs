//! Choosing free TCP ports on 127.0.0.1 so that several networks can run side by side.
//!
//! Ports are drawn at random from 20000..32000, below Linux's ephemeral range (32768..),
//! so that the source ports of the nodes' own outgoing connections never take a port
//! meant for a listener between the choice and tor's bind. Each candidate is checked by
//! binding it (all are held until the whole set is chosen), and ports handed out once are
//! remembered for the life of the process so two networks started together never share one.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::Mutex;

use crate::error::TornetError;

/// Lowest port handed out.
const LOW: u16 = 20000;
/// One above the highest port handed out.
const HIGH: u16 = 32000;

/// Ports already handed out by this process.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A random number (std's per-process random hasher keys, mixed with a counter).
fn random_u64(counter: u64) -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(counter);
    h.write_u32(std::process::id());
    h.finish()
}

/// Returns `n` distinct ports that were free on 127.0.0.1 a moment ago.
pub fn pick_free_ports(n: usize) -> Result<Vec<u16>, TornetError> {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let span = u64::from(HIGH - LOW);
    let mut tries = 0u64;
    while ports.len() < n {
        tries += 1;
        if tries > 20_000 {
            return Err(TornetError::NoFreePorts(n));
        }
        let port = LOW + (random_u64(tries) % span) as u16;
        if handed_out.contains(&port) || ports.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
            ports.push(port);
        }
    }
    handed_out.extend(ports.iter().copied());
    drop(held);
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_in_range() {
        let a = pick_free_ports(17).unwrap_or_default();
        let b = pick_free_ports(17).unwrap_or_default();
        assert_eq!(a.len(), 17);
        let all: HashSet<u16> = a.iter().chain(b.iter()).copied().collect();
        assert_eq!(all.len(), 34, "ports repeat: {a:?} {b:?}");
        assert!(all.iter().all(|p| (LOW..HIGH).contains(p)));
    }
}
