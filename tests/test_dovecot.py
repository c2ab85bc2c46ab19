"""Dovecot as a real reader of smtorp's Maildirs, over IMAP with Python's imaplib.

A throwaway Dovecot (its own config, base_dir and log in a temporary folder; nothing of the
system's Dovecot is used) listens on a free loopback port. Its passdb is a file, its userdb
is static, and its mail_location is smtorp's Maildir of the user: the setup that
docs/operations.md recommends for a smtorp host. As there, both programs run as one
unprivileged user that owns the Maildirs (here `nobody`; on a real host `smtorp`):
smtorp through `setpriv`, Dovecot through its static userdb.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import Server, free_port, make_onion, port_open

MAIL_USER = "nobody"  # the unprivileged owner of the Maildirs (on a host: smtorp)
PASSWORD = "imap-test-secret"


class Dovecot:
    """A throwaway Dovecot serving `{data_dir}/mail/<user>` over IMAP on 127.0.0.1."""

    def __init__(self, root: Path, data_dir: Path, users: list[str]):
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam(MAIL_USER)
        (root / "passwd").write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}\n" for u in users))
        self.conf = root / "dovecot.conf"
        self.log_path = root / "dovecot.log"
        self.conf.write_text(f"""\
# Written by tests/test_dovecot.py: nothing here reads /etc/dovecot.
base_dir = {root}/run
state_dir = {root}/state
instance_name = smtorp-test-{root.name}
log_path = {self.log_path}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
# The user that owns smtorp's Maildirs reads them (docs/operations.md).
userdb {{
  driver = static
  args = uid={pw.pw_uid} gid={pw.pw_gid} home={data_dir}/mail/%u
}}
mail_location = maildir:{data_dir}/mail/%u
first_valid_uid = 1
first_valid_gid = 1
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
        self.proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not port_open(self.port):
            assert self.proc.poll() is None, f"dovecot exited: {self.log()}"
            assert time.monotonic() < deadline, f"dovecot not listening: {self.log()}"
            time.sleep(0.1)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def client(self, user: str = "alice") -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        typ, data = imap.login(user, PASSWORD)
        assert typ == "OK", data
        return imap

    def stop(self):
        """SIGTERM to the master, which stops its helper processes."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def mail_host(smtorp_bin):
    """smtorp (users alice and bob, running as the mail user) and Dovecot over its Maildirs."""
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (scripts/setup-debian installs dovecot-imapd)")
    pw = pwd.getpwnam(MAIL_USER)
    # Both daemons run unprivileged: they cannot enter pytest's 0700 folders.
    root = Path(tempfile.mkdtemp(prefix="smtorp-dovecot-"))
    root.chmod(0o755)
    wrapper = root / "smtorp-as-mail-user"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec setpriv --reuid={pw.pw_uid} --regid={pw.pw_gid} --clear-groups -- "
        f"'{smtorp_bin}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    server = Server(wrapper, root / "smtorp")
    os.chown(server.tmp, pw.pw_uid, pw.pw_gid)  # smtorp init makes data/ in it
    dovecot = None
    try:
        server.init()
        server.start()
        dovecot = Dovecot(root / "dovecot", server.data_dir, ["alice", "bob"])
        yield server, dovecot
    finally:
        server.kill()
        if dovecot:
            dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

def send(server: Server, message: bytes, rcpt: str = "alice", sender: str | None = None) -> str:
    """One SMTP transaction; returns the queue id from the 250 reply."""
    sender = sender or f"sender@{make_onion()}"
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="peer.example", timeout=30) as c:
        c.ehlo()
        assert c.mail(sender)[0] == 250
        assert c.rcpt(server.addr(rcpt))[0] == 250
        code, text = c.data(message)
        assert code == 250, text
    m = re.search(rb"queued as (\S+)", text)
    assert m, text
    return m.group(1).decode()


def files_of(server: Server, queue_id: str, user: str = "alice") -> list[str]:
    """The Maildir files (sub/name) of the delivery of `queue_id` to its first recipient."""
    out = []
    for sub in ("tmp", "new", "cur"):
        d = server.maildir_path(user) / sub
        if d.is_dir():
            out += [f"{sub}/{n}" for n in os.listdir(d) if f".Q{queue_id}R0." in n]
    return out


def search(imap: imaplib.IMAP4, test_id: str) -> list[bytes]:
    typ, data = imap.uid("SEARCH", None, "HEADER", "X-Test-Id", test_id)
    assert typ == "OK", data
    return data[0].split()


def wait_log(server: Server, needle: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while needle not in server.log():
        assert time.monotonic() < deadline, f"no log line {needle!r} in {timeout}s:\n{server.log()}"
        time.sleep(0.1)


def crash_before_flush(server: Server, attempts: int = 8) -> tuple[str, str]:
    """Delivers one message to alice and kills the daemon (SIGSTOP as soon as the file is
    in new/, then SIGKILL) before sled's background flush (every 2 s) records the delivery,
    so the queue entry is still pending and is tried again at the next start. Whether we
    were fast enough is checked, not assumed: `queue list` (the daemon is down, it opens the
    store itself) must still show the recipient pending, and its spool file must be there.
    Otherwise another message is tried (bounded). Returns (queue id, X-Test-Id); the daemon is left stopped."""
    new = server.maildir_path("alice") / "new"
    for _ in range(attempts):
        test_id = uuid.uuid4().hex
        queue_id = send(server, f"Subject: crash\r\nX-Test-Id: {test_id}\r\n\r\nonce\r\n".encode())
        deadline = time.monotonic() + 10
        while not any(f".Q{queue_id}R0." in n for n in os.listdir(new)):
            assert time.monotonic() < deadline, f"no delivery of {queue_id}:\n{server.log()}"
            time.sleep(0.001)
        os.kill(server.pid, signal.SIGSTOP)  # freezes sled's flusher thread too
        server.kill()
        # The content must still be there too: once the delivery's result is stored, the
        # spool file goes at once (the store's record of it only at the next flush), and
        # recovery then drops an envelope whose content is gone (it was delivered).
        spool = server.data_dir / "queue" / "spool" / queue_id
        listing = server.queue_list().stdout.decode()
        if spool.exists() and re.search(rf"^{queue_id} .*\(pending, ", listing, re.M):
            return queue_id, test_id
        server.start()  # the result was recorded first this time; try again
    raise AssertionError(f"the delivery was flushed before the kill in {attempts} attempts")


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------

def test_dovecot_fetches_a_delivery_byte_for_byte(mail_host):
    server, dovecot = mail_host
    sender = f"carol@{make_onion()}"
    original = (
        f"From: Carol <{sender}>\r\n"
        f"To: <{server.addr('alice')}>\r\n"
        "Subject: read me through Dovecot\r\n"
        "Message-ID: <dovecot-1@example.onion>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Grüße aus dem Onion-Land.\r\n"
        ".. a line that started with two dots\r\n"
        "\r\n"
        "last line\r\n"
    ).encode()
    queue_id = send(server, original, sender=sender)
    server.wait_for_messages("alice", 1)
    (on_disk,) = server.raw_files("alice")

    imap = dovecot.client()
    try:
        typ, data = imap.select("INBOX")
        assert (typ, data) == ("OK", [b"1"]), (typ, data, dovecot.log())
        typ, data = imap.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK", data
        fetched = data[0][1]
        size = int(re.search(rb"RFC822\.SIZE (\d+)", data[0][0]).group(1))
    finally:
        imap.logout()
    # IMAP speaks CRLF; the Maildir file has LF line ends (what Dovecot and mutt expect).
    assert fetched == on_disk.replace(b"\n", b"\r\n")
    assert size == len(fetched)
    # Our header fields first, then the message exactly as it was sent.
    assert fetched.endswith(original), fetched
    added = fetched[: -len(original)]
    assert added.startswith(
        f"Return-Path: <{sender}>\r\nDelivered-To: {server.addr('alice')}\r\nReceived: ".encode()
    ), added
    received, results = re.sub(rb"\r\n\s+", b" ", added.split(b"Received: ", 1)[1]).split(
        b"\r\nAuthentication-Results: ")
    assert f"by {server.domain} with ESMTP id {queue_id}".encode() in received, received
    assert received.endswith(b"+0000"), received
    # The sender's server did not sign (sender authentication): marked, not refused.
    assert results == f"{server.domain}; x-onion-auth=none\r\n".encode(), results
    # Dovecot keeps its own files in the folder; they do not disturb smtorp.
    assert (server.maildir_path("alice") / "dovecot-uidlist").exists()


def test_seen_and_moved_to_cur_is_not_delivered_again(mail_host):
    """A delivery whose queue record was lost in a crash is tried again at the next start.
    Meanwhile the user read it: Dovecot renamed it to cur/<name>:2,S. The retry must find it
    there (log: "already in the Maildir (earlier attempt)") and write no second copy."""
    server, dovecot = mail_host
    queue_id, test_id = crash_before_flush(server)
    (name,) = files_of(server, queue_id)
    assert name.startswith("new/"), name

    imap = dovecot.client()
    try:
        imap.select("INBOX")
        (uid,) = search(imap, test_id)
        typ, data = imap.uid("STORE", uid, "+FLAGS", r"(\Seen)")
        assert typ == "OK", data
    finally:
        imap.logout()
    assert files_of(server, queue_id) == [f"cur/{name[4:]}:2,S"]
    assert (server.maildir_path("alice") / "dovecot-uidlist").exists()

    server.start()
    wait_log(server, "already in the Maildir (earlier attempt)")
    assert queue_id in [line for line in server.log().splitlines()
                        if "already in the Maildir" in line][-1]
    server.queue_settled()
    assert files_of(server, queue_id) == [f"cur/{name[4:]}:2,S"]
    imap = dovecot.client()
    try:
        imap.select("INBOX")
        assert search(imap, test_id) == [uid]
        typ, data = imap.uid("FETCH", uid, "(FLAGS)")
        assert b"\\Seen" in data[0], data
    finally:
        imap.logout()
    server.stop()


def test_a_retry_after_a_crash_never_delivers_an_emptied_copy(mail_host):
    """The crash of the tests above, then the user deletes the message through Dovecot
    before the restart. The retry may write it again (at least once: the record of the
    first delivery was lost), but what it writes is the whole message. A delivered
    message's spool file is emptied when it goes back to the pool; when the file was
    emptied before it left spool/ (as it once was), the retry wrote a copy with our
    Return-Path and Delivered-To and nothing else, about one run in four."""
    server, dovecot = mail_host
    queue_id, test_id = crash_before_flush(server)
    imap = dovecot.client()
    try:
        imap.select("INBOX")
        (uid,) = search(imap, test_id)
        assert imap.uid("STORE", uid, "+FLAGS", r"(\Deleted)")[0] == "OK"
        assert imap.expunge()[0] == "OK"
    finally:
        imap.logout()
    assert files_of(server, queue_id) == []
    server.start()
    server.queue_settled()
    server.stop()
    copies = [server.maildir_path("alice") / name for name in files_of(server, queue_id)]
    assert len(copies) <= 1, copies
    for path in copies:
        raw = path.read_bytes()
        assert f"X-Test-Id: {test_id}\n".encode() in raw and raw.endswith(b"\n\nonce\n"), (path, raw)


def test_moved_to_another_folder_is_not_delivered_again(mail_host):
    """A crash before the delivery was recorded; the user files the message into another
    folder before the restart. The retry finds it there (Dovecot keeps the file name when
    it moves a message) and writes no second copy into INBOX."""
    server, dovecot = mail_host
    queue_id, test_id = crash_before_flush(server)
    imap = dovecot.client()
    try:
        imap.create("Archive")
        imap.select("INBOX")
        (uid,) = search(imap, test_id)
        typ, data = imap.uid("MOVE", uid, "Archive")
        assert typ == "OK", data
    finally:
        imap.logout()
    server.start()
    server.queue_settled()
    # Looked for in the files too, not only through Dovecot's index.
    on_disk = [raw for raw in server.raw_files("alice") if test_id.encode() in raw]
    imap = dovecot.client()
    try:
        imap.select("INBOX")
        assert search(imap, test_id) == [] and on_disk == [], "delivered a second time into INBOX"
    finally:
        imap.logout()
        server.stop()


IDLE_MESSAGES = 500


def idle_until(imap: imaplib.IMAP4, known: int) -> int:
    """IDLE until the server reports more than `known` messages, then DONE; returns the
    latest EXISTS count. A silence longer than the socket timeout (30 s) fails the test."""
    tag = imap._new_tag()
    imap.send(tag + b" IDLE\r\n")
    exists, done_sent = known, False
    try:
        while True:
            line = imap.readline()
            assert line, "connection closed during IDLE"
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                exists = max(exists, int(m.group(1)))
            if line.startswith(tag):
                assert b" OK" in line, line
                return exists
            if exists > known and not done_sent:
                imap.send(b"DONE\r\n")  # untagged lines may still come before the OK
                done_sent = True
    except TimeoutError:
        raise AssertionError(f"IDLE: no news for 30 s with {known} message(s) known") from None


def exists_seen(imap: imaplib.IMAP4) -> int:
    """The highest EXISTS count imaplib collected from untagged replies (then forgets them)."""
    return max((int(x) for x in imap.untagged_responses.pop("EXISTS", []) or []), default=0)


def test_500_deliveries_while_a_client_idles(mail_host):
    """An IMAP client IDLEs on the folder while smtorp delivers 500 messages. Each time it
    is told of new ones it fetches them at once: it sees all 500, none twice, and each one
    complete (a file still in tmp/ would show as a short message).

    The first 100 are sent at once; the other 400 only once the client has seen those 100,
    so that it is idling again when they come, however fast the deliveries are (a release
    build could deliver all 500 before the client's first IDLE ended)."""
    server, dovecot = mail_host
    body_lines = [f"line {i:03d} of a message long enough to be written in pieces" for i in range(120)]

    def message(test_id: str) -> bytes:
        return (f"Subject: idle\r\nX-Test-Id: {test_id}\r\n\r\n"
                + "".join(f"{line} {test_id}\r\n" for line in body_lines)
                + f"END {test_id}\r\n").encode()

    ids = [uuid.uuid4().hex for _ in range(IDLE_MESSAGES)]
    first = 100
    rest_may_go = threading.Event()
    sent: list[str] = []
    errors: list[str] = []

    def sender(chunk: list[str], later: list[str]):
        try:
            with smtplib.SMTP("127.0.0.1", server.port, local_hostname="peer.example", timeout=30) as c:
                for tid in chunk:
                    assert c.sendmail(f"s@{make_onion()}", [server.addr("alice")], message(tid)) == {}
                    sent.append(tid)
                assert rest_may_go.wait(120), "the client never saw the first messages"
                for tid in later:
                    assert c.sendmail(f"s@{make_onion()}", [server.addr("alice")], message(tid)) == {}
                    sent.append(tid)
        except Exception as e:  # recorded for the main thread
            errors.append(repr(e))

    imap = dovecot.client()
    seen: dict[str, int] = {}
    try:
        typ, data = imap.select("INBOX")
        assert (typ, data) == ("OK", [b"0"]), (typ, data)
        exists_seen(imap)
        threads = [threading.Thread(target=sender, args=(ids[:first][i::4], ids[first:][i::4]),
                                    daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        known, idles, deadline = 0, 0, time.monotonic() + 240
        while len(seen) < IDLE_MESSAGES and time.monotonic() < deadline:
            exists = exists_seen(imap)  # told during the last FETCH
            if exists <= known:
                exists = idle_until(imap, known)
                idles += 1
            typ, data = imap.fetch(f"{known + 1}:{exists}", "(BODY.PEEK[])")
            assert typ == "OK", data
            for item in data:
                if not isinstance(item, tuple):
                    continue
                raw = item[1]
                m = re.search(rb"^X-Test-Id: (\w+)\r$", raw, re.M)
                assert m, raw[:500]
                tid = m.group(1).decode()
                assert raw.endswith(message(tid)), f"incomplete message {tid}: {len(raw)} bytes"
                seen[tid] = seen.get(tid, 0) + 1
            known = exists
            if len(seen) >= first and not rest_may_go.is_set():
                rest_may_go.set()  # nothing else is on its way: the next FETCH waits in IDLE
        rest_may_go.set()  # also when the loop gave up early: the senders must not wait on
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        assert sorted(sent) == sorted(ids)
        twice = {t: n for t, n in seen.items() if n > 1}
        assert not twice, f"seen more than once: {list(twice.items())[:5]}"
        assert set(seen) == set(ids), f"IDLE client saw {len(seen)} of {IDLE_MESSAGES}:\n{dovecot.log()}"
        print(f"{IDLE_MESSAGES} messages seen in {idles} IDLE rounds")
        assert idles > 1, "the deliveries did not overlap the IDLE"  # by construction: 2 at least
        # A fresh look agrees: 500 messages, nothing left in tmp/.
        typ, data = imap.select("INBOX")
        assert data == [str(IDLE_MESSAGES).encode()], data
    finally:
        imap.logout()
    assert os.listdir(server.maildir_path("alice") / "tmp") == []
    server.queue_settled()
    server.stop()
