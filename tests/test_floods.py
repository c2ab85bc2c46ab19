"""Floods and bounded memory (their figures are in benches/attacks.py, not here): message
content streams to spool files, sessions that end inside DATA leave nothing behind, kill -9
under large and small messages loses and duplicates nothing, AUTH budgets hold under
concurrency and punish the address that fails, not the user, and slow clients cannot keep
a normal client out.
"""

from __future__ import annotations

import base64
import hashlib
import smtplib
import socket
import threading
import time
import uuid


from conftest import make_onion, raw, wait_until
from test_submission import PASSWORDS, insecure_context, sub  # noqa: F401 (the fixture)

MIB = 1024 * 1024


def big_message(tag: str, size: int) -> bytes:
    line = (hashlib.sha256(tag.encode()).hexdigest() + "\r\n").encode()
    body = line * (size // len(line))
    return f"Subject: big {tag}\r\nX-Tag: {tag}\r\n\r\n".encode() + body


def spool_files(server) -> list[str]:
    d = server.data_dir / "queue" / "spool"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def stored_body(raw_file: bytes) -> bytes:
    """A delivered file's body (after the header we and the reader see)."""
    return raw_file.split(b"\n\n", 1)[1]


def test_concurrent_large_messages_are_all_delivered_intact(server_factory):
    s = server_factory(users=("bob",), smtp={"max_sessions": 120})
    n, size = 100, MIB
    results: dict[int, object] = {}

    def send(i):
        try:
            with smtplib.SMTP("127.0.0.1", s.port, timeout=120) as c:
                c.sendmail(f"s@{make_onion()}", [s.addr("bob")], big_message(str(i), size))
            results[i] = "ok"
        except Exception as e:  # recorded for the assertion below
            results[i] = repr(e)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(v == "ok" for v in results.values()) and len(results) == n, results
    s.wait_for_messages("bob", n, timeout=120)
    files = s.raw_files("bob")
    assert len(files) == n
    by_tag = {}
    for f in files:
        tag = f.split(b"X-Tag: ", 1)[1].split(b"\n", 1)[0].decode()
        by_tag[tag] = f
    for i in (0, 17, 42, 99):
        want = big_message(str(i), size).split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
        assert stored_body(by_tag[str(i)]) == want, f"message {i} differs"
    s.queue_settled()
    assert spool_files(s) == []


def test_a_session_that_ends_inside_data_leaves_no_spool_file(server_factory):
    s = server_factory(users=("bob",))
    with raw(s) as r:
        assert r.cmd("EHLO c")[0] == 250
        assert r.cmd(f"MAIL FROM:<a@{make_onion()}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{s.addr('bob')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        # Past the 64 KiB a session keeps in memory, the text goes to a spool file as it
        # arrives.
        r.send(b"Subject: cut\r\n\r\n" + (b"x" * 76 + b"\r\n") * 2600)
        wait_until(lambda: len(spool_files(s)) == 1, what="the text goes to a spool file as it arrives")
    wait_until(lambda: spool_files(s) == [], what="the spool file removed when the session ended")
    # The same cut short by a crash: recovery removes it.
    r = raw(s)
    r.cmd("EHLO c")
    r.cmd(f"MAIL FROM:<a@{make_onion()}>")
    r.cmd(f"RCPT TO:<{s.addr('bob')}>")
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: crash\r\n\r\n" + (b"y" * 76 + b"\r\n") * 2600)
    wait_until(lambda: len(spool_files(s)) == 1, what="a spool file for the message")
    s.kill()
    r.close()
    s.start()
    assert spool_files(s) == []
    s.assert_no_delivery("bob", wait=1.0)


def test_kill9_under_large_and_small_messages(server_factory):
    s = server_factory(users=("bob",), smtp={"max_sessions": 50})
    acked: list[str] = []
    stop = threading.Event()

    def client(k):
        t_end = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < t_end:
            try:
                with smtplib.SMTP("127.0.0.1", s.port, timeout=20) as c:
                    while not stop.is_set():
                        tag = uuid.uuid4().hex
                        size = 3 * MIB if k % 3 == 0 else 2048
                        c.sendmail(f"s@{make_onion()}", [s.addr("bob")], big_message(tag, size))
                        acked.append(tag)
            except (smtplib.SMTPException, OSError):
                time.sleep(0.05)

    for cycle in range(2):
        stop.clear()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(9)]
        for t in threads:
            t.start()
        time.sleep(2.5)
        s.kill()
        stop.set()
        for t in threads:
            t.join(timeout=60)
        s.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if "-- 0 message(s) in the queue" in s.queue_list().stdout.decode():
            break
        time.sleep(0.5)
    time.sleep(1)
    tags = [f.split(b"X-Tag: ", 1)[1].split(b"\n", 1)[0].decode() for f in s.raw_files("bob")]
    assert len(tags) == len(set(tags)), "a message was delivered twice"
    missing = set(acked) - set(tags)
    assert not missing, f"{len(missing)} acknowledged message(s) lost"
    assert len(acked) >= 10
    assert spool_files(s) == [], "no orphan spool files after recovery"


# ------------------------------------------------------------------ AUTH


def auth_attempt(sub, password: str, source: str) -> int:
    """One AUTH PLAIN for bob from `source` (a loopback address); the reply code."""
    sock = socket.create_connection(("127.0.0.1", sub.sub_port), timeout=60, source_address=(source, 0))
    c = smtplib.SMTP(timeout=60)
    c.sock = sock
    c.file = None
    c._host = "127.0.0.1"  # for STARTTLS (SNI is left out for an IP address)
    c.getreply()
    c.ehlo("client.example")
    c.starttls(context=insecure_context())
    c.ehlo("client.example")
    token = base64.b64encode(f"\0bob\0{password}".encode()).decode()
    code, _ = c.docmd("AUTH", f"PLAIN {token}")
    try:
        c.quit()
    except smtplib.SMTPException:
        pass
    return code


def test_concurrent_wrong_passwords_are_counted_before_the_check(sub):
    codes = []
    lock = threading.Lock()

    def attempt():
        code = auth_attempt(sub, "wrong-guess", "127.0.0.1")
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(codes) == 40
    checked = codes.count(535)
    assert checked <= 10, f"{checked} wrong passwords were checked; the budget is 10"
    assert codes.count(454) == 40 - checked, codes
    # The right password from this address is not even checked now...
    assert auth_attempt(sub, PASSWORDS["bob"], "127.0.0.1") == 454
    # ...but bob connecting from elsewhere is not locked out.
    assert auth_attempt(sub, PASSWORDS["bob"], "127.0.0.2") == 235


# ------------------------------------------------------------------ slow clients


def test_a_normal_client_gets_through_while_slow_clients_hold_every_session(server_factory):
    s = server_factory(users=("bob",), smtp={"max_sessions": 20})
    slow = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        slow.append(sock)
    stop = threading.Event()

    def drip():
        # One byte every 2 s on each: never a whole command.
        t_end = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < t_end:
            for sock in slow:
                try:
                    sock.send(b"N")
                except OSError:
                    pass
            stop.wait(2)

    t = threading.Thread(target=drip)
    t.start()
    try:
        time.sleep(1.5)  # every session is taken and idle for a while
        t0 = time.monotonic()
        with smtplib.SMTP("127.0.0.1", s.port, timeout=30) as c:
            c.sendmail(f"a@{make_onion()}", [s.addr("bob")], b"Subject: through\r\n\r\nx\r\n")
        took = time.monotonic() - t0
        assert s.wait_for_messages("bob", 1)[0]["Subject"] == "through"
        assert took < 20, f"the normal client waited {took:.1f}s"
    finally:
        stop.set()
        t.join(timeout=10)
        for sock in slow:
            sock.close()
