//! Starting tor daemons and stopping them by PID.
//!
//! tor runs with `RunAsDaemon 1`: the `tor` we start forks, the child opens its ports and
//! only then does the parent exit, with 0 on success. The daemon writes its `PidFile`; we stop
//! it with SIGTERM (via `/bin/kill`, since the workspace denies `unsafe_code`), then SIGKILL
//! after a grace period because tor 0.4.9 sometimes hangs on SIGTERM. A PID counts as ours
//! only while `/proc/PID/cmdline` names the node's torrc, so a recycled PID is never killed;
//! a zombie (state `Z`, possible when PID 1 does not reap) counts as gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::TornetError;

/// A tor process of a network: its node name, PID and the torrc path on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorProcess {
    /// Node name (`auth0`, `relay3`, `client`).
    pub name: String,
    /// Process id of the daemon.
    pub pid: u32,
    /// The torrc it was started with (absolute), used to recognise it in `/proc`.
    pub torrc: PathBuf,
}

impl TorProcess {
    /// True while the process exists, is not a zombie and runs with our torrc.
    pub fn is_alive(&self) -> bool {
        is_tor_of(self.pid, &self.torrc)
    }
}

/// True while `pid` is a live (non-zombie) process whose command line contains `torrc`.
pub fn is_tor_of(pid: u32, torrc: &Path) -> bool {
    state_of(pid, torrc).is_some_and(|state| state != "Z" && state != "X")
}

/// The process state letter (`R`, `S`, `T` for stopped, `Z`, ...) of `pid` if its command
/// line contains `torrc`.
fn state_of(pid: u32, torrc: &Path) -> Option<String> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let cmdline = std::fs::read(proc_dir.join("cmdline")).ok()?;
    let want = torrc.as_os_str().as_encoded_bytes();
    if !cmdline.split(|b| *b == 0).any(|arg| arg == want) {
        return None;
    }
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // The state follows the parenthesised command name.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_ascii_whitespace().next())
        .map(str::to_owned)
}

/// Freezes (SIGSTOP) or thaws (SIGCONT) the live processes and waits, at most 5 s, until
/// each is stopped or no longer stopped. Returns the names of those signalled. A frozen
/// tor keeps its sockets open (the kernel still accepts data for it) but answers nothing:
/// to its peers it looks like a network that went silent.
pub(crate) fn freeze(procs: &[TorProcess], frozen: bool) -> Result<Vec<String>, TornetError> {
    let alive: Vec<&TorProcess> = procs.iter().filter(|p| p.is_alive()).collect();
    let pids: Vec<u32> = alive.iter().map(|p| p.pid).collect();
    send(if frozen { "STOP" } else { "CONT" }, &pids)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let done = alive.iter().all(|p| {
            let state = state_of(p.pid, &p.torrc);
            state.is_none() || (state.as_deref() == Some("T")) == frozen
        });
        if done || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(alive.into_iter().map(|p| p.name.clone()).collect())
}

