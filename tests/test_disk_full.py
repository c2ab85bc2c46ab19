"""A full disk is a state, not a hang: the data directory on a small tmpfs (mounted by the
test), filled by a sender and by a filler file. New mail gets 452/451, never a hang: a new
connection gets its banner within seconds, `status` answers, SIGTERM works; once space is
freed, intake resumes by itself and every acknowledged message is delivered exactly once.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Server, binary_path, make_onion, raw

MIB = 1024 * 1024
# Mail comes from another onion server (our own domains never come in from outside).
SENDER_DOMAIN = make_onion()


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs, unmounted afterwards."""
    assert os.geteuid() == 0, "mounting a tmpfs needs root"
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, f"mount: {r.stderr!r}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A filler file that leaves about `leave` bytes free (or none, with leave=0)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"\0" * MIB
        while free_bytes(path) > leave + MIB:
            try:
                os.write(fd, block)
            except OSError:
                break
        if leave == 0:
            try:
                for _ in range(100_000):
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass  # full
    finally:
        os.close(fd)
    return filler


def message(i: int, size: int) -> bytes:
    body = (f"line {i:06d} " + "x" * 60 + "\r\n").encode() * (size // 72)
    return f"Message-ID: <m{i}@disk.test>\r\nSubject: m{i}\r\n\r\n".encode() + body


def send(server: Server, i: int, size: int) -> int:
    """One message over SMTP; the reply code that decided it (250 when accepted)."""
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as c:
            c.ehlo("client.example")
            c.sendmail(f"s@{SENDER_DOMAIN}", [server.addr("bob")], message(i, size))
            return 250
    except smtplib.SMTPResponseException as e:
        return e.smtp_code
    except smtplib.SMTPRecipientsRefused as e:
        return list(e.recipients.values())[0][0]
    except smtplib.SMTPSenderRefused as e:
        return e.smtp_code


def responsive(server: Server):
    """A new connection gets its banner, and `status` answers, within seconds."""
    t0 = time.monotonic()
    r = raw(server, timeout=5)
    r.cmd("QUIT")
    r.close()
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    st = server.cli("status", timeout=30)
    assert st.returncode == 0, st.stderr
    assert time.monotonic() - t0 < 25, "status took too long"
    return st.stdout.decode()


def delivered_ids(server: Server) -> list[str]:
    return [m["Message-ID"] for m in server.messages("bob")]


def test_a_full_disk_refuses_with_4xx_and_recovers_by_itself(small_disk):
    s = Server(binary_path(), small_disk / "srv", users=("bob",),
               smtp={"min_free_space": 12 * MIB}, delivery={"retry_after": ["1s"]})
    s.init()
    s.start()
    try:
        accepted, refused = [], []
        # A sender fills the disk with 2 MiB messages (the Maildir copies stay on it).
        filler = fill(small_disk, leave=24 * MIB)
        for i in range(40):
            code = send(s, i, 2 * MIB)
            (accepted if code == 250 else refused).append((i, code))
            if len(refused) >= 3:
                break
        assert accepted, "some mail went through first"
        assert refused, "the floor was never reached"
        assert all(code in (451, 452) for _, code in refused), refused
        out = responsive(s)
        assert "queue" in out.lower()

        # A message that is retried every second keeps writing to the store meanwhile.
        r = s.sendmail(f"nobody@{make_onion()}", input=b"Subject: retried\n\nx\n")
        assert r.returncode == 0, r.stderr
        # Now fill it to the last byte: the store must not hang (its reserve is given back).
        fill(small_disk, leave=0)
        assert send(s, 1000, 64 * 1024) in (451, 452)
        time.sleep(3)
        responsive(s)
        assert send(s, 1001, 64 * 1024) in (451, 452)
        assert "gave back the queue's reserve" in s.log()

        # Space comes back: intake resumes without a restart.
        filler.unlink()
        deadline = time.monotonic() + 30
        code = None
        while time.monotonic() < deadline:
            code = send(s, 2000, 64 * 1024)
            if code == 250:
                break
            time.sleep(1)
        assert code == 250, code
        accepted.append((2000, 250))
        want = sorted(f"<m{i}@disk.test>" for i, _ in accepted)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(delivered_ids(s)) < len(want):
            time.sleep(0.5)
        time.sleep(1)
        got = sorted(delivered_ids(s))
        assert got == want, "every acknowledged message exactly once"
        assert s.stop() == 0 and s.last_stop_seconds < 10
        if os.environ.get("SMTORP_TEST_SHOW_LOG"):
            print(s.log())
    finally:
        s.kill()
