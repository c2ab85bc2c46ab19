"""Local users against the daemon: `sendmail` as an ordinary user of the machine, the sender
bound to who submits, and the maildrop as a security boundary (issue: a local user must not
take over smtorp through the maildrop). Every attack runs as a real non-root user made for
the test; after each, no file outside the maildrop has changed, pickup goes on, the next
normal submission is delivered and SIGTERM still stops the daemon within seconds.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import LOCAL_USER, OTHER_USER, Server, as_user, binary_path, holds_for, wait_until


def make_server(root: Path, start: bool = True) -> Server:
    s = Server(binary_path(), root / "srv", users=("alice", "bob", LOCAL_USER))
    s.init()
    # Other users must read the configuration and reach the socket and the maildrop.
    s.config_path.chmod(0o644)
    for p in [s.tmp, *s.tmp.parents]:
        if str(p) in ("/", "/tmp"):
            break
        p.chmod(p.stat().st_mode | 0o711)
    if start:
        s.start()
    return s


def sendmail_as(user: str, server: Server, args: list[str], message: bytes) -> subprocess.CompletedProcess:
    return as_user(user, [str(server.binary), "--config", str(server.config_path), "sendmail", *args],
                   input=message)


def snapshot(data_dir: Path) -> dict[str, tuple]:
    """Every path under data_dir outside the parts that change on their own (queue, mail,
    maildrop, rejected, sockets), with its type, owner, mode and content digest."""
    import hashlib

    out = {}
    skip = ("queue", "mail", "maildrop", "rejected")
    for dirpath, dirnames, filenames in os.walk(data_dir):
        rel = os.path.relpath(dirpath, data_dir)
        if rel.split(os.sep)[0] in skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISSOCK(st.st_mode):
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            out[str(path.relative_to(data_dir))] = (stat.S_IFMT(st.st_mode), st.st_uid, st.st_mode, digest)
    return out


def srv_uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def assert_still_serving(server: Server):
    """The next normal submission is delivered, and the daemon is alive."""
    before = server.count("bob")
    subject = f"after the attack {time.monotonic_ns()}"
    r = sendmail_as(LOCAL_USER, server, [server.addr("bob")], f"Subject: {subject}\n\nstill here\n".encode())
    assert r.returncode == 0, r.stderr
    msgs = server.wait_for_messages("bob", before + 1)
    assert any(m["Subject"] == subject for m in msgs)
    assert server.alive()


@pytest.fixture
def srv(system_users, public_tmp):
    s = make_server(public_tmp)
    yield s
    s.kill()


def test_sendmail_as_a_local_user_exits_0_and_delivers_once(srv):
    r = sendmail_as(LOCAL_USER, srv, [srv.addr("bob")], b"Subject: from a user\n\nhello\n")
    assert r.returncode == 0, r.stderr
    msgs = srv.wait_for_messages("bob", 1)
    assert len(msgs) == 1
    holds_for(lambda: srv.count("bob") == 1, 1.0, "delivered exactly once")
    # The sender is the user who submitted.
    assert msgs[0]["Return-Path"] == f"<{LOCAL_USER}@{srv.domain}>"
    assert msgs[0]["From"] == f"<{LOCAL_USER}@{srv.domain}>"


def test_sendmail_as_a_local_user_without_a_daemon_is_picked_up_once(system_users, public_tmp):
    s = make_server(public_tmp, start=False)
    try:
        r = sendmail_as(LOCAL_USER, s, [s.addr("bob")], b"Subject: while down\n\nqueued later\n")
        assert r.returncode == 0, r.stderr
        # The file is in the maildrop, owned by the user, complete.
        files = [p for p in (s.data_dir / "maildrop").iterdir()]
        assert len(files) == 1 and not files[0].name.startswith(".")
        assert files[0].stat().st_uid == system_users[0]
        s.start()
        msgs = s.wait_for_messages("bob", 1)
        assert msgs[0]["Return-Path"] == f"<{LOCAL_USER}@{s.domain}>"
        holds_for(lambda: s.count("bob") == 1, 1.0, "picked up exactly once")
        assert list((s.data_dir / "maildrop").iterdir()) == []
    finally:
        s.kill()


def test_a_local_user_cannot_send_as_someone_else(srv):
    for forged in [srv.addr("alice"), "<>", "postmaster@" + srv.domain]:
        subject = f"forged {forged}"
        r = sendmail_as(LOCAL_USER, srv, ["-f", forged, srv.addr("bob")], f"Subject: {subject}\n\nx\n".encode())
        assert r.returncode == 0, r.stderr
    msgs = srv.wait_for_messages("bob", 3)
    # Every one was sent as the user, whatever -f said (docs/operations.md).
    assert {m["Return-Path"] for m in msgs} == {f"<{LOCAL_USER}@{srv.domain}>"}
    # root is trusted and may choose.
    r = srv.sendmail("-f", srv.addr("alice"), srv.addr("bob"), input=b"Subject: as root\n\nx\n")
    assert r.returncode == 0, r.stderr
    msgs = srv.wait_for_messages("bob", 4)
    assert any(m["Return-Path"] == f"<{srv.addr('alice')}>" for m in msgs)


def test_a_user_who_is_not_local_may_not_submit(srv):
    r = sendmail_as(OTHER_USER, srv, [srv.addr("bob")], b"Subject: stranger\n\nx\n")
    assert r.returncode == 77, (r.returncode, r.stdout, r.stderr)
    assert b"not a local user" in r.stderr
    srv.assert_no_delivery("bob", wait=1.5)


def test_the_rejected_symlink_attack_changes_nothing(srv):
    """mallory makes maildrop/.rejected a symlink to the data directory and drops a malformed
    file named passwd: earlier, the daemon moved it to <data_dir>/passwd."""
    before = snapshot(srv.data_dir)
    drop = srv.data_dir / "maildrop"
    r = as_user(OTHER_USER, ["ln", "-s", str(srv.data_dir), str(drop / ".rejected")])
    assert r.returncode == 0, r.stderr
    r = as_user(OTHER_USER, ["sh", "-c", f"printf 'alice:$argon2id$evil\\n' > {drop / 'passwd'}"])
    assert r.returncode == 0, r.stderr
    wait_until(lambda: not (drop / "passwd").exists(), what="the file picked up")
    assert not (srv.data_dir / "passwd").exists()
    assert snapshot(srv.data_dir) == before
    # Kept out of the users' reach, not in the folder they control.
    kept = list((srv.data_dir / "rejected").iterdir())
    assert [p.name.split(".", 1)[1] for p in kept] == ["passwd"]
    assert stat.S_IMODE((srv.data_dir / "rejected").stat().st_mode) == 0o700
    assert_still_serving(srv)
    assert srv.stop() == 0 and srv.last_stop_seconds < 10


def test_links_fifos_and_huge_files_are_removed_not_followed(srv, public_tmp):
    drop = srv.data_dir / "maildrop"
    before = snapshot(srv.data_dir)
    victim = srv.data_dir / "passwd"
    victim.write_text("bob:$argon2id$v=19$m=19456,t=2,p=1$unchanged\n")
    victim.chmod(0o600)
    victim_digest = victim.read_bytes()
    # mallory's own file elsewhere, hard-linked in (two links: never read, only unlinked).
    home = public_tmp / "mallory"
    home.mkdir()
    os.chown(home, srv_uid(OTHER_USER), -1)
    own = home / "mine"
    r = as_user(OTHER_USER, ["sh", "-c", f"echo mine > {own}"])
    assert r.returncode == 0, r.stderr
    steps = [
        ["ln", "-s", str(victim), str(drop / "aaaaaaaaaaaaaaaa1")],             # symlink to a daemon file
        ["ln", "-s", "/etc/shadow", str(drop / "aaaaaaaaaaaaaaaa2")],           # symlink to a root file
        ["ln", str(own), str(drop / "aaaaaaaaaaaaaaaa3")],                      # hard link
        ["mkfifo", str(drop / "aaaaaaaaaaaaaaaa4")],                            # FIFO: would block an open
        ["truncate", "-s", "200M", str(drop / "aaaaaaaaaaaaaaaa5")],            # huge (sparse)
        ["mkdir", str(drop / "aaaaaaaaaaaaaaaa6")],                             # a folder
    ]
    for argv in steps:
        r = as_user(OTHER_USER, argv)
        assert r.returncode == 0, (argv, r.stderr)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [p.name for p in drop.iterdir() if p.name.startswith("aaaa") and p.name[-1] != "6"]
        if not left:
            break
        time.sleep(0.1)
    assert left == [], left
    assert victim.read_bytes() == victim_digest
    assert own.read_text() == "mine\n", "only the name in the maildrop went away"
    snap = snapshot(srv.data_dir)
    snap.pop("passwd")
    assert snap == before
    assert_still_serving(srv)
    assert srv.stop() == 0 and srv.last_stop_seconds < 10


def test_a_file_swapped_for_a_fifo_while_being_picked_up_stops_nothing(srv):
    """For five seconds mallory keeps writing well-formed files and swapping them for FIFOs
    under the same names; pickup must go on and SIGTERM must work."""
    drop = srv.data_dir / "maildrop"
    script = f"""
end=$(( $(date +%s) + 5 ))
i=0
while [ $(date +%s) -lt $end ]; do
  i=$((i+1))
  name={drop}/swap$i$i$i$i$i$i$i$i
  printf 'SMTORP-SUBMIT 1\\n{{"sender":null,"recipients":["bob@{srv.domain}"],"token":"swap%s%s%s%s%s%s%s%s"}}\\nSubject: swap\\r\\n\\r\\nx\\r\\n' $i $i $i $i $i $i $i $i > $name.tmp
  mv $name.tmp $name 2>/dev/null
  rm -f $name; mkfifo $name 2>/dev/null
done
"""
    r = as_user(OTHER_USER, ["sh", "-c", script], timeout=60)
    assert r.returncode == 0, r.stderr
    assert_still_serving(srv)
    assert srv.stop() == 0 and srv.last_stop_seconds < 10