/// The last `n` lines of a text file (empty if it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `tor --defaults-torrc DEFAULTS -f TORRC`, checks it daemonized, and returns the
/// daemon's PID from its PidFile.
pub(crate) fn start_tor(
    name: &str,
    node_dir: &Path,
    torrc: &Path,
    defaults: &Path,
) -> Result<TorProcess, TornetError> {
    let log = node_dir.join("notice.log");
    let pid_file = node_dir.join("tor.pid");
    let out = Command::new("tor")
        .arg("--defaults-torrc")
        .arg(defaults)
        .arg("-f")
        .arg(torrc)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|error| TornetError::NotInstalled {
            program: "tor".into(),
            error,
        })?;
    if !out.status.success() {
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = output.lines().collect();
        return Err(TornetError::StartFailed {
            node: name.to_owned(),
            status: out.status.to_string(),
            log_tail: tail(&log, 20),
            log,
            output: lines[lines.len().saturating_sub(10)..].join("\n"),
        });
    }
    // The parent exits once the daemon is up; the PidFile is written by then, but allow a
    // moment in case it is not.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = read_pid(&pid_file) {
            return Ok(TorProcess {
                name: name.to_owned(),
                pid,
                torrc: torrc.to_owned(),
            });
        }
        if Instant::now() > deadline {
            return Err(TornetError::StartFailed {
                node: name.to_owned(),
                status: "exit 0 but no PidFile".into(),
                log_tail: tail(&log, 20),
                log,
                output: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a PidFile.
pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends `signal` (`TERM`, `KILL`) to every PID.
fn send(signal: &str, pids: &[u32]) -> Result<(), TornetError> {
    use nix::sys::signal::{kill, Signal};
    let signal = match signal {
        "KILL" => Signal::SIGKILL,
        "STOP" => Signal::SIGSTOP,
        "CONT" => Signal::SIGCONT,
        _ => Signal::SIGTERM,
    };
    for &pid in pids {
        // A process may have exited between the check and the kill: ignored.
        let _ = kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
    Ok(())
}

/// Waits up to `limit` for every process to be gone; returns the survivors.
fn wait_gone(procs: &[TorProcess], limit: Duration) -> Vec<TorProcess> {
    let deadline = Instant::now() + limit;
    loop {
        let alive: Vec<TorProcess> = procs.iter().filter(|p| p.is_alive()).cloned().collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the processes: SIGTERM, up to `grace` to exit, then SIGKILL and up to 5 s more.
/// Returns the names of those that needed SIGKILL.
pub(crate) fn stop(procs: &[TorProcess], grace: Duration) -> Result<Vec<String>, TornetError> {
    let alive: Vec<TorProcess> = procs.iter().filter(|p| p.is_alive()).cloned().collect();
    let pids: Vec<u32> = alive.iter().map(|p| p.pid).collect();
    // A frozen daemon would act on SIGTERM only once thawed.
    send("CONT", &pids)?;
    send("TERM", &pids)?;
    let stubborn = wait_gone(&alive, grace);
    if stubborn.is_empty() {
        return Ok(Vec::new());
    }
    let pids: Vec<u32> = stubborn.iter().map(|p| p.pid).collect();
    tracing::warn!(?pids, "tor did not exit on SIGTERM; sending SIGKILL");
    send("KILL", &pids)?;
    let left = wait_gone(&stubborn, Duration::from_secs(5));
    if !left.is_empty() {
        return Err(TornetError::StillRunning(
            left.iter().map(|p| p.pid).collect(),
        ));
    }
    Ok(stubborn.into_iter().map(|p| p.name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that ignores SIGTERM, with `marker` on its command line like a torrc.
    fn stubborn(marker: &Path) -> std::process::Child {
        Command::new("sh")
            .arg("-c")
            .arg("trap '' TERM; while :; do sleep 0.1; done")
            .arg(marker)
            .spawn()
            .unwrap()
    }

    #[test]
    fn sigkill_follows_an_ignored_sigterm() {
        let marker = PathBuf::from(format!("/tmp/tornet-test-{}/torrc", std::process::id()));
        let mut child = stubborn(&marker);
        let p = TorProcess {
            name: "stubborn".into(),
            pid: child.id(),
            torrc: marker.clone(),
        };
        // Wait until the shell has installed its trap.
        std::thread::sleep(Duration::from_millis(300));
        assert!(p.is_alive());
        assert!(!is_tor_of(p.pid, Path::new("/some/other/torrc")));
        let t0 = Instant::now();
        let killed = stop(std::slice::from_ref(&p), Duration::from_millis(500)).unwrap();
        assert_eq!(killed, vec!["stubborn".to_owned()]);
        assert!(t0.elapsed() >= Duration::from_millis(500));
        assert!(!p.is_alive(), "a zombie counts as gone");
        let _ = child.wait();
        // Idempotent.
        assert!(stop(&[p], Duration::from_millis(100)).unwrap().is_empty());
    }

    #[test]
    fn freeze_and_thaw_stop_and_resume_a_process() {
        let marker = PathBuf::from(format!("/tmp/tornet-freeze-{}/torrc", std::process::id()));
        /// Kills the shell even when an assertion fails (it holds the test's stdout).
        struct Reaper(std::process::Child);
        impl Drop for Reaper {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let child = Reaper(stubborn(&marker));
        let p = TorProcess {
            name: "sleeper".into(),
            pid: child.0.id(),
            torrc: marker,
        };
        // Until the shell has started, its command line is not ours yet.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            freeze(std::slice::from_ref(&p), true).unwrap(),
            vec!["sleeper"]
        );
        assert_eq!(state_of(p.pid, &p.torrc).as_deref(), Some("T"));
        assert!(p.is_alive(), "a frozen process is alive");
        freeze(std::slice::from_ref(&p), false).unwrap();
        assert_ne!(state_of(p.pid, &p.torrc).as_deref(), Some("T"));
        // Frozen again, it is still stopped by `stop` (which thaws it first).
        freeze(std::slice::from_ref(&p), true).unwrap();
        stop(std::slice::from_ref(&p), Duration::from_millis(300)).unwrap();
        assert!(!p.is_alive());
        drop(child);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        std::fs::write(&f, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&f, 2), "c\nd");
        assert_eq!(tail(&f, 10), "a\nb\nc\nd");
        assert_eq!(tail(&dir.path().join("missing"), 3), "");
    }
}
