//! Integration tests: bring real private Tor networks up with the system's `tor`, check them,
//! and check that dropping the handle stops every daemon.
//!
//! Skipped (with a message) when `tor` or `tor-gencert` is not installed; CI installs them.

#![cfg(test)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smtorp_tornet::{Options, TorNet, TornetError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// True if `tor` and `tor-gencert` can be run; prints why the test is skipped otherwise.
fn tor_installed() -> bool {
    for (program, arg) in [("tor", "--version"), ("tor-gencert", "--help")] {
        let ok = Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !ok {
            eprintln!("SKIPPED: `{program}` is not installed (apt-get install -y tor)");
            return false;
        }
    }
    true
}

/// PIDs of live, non-zombie processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Checks a network that is up: consensus, files, arti.toml shape, SOCKS port.
async fn check_network(net: &TorNet) {
    let summary = net.consensus_summary().await.unwrap();
    assert_eq!(summary.relays, 8, "{summary}");
    assert_eq!(summary.hsdirs, 8, "{summary}");

    // arti.toml: on disk, valid TOML, the expected sections, no [storage].
    let text = std::fs::read_to_string(net.arti_toml_path()).unwrap();
    assert_eq!(text, net.arti_toml());
    let v: toml::Table = toml::from_str(&text).unwrap();
    let tor_network = v["tor_network"].as_table().unwrap();
    assert_eq!(tor_network["fallback_caches"].as_array().unwrap().len(), 3);
    let auth = tor_network["authorities"].as_table().unwrap();
    for key in ["v3idents", "uploads", "downloads", "votes"] {
        assert_eq!(auth[key].as_array().unwrap().len(), 3, "{key}");
    }
    let dir_port = net.layout().authorities[0].dir_port;
    assert_eq!(
        auth["uploads"][0][0].as_str().unwrap(),
        format!("127.0.0.1:{dir_port}")
    );
    assert_eq!(
        v["path_rules"]["ipv4_subnet_family_prefix"].as_integer(),
        Some(33)
    );
    assert_eq!(
        v["address_filter"]["allow_local_addrs"].as_bool(),
        Some(true)
    );
    assert_eq!(
        v["override_net_params"]["hsdir_interval"].as_integer(),
        Some(8)
    );
    assert!(!v.contains_key("storage"));

    // socks_port file, and the C tor client speaks SOCKS5 there.
    let port: u16 = std::fs::read_to_string(net.dir().join("socks_port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(port, net.socks_port());
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap(); // SOCKS5, one method: no authentication
    let mut reply = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, [5, 0], "SOCKS5 method selection");

    // Nine daemons: 3 authorities, 5 relays, the client.
    let procs = net.processes();
    assert_eq!(procs.len(), 9);
    assert!(procs.iter().all(|p| p.is_alive()));
}

#[tokio::test]
async fn network_comes_up_and_goes_down() {
    if !tor_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let t0 = Instant::now();
    let net = TorNet::up(&dir, Options::default()).await.unwrap();
    eprintln!(
        "network up in {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        net.timings()
    );
    check_network(&net).await;

    // A second `up` on the same running directory is refused and touches nothing.
    match TorNet::up(&dir, Options::default()).await {
        Err(TornetError::AlreadyRunning { pids, .. }) => assert_eq!(pids.len(), 9),
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    assert!(net.processes().iter().all(|p| p.is_alive()));

    let procs = net.processes();
    let canonical = net.dir().to_owned();
    assert!(!processes_mentioning(&canonical).is_empty());
    let t1 = Instant::now();
    drop(net);
    eprintln!("network down in {:.1} s", t1.elapsed().as_secs_f64());
    for p in &procs {
        assert!(
            !p.is_alive(),
            "{} (pid {}) survived the drop",
            p.name,
            p.pid
        );
    }
    assert_eq!(processes_mentioning(&canonical), Vec::<u32>::new());
    // Idempotent: nothing left to stop.
    let report = smtorp_tornet::down_dir(&canonical).unwrap();
    assert!(report.stopped.is_empty());
}

#[tokio::test]
async fn two_networks_side_by_side() {
    if !tor_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let t0 = Instant::now();
    let (na, nb) = tokio::join!(
        TorNet::up(&a, Options::default()),
        TorNet::up(&b, Options::default())
    );
    let (na, nb) = (na.unwrap(), nb.unwrap());
    eprintln!("two networks up in {:.1} s", t0.elapsed().as_secs_f64());

    let ports = |n: &TorNet| -> Vec<u16> {
        let mut v: Vec<u16> = n
            .layout()
            .nodes()
            .flat_map(|x| [x.or_port, x.dir_port])
            .collect();
        v.push(n.socks_port());
        v
    };
    let (pa, pb) = (ports(&na), ports(&nb));
    assert!(
        pa.iter().all(|p| !pb.contains(p)),
        "ports clash: {pa:?} {pb:?}"
    );
    // Separate networks: different authorities.
    assert_ne!(
        na.layout().authorities[0].v3ident,
        nb.layout().authorities[0].v3ident
    );

    check_network(&na).await;
    check_network(&nb).await;

    let all: Vec<_> = na.processes().into_iter().chain(nb.processes()).collect();
    na.down();
    na.down(); // idempotent
    assert!(
        nb.processes().iter().all(|p| p.is_alive()),
        "b must survive a's down"
    );
    drop(nb);
    drop(na);
    for p in &all {
        assert!(!p.is_alive(), "{} (pid {}) survived", p.name, p.pid);
    }
}
