"""kill -9 under concurrent load: no accepted message is lost, none is delivered twice."""

import collections
import smtplib
import threading
import time
import uuid

from conftest import make_onion

CLIENTS = 8
CYCLES = 3
LOAD_SECONDS = 2.5


def _client(server, stop: threading.Event, acked: list, attempted: list, errors: list):
    sender = f"load@{make_onion()}"
    rcpt = server.addr("alice")
    t_end = time.monotonic() + 30  # hard bound whatever happens
    while not stop.is_set() and time.monotonic() < t_end:
        try:
            c = smtplib.SMTP("127.0.0.1", server.port, local_hostname="load.example", timeout=10)
        except OSError:
            time.sleep(0.05)
            continue
        try:
            while not stop.is_set() and time.monotonic() < t_end:
                test_id = uuid.uuid4().hex
                attempted.append(test_id)
                msg = (
                    f"Subject: load\r\nX-Test-Id: {test_id}\r\n\r\n"
                    + ("payload line for the crash test\r\n" * 20)
                ).encode()
                refused = c.sendmail(sender, [rcpt], msg)
                assert refused == {}
                acked.append(test_id)  # only reached after the 250 to DATA
        except (smtplib.SMTPException, OSError):
            pass
        except AssertionError as e:  # pragma: no cover - recorded for the main thread
            errors.append(repr(e))
        finally:
            try:
                c.close()
            except Exception:
                pass


def _settle(server, timeout=60):
    """Waits until the queue is empty and the Maildir count is stable; bounded."""
    deadline = time.monotonic() + timeout
    last = -1
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        n = server.count("alice")
        out = server.queue_list().stdout.decode()
        if n != last:
            last, stable_since = n, time.monotonic()
        if "-- 0 message(s) in the queue" in out and time.monotonic() - stable_since > 1.0:
            return n
        time.sleep(0.2)
    raise AssertionError(f"delivery did not settle in {timeout}s (count {last}):\n{out}\n{server.log()}")


def test_kill9_under_load_loses_nothing_and_duplicates_nothing(server_factory):
    srv = server_factory(users=("alice",))
    acked: list = []
    attempted: list = []
    errors: list = []
    for cycle in range(CYCLES):
        stop = threading.Event()
        threads = [
            threading.Thread(target=_client, args=(srv, stop, acked, attempted, errors), daemon=True)
            for _ in range(CLIENTS)
        ]
        acked_before = len(acked)
        for t in threads:
            t.start()
        time.sleep(LOAD_SECONDS)
        srv.kill()  # SIGKILL mid-load
        stop.set()
        for t in threads:
            t.join(timeout=20)
        assert not any(t.is_alive() for t in threads), "client threads hung"
        assert len(acked) > acked_before, f"cycle {cycle}: no message accepted under load\n{srv.log()}"
        srv.start()
    assert not errors, errors
    delivered = _settle(srv)

    counts = collections.Counter()
    for msg in srv.messages("alice"):
        tid = msg["X-Test-Id"]
        assert tid is not None, "message without X-Test-Id"
        counts[tid] += 1
    attempted_set = set(attempted)
    lost = [t for t in acked if counts[t] == 0]
    dups = {t: n for t, n in counts.items() if n > 1}
    unknown = [t for t in counts if t not in attempted_set]
    print(f"acked={len(acked)} attempted={len(attempted)} delivered={delivered} "
          f"unacked_delivered={len(set(counts) - set(acked))}")
    assert len(set(acked)) == len(acked)
    assert not lost, f"{len(lost)} accepted message(s) lost, e.g. {lost[:5]}"
    assert not dups, f"{len(dups)} message(s) delivered more than once, e.g. {list(dups.items())[:5]}"
    assert not unknown, unknown[:5]
    assert delivered == sum(counts.values())
    srv.stop()


def test_kill9_during_maildrop_pickup(server_factory):
    """Messages waiting in the maildrop are each delivered exactly once even if the daemon
    is killed while it picks them up."""
    from concurrent.futures import ThreadPoolExecutor

    srv = server_factory(users=("alice",), start=False)
    ids = [uuid.uuid4().hex for _ in range(150)]

    def submit(tid):
        r = srv.sendmail(srv.addr("alice"), input=f"Subject: drop\nX-Test-Id: {tid}\n\nx\n".encode())
        assert r.returncode == 0, r.stderr
        return tid

    with ThreadPoolExecutor(4) as pool:
        assert len(list(pool.map(submit, ids))) == len(ids)
    drop = srv.data_dir / "maildrop"
    assert len([p for p in drop.iterdir() if not p.name.startswith(".")]) == len(ids)
    for cycle in range(3):
        srv.start()
        # Kill as soon as the pickup is visibly under way (bounded wait).
        deadline = time.monotonic() + 10
        target = 20 * (cycle + 1)
        while srv.count("alice") < target and time.monotonic() < deadline:
            time.sleep(0.005)
        srv.kill()
    srv.start()
    _settle(srv)
    deadline = time.monotonic() + 10
    while any(not p.name.startswith(".") for p in drop.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p.name for p in drop.iterdir() if not p.name.startswith(".")]
    counts = collections.Counter(m["X-Test-Id"] for m in srv.messages("alice"))
    lost = [t for t in ids if counts[t] == 0]
    dups = {t: n for t, n in counts.items() if n > 1}
    assert not lost, f"{len(lost)} maildrop message(s) lost"
    assert not dups, f"{len(dups)} maildrop message(s) delivered more than once: {list(dups.items())[:5]}"
    srv.stop()
