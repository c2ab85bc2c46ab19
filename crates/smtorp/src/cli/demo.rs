//! `smtorp demo`: the whole mission on one machine without Internet. Brings up a private Tor
//! network (Debian's `tor` daemons on 127.0.0.1), starts two smtorp servers on it, each
//! with its own onion address, sends a message from alice on A to bob on B through A's
//! queue, arti, B's onion service, B's queue and bob's Maildir, and a reply back; prints
//! each step with its timing, then shuts everything down.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::say;

use anyhow::{bail, Context};
use smtorp_tornet::{Options, TorNet};

/// One smtorp server of the demo.
struct Server {
    name: &'static str,
    user: &'static str,
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    address: String,
    child: Option<Child>,
}

impl Server {
    fn maildir_new(&self) -> PathBuf {
        self.data_dir.join("mail").join(self.user).join("new")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn step(started: Instant, text: &str) {
    say!("[{:6.1} s] {text}", started.elapsed().as_secs_f64());
}

fn smtorp(config: &Path) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("smtorp"));
    let mut cmd = Command::new(exe);
    cmd.arg("--config").arg(config);
    cmd
}

fn write_config(
    dir: &Path,
    name: &str,
    user: &str,
    arti_toml: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let home = dir.join(name);
    fs::create_dir_all(&home)?;
    let data_dir = home.join("data");
    let config = home.join("smtorp.toml");
    let text = format!(
        r#"# smtorp demo server {name}
data_dir = "{data}"
[onion]
enabled = true
arti_config = "{arti}"
[submission]
listen = []
[local]
users = ["{user}"]
[delivery]
# Fast retries: on a brand-new network the peer's descriptor may take a moment to appear.
retry_after = ["2s", "3s", "5s", "10s"]
"#,
        data = data_dir.display(),
        arti = arti_toml.display(),
    );
    fs::write(&config, text)?;
    Ok((config, data_dir))
}

fn wait_for_log(server: &Server, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if fs::read_to_string(&server.log)
            .unwrap_or_default()
            .contains(needle)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "server {} did not log \"{needle}\" within {} s; see {}",
        server.name,
        timeout.as_secs(),
        server.log.display()
    )
}

fn wait_for_file(dir: &Path, timeout: Duration) -> anyhow::Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(entries) = fs::read_dir(dir) {
            if let Some(entry) = entries.filter_map(|e| e.ok()).next() {
                return Ok(entry.path());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "no message arrived in {} within {} s",
        dir.display(),
        timeout.as_secs()
    )
}

/// The `seconds=` field of the first log line containing `needle`, or "?".
fn logged_seconds(log: &str, needle: &str) -> String {
    log.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.split("seconds=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "?".into())
}

/// Waits until `dir` holds a second file; returns the newest.
fn wait_for_second(dir: &Path, timeout: Duration) -> anyhow::Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        if files.len() >= 2 {
            files.sort();
            return files.pop().context("no file");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "no second message arrived in {} within {} s",
        dir.display(),
        timeout.as_secs()
    )
}

fn send(from: &Server, to: &Server, subject: &str, body: &str) -> anyhow::Result<()> {
    let message = format!(
        "From: {u}@{a}\nTo: {tu}@{ta}\nSubject: {subject}\n\n{body}\n",
        u = from.user,
        a = from.address,
        tu = to.user,
        ta = to.address
    );
    let mut child = smtorp(&from.config)
        .arg("sendmail")
        .arg("-f")
        .arg(format!("{}@{}", from.user, from.address))
        .arg(format!("{}@{}", to.user, to.address))
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run smtorp sendmail")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(message.as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!("smtorp sendmail failed");
    }
    Ok(())
}

/// Shows the interesting header fields of a delivered message, then what the receiver
/// found when it checked the sender's onion key signature (XONIONAUTH).
fn show_message(started: Instant, path: &Path, receiver: &str, sender: &str) {
    say!("           file: {}", path.display());
    let text = fs::read_to_string(path).unwrap_or_default();
    let header: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
    for line in &header {
        let keep = [
            "Return-Path:",
            "Delivered-To:",
            "Received:",
            "Authentication-Results:",
            "From:",
            "To:",
            "Subject:",
            "Date:",
            "Message-ID:",
        ];
        if keep.iter().any(|k| line.starts_with(k)) || line.starts_with('\t') {
            say!("           | {line}");
        }
    }
    let result = header
        .iter()
        .find_map(|l| l.strip_prefix("Authentication-Results:"))
        .and_then(|v| v.split("x-onion-auth=").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or_default().to_owned());
    let text = match result.as_deref() {
        Some("pass") => format!(
            "sender authentication: pass ({receiver} checked {sender}'s signature with the key in {sender}'s onion address)"
        ),
        Some(other) => format!("sender authentication: {other} (expected pass: see docs/sender-auth.md)"),
        None => "sender authentication: no result in the header (expected pass)".to_owned(),
    };
    step(started, &text);
}

