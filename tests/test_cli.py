"""The command line: check-config, init, queue list, signals."""

import re
import signal
import subprocess
import time

from conftest import holds_for, make_onion, smtp


def run(smtorp_bin, *args, timeout=30, input=b""):
    return subprocess.run([str(smtorp_bin), *args], capture_output=True, timeout=timeout, input=input)


def test_check_config_ok(server_factory):
    srv = server_factory(start=False)
    r = srv.cli("check-config")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "OK" in out
    assert srv.domain in out
    assert "alice" in out and f"127.0.0.1:{srv.port}" in out


def test_check_config_typo_key(smtorp_bin, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/d"\n[onion]\nenabled = false\n[smtp]\nmax_mesage_size = 1000\n')
    r = run(smtorp_bin, "--config", str(cfg), "check-config")
    assert r.returncode != 0
    err = (r.stdout + r.stderr).decode()
    assert "max_mesage_size" in err, err
    assert re.search(r"line 5\b", err), err


def test_check_config_bad_duration(smtorp_bin, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/d"\n[smtp]\ncommand_timeout = "soon"\n')
    r = run(smtorp_bin, "--config", str(cfg), "check-config")
    assert r.returncode != 0
    err = (r.stdout + r.stderr).decode()
    # The error names the key and its line (TOML's own report).
    assert "command_timeout" in err and "line 3" in err, err
    cfg.write_text(f'data_dir = "{tmp_path}/d"\n[delivery]\nretry_after = ["1m", "5x"]\n')
    r = run(smtorp_bin, "--config", str(cfg), "check-config")
    assert r.returncode != 0
    err = (r.stdout + r.stderr).decode()
    assert "retry_after" in err and "line 3" in err, err


def test_check_config_other_errors(smtorp_bin, tmp_path):
    cfg = tmp_path / "c.toml"
    cases = [
        ('[smtp]\nlisten = ["localhost:25"]\n', "smtp.listen"),
        ('[local]\nusers = ["../root"]\n', "local.users"),
        ('[local]\nusers = ["a"]\naliases = { b = "c" }\n', "local.aliases"),
        ('[delivery]\nroutes = { "example.com" = "127.0.0.1:25" }\n', "delivery.routes"),
        ("[smtp]\nmax_sessions = \"many\"\n", "max_sessions"),
        ("data_dir = \n", "line 1"),
    ]
    for text, needle in cases:
        cfg.write_text(text)
        r = run(smtorp_bin, "--config", str(cfg), "check-config")
        assert r.returncode != 0, text
        err = (r.stdout + r.stderr).decode()
        assert needle in err, (text, err)


def test_run_with_bad_config_fails(smtorp_bin, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path}/d"\n[smtp]\ndata_timeout = "ten minutes"\n')
    r = run(smtorp_bin, "--config", str(cfg), "run", timeout=20)
    assert r.returncode != 0
    assert b"data_timeout" in r.stderr and b"line 3" in r.stderr, r.stderr


def test_init_creates_layout_and_is_idempotent(server_factory):
    srv = server_factory(start=False)
    for p in ("queue", "maildrop", "mail/alice/new", "mail/alice/cur", "mail/alice/tmp",
              "mail/bob/new"):
        assert (srv.data_dir / p).is_dir(), p
    assert (srv.data_dir / "maildrop").stat().st_mode & 0o7777 == 0o1733
    r = srv.cli("init")
    assert r.returncode == 0
    assert b"nothing to create" in r.stdout, r.stdout


def _remote_message(srv):
    remote = f"bob@{make_onion()}"
    r = srv.sendmail("-f", f"me@{srv.domain}", remote, input=b"Subject: far away\n\nx\n")
    assert r.returncode == 0, r.stderr
    return remote


def test_queue_list_running_and_stopped(server_factory):
    srv = server_factory(start=False)
    r = srv.queue_list()
    assert r.returncode == 0, r.stderr
    assert "0 message(s)" in r.stdout.decode()
    remote = _remote_message(srv)
    srv.start()
    # Running: through the control socket.
    deadline = time.monotonic() + 10
    out = ""
    while time.monotonic() < deadline:
        r = srv.queue_list()
        out = r.stdout.decode()
        if remote in out:
            break
        time.sleep(0.2)
    assert r.returncode == 0, r.stderr
    assert remote in out, out
    line = next(l for l in out.splitlines() if remote in l)
    qid = line.split()[0]
    assert re.fullmatch(r"[0-9A-F]{16}", qid), line
    assert "pending" in line, line
    assert "1 message(s)" in out
    assert (srv.data_dir / "control.sock").exists()
    srv.stop()
    assert not (srv.data_dir / "control.sock").exists()
    # Stopped: opening the store directly, same content.
    r = srv.queue_list()
    assert r.returncode == 0, r.stderr
    out2 = r.stdout.decode()
    assert remote in out2 and qid in out2, out2
    assert "pending" in out2
    # Local mail that was delivered is no longer listed.
    srv.start()
    with smtp(srv) as c:
        c.sendmail(f"x@{make_onion()}", [srv.addr("alice")], b"Subject: local\r\n\r\nx\r\n")
    srv.wait_for_messages("alice", 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out3 = srv.queue_list().stdout.decode()
        if "1 message(s)" in out3:
            break
        time.sleep(0.2)
    assert "1 message(s)" in out3 and qid in out3, out3
    srv.stop()


def test_sigterm_stops_quickly_with_exit_0(server):
    # An idle open session must not hold the shutdown.
    import socket

    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.recv(1024)
    t0 = time.monotonic()
    server.stop(timeout=10)
    assert time.monotonic() - t0 < 8
    # The open session was told (421) and closed.
    s.settimeout(5)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    assert data.startswith(b"421"), data
    assert "smtorp stopped" in server.log()


def test_sigint_stops_with_exit_0(server):
    server.proc.send_signal(signal.SIGINT)
    rc = server.proc.wait(timeout=10)
    server._closed()
    assert rc == 0, server.log()


def test_second_daemon_on_same_data_dir_fails(server):
    r = subprocess.run([str(server.binary), "--config", str(server.config_path), "run"],
                       capture_output=True, timeout=20)
    assert r.returncode != 0
    assert server.alive()


def test_mail_survives_restart(server):
    """Mail accepted, daemon stopped before anything else; after restart it is all there once."""
    with smtp(server) as c:
        for i in range(5):
            c.sendmail(f"x@{make_onion()}", [server.addr("alice")], f"Subject: r{i}\r\n\r\nx\r\n".encode())
    server.stop()
    server.start()
    server.wait_for_messages("alice", 5)
    holds_for(lambda: server.count("alice") == 5, 1.0, "no duplicate")
    msgs = server.messages("alice")
    assert sorted(m["Subject"] for m in msgs) == [f"r{i}" for i in range(5)]
