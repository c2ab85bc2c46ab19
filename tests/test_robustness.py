"""Integrity of large messages, Maildir file properties, maildrop garbage, graceful stop
under load, and a Maildir removed behind the daemon's back."""

import base64
import collections
import hashlib
import os
import shutil
import smtplib
import socket
import threading
import time
import uuid

from conftest import contains_hostname, make_onion, raw, smtp


def test_large_message_integrity(server):
    payload = os.urandom(3 * 1024 * 1024)
    b64 = base64.encodebytes(payload)  # 76-char lines
    msg = (b"Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + b64.replace(b"\n", b"\r\n"))
    with smtp(server, timeout=60) as c:
        assert c.sendmail(f"x@{make_onion()}", [server.addr("alice")], msg) == {}
    m = server.wait_for_messages("alice", 1, timeout=30)[0]
    got = m.get_payload(decode=True)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_empty_body(server):
    with raw(server) as r:
        assert r.cmd("EHLO c")[0] == 250
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{server.addr('alice')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        code, text = r.cmd(".")
        assert code == 250, text
    m = server.wait_for_messages("alice", 1)[0]
    assert m["Delivered-To"] == server.addr("alice")
    assert m["Received"]


def test_maildir_file_name_and_mode(server):
    with smtp(server) as c:
        c.sendmail(f"x@{make_onion()}", [server.addr("alice")], b"Subject: mode\r\n\r\nx\r\n")
    server.wait_for_messages("alice", 1)
    files = list((server.maildir_path("alice") / "new").iterdir())
    assert len(files) == 1
    f = files[0]
    assert not contains_hostname(f.name), f.name
    assert "/" not in f.name and ":" not in f.name
    assert (f.stat().st_mode & 0o077) == 0, oct(f.stat().st_mode)
    # Nothing left in tmp/ after a delivery.
    assert list((server.maildir_path("alice") / "tmp").iterdir()) == []


def test_garbage_maildrop_file_is_set_aside(server):
    drop = server.data_dir / "maildrop"
    (drop / "1.garbage").write_bytes(b"this is not a maildrop file\n")
    (drop / "2.badjson").write_bytes(b"SMTORP-MAILDROP 1\n{not json\nSubject: x\r\n\r\nx\r\n")
    # A well-formed file whose recipient is not acceptable (clearnet).
    (drop / "3.clearnet").write_bytes(
        b'SMTORP-MAILDROP 1\n{"sender": "", "recipients": ["bob@example.com"]}\nSubject: x\r\n\r\nx\r\n')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [p.name for p in drop.iterdir() if not p.name.startswith(".")]
        if not left:
            break
        time.sleep(0.1)
    assert left == [], left
    # Kept for the administrator outside the users' reach, named <time>.<original name>.
    rejected = sorted(p.name.split(".", 1)[1] for p in (server.data_dir / "rejected").iterdir())
    assert rejected == ["1.garbage", "2.badjson", "3.clearnet"], rejected
    assert not (drop / ".rejected").exists()
    assert server.alive()
    r = server.sendmail(server.addr("alice"), input=b"Subject: after garbage\n\nx\n")
    assert r.returncode == 0, r.stderr
    assert server.wait_for_messages("alice", 1)[0]["Subject"] == "after garbage"
    assert server.count("bob") == 0


def test_sigterm_under_load_loses_nothing(server_factory):
    srv = server_factory(users=("alice",))
    sender_domain = make_onion()  # another server's (our own never comes in from outside)
    acked, attempted = [], []
    stop = threading.Event()

    def client():
        t_end = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < t_end:
            try:
                c = smtplib.SMTP("127.0.0.1", srv.port, local_hostname="c.example", timeout=10)
            except OSError:
                time.sleep(0.05)
                continue
            try:
                while not stop.is_set():
                    tid = uuid.uuid4().hex
                    attempted.append(tid)
                    c.sendmail(f"l@{sender_domain}", [srv.addr("alice")],
                               f"Subject: t\r\nX-Test-Id: {tid}\r\n\r\nx\r\n".encode())
                    acked.append(tid)
            except (smtplib.SMTPException, OSError):
                pass
            finally:
                try:
                    c.close()
                except Exception:
                    pass

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(2)
    srv.stop(timeout=10)  # asserts exit code 0
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert acked
    srv.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = srv.queue_list().stdout.decode()
        if "-- 0 message(s)" in out and srv.count("alice") >= len(acked):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    counts = collections.Counter(m["X-Test-Id"] for m in srv.messages("alice"))
    lost = [t for t in acked if counts[t] == 0]
    dups = [t for t, n in counts.items() if n > 1]
    assert not lost, f"{len(lost)} accepted messages lost"
    assert not dups, f"{len(dups)} duplicates"
    assert set(counts) <= set(attempted)


def test_maildir_removed_behind_the_daemons_back(server):
    """If a user's Maildir disappears, mail is either delivered into a recreated Maildir or
    kept in the queue: never lost."""
    shutil.rmtree(server.maildir_path("bob"))
    with smtp(server) as c:
        assert c.sendmail(f"x@{make_onion()}", [server.addr("bob")], b"Subject: gone\r\n\r\nx\r\n") == {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.count("bob") == 1:
            break
        time.sleep(0.1)
    if server.count("bob") == 1:
        print("Maildir recreated and delivered")
        assert server.messages("bob")[0]["Subject"] == "gone"
    else:
        print("kept in the queue")
        out = server.queue_list().stdout.decode()
        assert server.addr("bob") in out and "pending" in out, out