/// Runs the demo in `keep` (left in place) or a temporary folder (removed).
pub(crate) async fn run(keep: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    let temp;
    let dir = match &keep {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            dir.canonicalize()?
        }
        None => {
            temp = tempfile::Builder::new().prefix("smtorp-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    step(started, &format!("working in {}", dir.display()));
    step(started, "bringing up a private Tor network: 3 directory authorities, 5 relays, 1 C tor client on 127.0.0.1");
    let net = TorNet::up(&dir.join("tornet"), Options::default())
        .await
        .context(
            "cannot bring up the private Tor network (is Debian's `tor` package installed?)",
        )?;
    step(started, &format!("Tor network ready ({})", net.timings()));

    let mut servers = Vec::new();
    for (name, user) in [("A", "alice"), ("B", "bob")] {
        let (config, data_dir) = write_config(&dir, name, user, &net.arti_toml_path())?;
        let out = smtorp(&config)
            .arg("init")
            .output()
            .context("smtorp init")?;
        if !out.status.success() {
            bail!(
                "smtorp init for {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let address = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("onion address: ").map(str::to_owned))
            .context("init printed no onion address")?;
        step(started, &format!("server {name}: {user}@{address}"));
        let log = dir.join(name).join("smtorp.log");
        let child = smtorp(&config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("cannot start smtorp run")?;
        servers.push(Server {
            name,
            user,
            config,
            data_dir,
            log,
            address,
            child: Some(child),
        });
    }
    for server in &servers {
        wait_for_log(server, "onion service launched", Duration::from_secs(90))?;
        let log = fs::read_to_string(&server.log).unwrap_or_default();
        step(
            started,
            &format!(
                "server {}: arti bootstrapped in {} s, onion service launched at {} s after start",
                server.name,
                logged_seconds(&log, "Tor bootstrapped"),
                logged_seconds(&log, "onion service launched"),
            ),
        );
    }

    let (a, b) = (&servers[0], &servers[1]);
    let sent = Instant::now();
    send(
        a,
        b,
        "Hello over Tor",
        "Hi Bob, this went from onion service to onion service.",
    )?;
    step(
        started,
        "alice on A submitted a message to bob on B with `smtorp sendmail`",
    );
    let file = wait_for_file(&b.maildir_new(), Duration::from_secs(60))?;
    step(started, &format!("delivered to bob's Maildir on B in {:.1} s (A's queue -> arti -> B's onion service -> B's queue -> Maildir)", sent.elapsed().as_secs_f64()));
    show_message(started, &file, "B", "A");

    let sent = Instant::now();
    send(
        b,
        a,
        "Re: Hello over Tor",
        "Hi Alice, got it, replying the same way.",
    )?;
    step(started, "bob on B replied to alice on A");
    let file = wait_for_file(&a.maildir_new(), Duration::from_secs(60))?;
    step(
        started,
        &format!(
            "delivered to alice's Maildir on A in {:.1} s",
            sent.elapsed().as_secs_f64()
        ),
    );
    show_message(started, &file, "A", "B");

    let sent = Instant::now();
    send(a, b, "Second message", "Circuits are warm now.")?;
    let second = wait_for_second(&b.maildir_new(), Duration::from_secs(60))?;
    step(
        started,
        &format!(
            "a second message A -> B on warm circuits: delivered in {:.1} s",
            sent.elapsed().as_secs_f64()
        ),
    );
    show_message(started, &second, "B", "A");

    for server in &mut servers {
        server.stop();
    }
    step(started, "both servers stopped");
    net.down();
    step(started, "Tor network stopped");
    match keep {
        Some(dir) => say!(
            "everything is kept in {} (logs: A/smtorp.log, B/smtorp.log)",
            dir.display()
        ),
        None => say!("done; use --keep DIR to keep the servers' folders and logs"),
    }
    Ok(())
}
