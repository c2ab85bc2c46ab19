"""End-to-end tests over real Tor: a private Tor network of Debian's `tor` daemons on
127.0.0.1 (brought up with `tornet up`, torn down with `tornet down` even when a test
fails), two smtorp servers each publishing its own onion service through arti, and the
network's C tor client for classic tools (torsocks + swaks).

Readiness of an onion service is a real connection or delivery, never arti's status.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Server, binary_path, make_onion

TOR_TIMEOUT = 90  # seconds for one delivery across the private network (retries included)


def tornet_bin() -> Path:
    """The private-network harness: $TORNET_BIN, else `tornet` beside the smtorp binary
    (both are built into the same target folder)."""
    env = os.environ.get("TORNET_BIN")
    path = Path(env) if env else binary_path().parent / "tornet"
    if not path.is_file():
        pytest.fail(f"no tornet binary at {path}: build it (cargo build -p smtorp-tornet) "
                    "next to SMTORP_BIN, or set TORNET_BIN")
    return path


@contextlib.contextmanager
def private_network(net: Path):
    """A private Tor network in `net` (`tornet up`), taken down after (`down` also thaws a
    frozen one); nothing of it may survive."""
    if shutil.which("tor") is None:
        pytest.fail("Debian's tor is not installed (scripts/setup-debian installs it)")
    up = subprocess.run([str(tornet_bin()), "up", str(net)], capture_output=True, timeout=240)
    try:
        assert up.returncode == 0, f"tornet up failed:\n{up.stdout.decode()}\n{up.stderr.decode()}"
        assert (net / "arti.toml").is_file()
        yield net
    finally:
        down = subprocess.run([str(tornet_bin()), "down", str(net)], capture_output=True, timeout=120)
        assert down.returncode == 0, down.stderr.decode()
        left = subprocess.run(["pgrep", "-f", str(net)], capture_output=True)
        assert left.stdout.strip() == b"", f"tor processes left: {left.stdout!r}"


@pytest.fixture(scope="module")
def tornet(tmp_path_factory):
    with private_network(tmp_path_factory.mktemp("tornet")) as net:
        yield net


class OnionServer(Server):
    """A smtorp server whose only way in is its onion service on the private network."""

    def __init__(self, binary: Path, tmp: Path, arti_toml: Path, users, import_key: Path | None = None):
        super().__init__(binary, tmp, users=users, delivery={"retry_after": ["2s", "3s", "5s"]})
        text = self.config_path.read_text()
        text = text.replace(
            "[onion]\nenabled = false",
            f'[onion]\nenabled = true\narti_config = "{arti_toml}"\nconnect_timeout = "30s"',
        )
        # No TCP listener, and our onion address (not a made-up one) is our domain.
        text = re.sub(r'listen = \["127\.0\.0\.1:\d+"\]', "listen = []", text)
        text = re.sub(r"domains = \[[^\]]*\]", "domains = []", text)
        self.config_path.write_text(text)
        if import_key is not None:
            r = self.cli("import-key", str(import_key))
            assert r.returncode == 0, r.stderr.decode()
        self.init()
        self.domain = (self.data_dir / "onion" / "hostname").read_text().strip()

    def start(self, timeout: float = 60):
        # There is no TCP port to wait for: wait for the onion service instead.
        assert self.proc is None
        self.starts += 1
        self._log_file = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config_path), "run"],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=self._log_file, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"smtorp exited early:\n{self.log()}"
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if b"onion service launched" in f.read():
                    return self
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"onion service not launched within {timeout}s:\n{self.log()}")


@contextlib.contextmanager
def running_pair(kind, network: Path, tmp_path_factory):
    """Servers A (alice) and B (bob) of class `kind` on `network`, started; killed after."""
    binary = binary_path()
    a = kind(binary, tmp_path_factory.mktemp("A"), network / "arti.toml", ["alice"])
    b = kind(binary, tmp_path_factory.mktemp("B"), network / "arti.toml", ["bob"])
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        for s in (a, b):
            if s.proc is not None:
                s.kill()


@pytest.fixture(scope="module")
def pair(tornet, tmp_path_factory):
    with running_pair(OnionServer, tornet, tmp_path_factory) as servers:
        yield servers


def swaks_through_c_tor(network: Path, domain: str, rcpt: str, subject: str,
                        timeout: float = TOR_TIMEOUT) -> subprocess.CompletedProcess:
    """swaks through torsocks and the network's C tor client to `domain`:25, retried until
    it succeeds or `timeout` passes (C tor may need a moment for the descriptor); the last
    run. The sender is at an onion that does not sign (a signing peer's would be refused)."""
    socks_port = (network / "socks_port").read_text().strip()
    # swaks looks up the machine's own host name at start; through torsocks that lookup
    # would go to Tor as an exit request, which an onion-only network cannot answer. In a
    # private UTS namespace the host name is "localhost", which torsocks answers itself.
    cmd = ["unshare", "--uts", "sh", "-c", 'hostname localhost && exec "$@"', "sh",
           "torsocks", "-P", socks_port, "swaks", "--server", domain, "--port", "25",
           "--from", f"carol@{make_onion()}", "--to", rcpt,
           "--header", f"Subject: {subject}", "--body", "Classic tools still work.",
           "--timeout", "60"]
    deadline = time.monotonic() + timeout
    while True:
        last = subprocess.run(cmd, capture_output=True, timeout=120)
        if last.returncode == 0 or time.monotonic() > deadline:
            return last
        time.sleep(2)


def submit(server: Server, sender: str, rcpt: str, subject: str, body: str = "Hello over Tor.\n"):
    msg = f"From: {sender}\nTo: {rcpt}\nSubject: {subject}\n\n{body}".encode()
    r = server.sendmail("-f", sender, rcpt, input=msg)
    assert r.returncode == 0, r.stderr.decode()


def find(server: Server, user: str, subject: str, timeout: float = TOR_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in server.messages(user):
            if m["Subject"] == subject:
                return m
        time.sleep(0.2)
    raise AssertionError(f"{subject!r} not delivered to {user} within {timeout}s\n"
                         f"queue: {server.queue_list().stdout.decode()}\nlog:\n{server.log()[-4000:]}")


def test_addresses_are_valid_v3_onions(pair):
    a, b = pair
    for s in (a, b):
        assert re.fullmatch(r"[a-z2-7]{55}d\.onion", s.domain), s.domain
        r = s.cli("address")
        assert r.returncode == 0 and r.stdout.decode().strip() == s.domain
    assert a.domain != b.domain


def test_mail_from_a_to_b_and_a_reply(pair):
    a, b = pair
    submit(a, f"alice@{a.domain}", f"bob@{b.domain}", "over tor")
    m = find(b, "bob", "over tor")
    assert m["Return-Path"] == f"<alice@{a.domain}>"
    assert m["Delivered-To"] == f"bob@{b.domain}"
    received = m.get_all("Received")
    # B's Received names A by its onion name (its EHLO) and B by its own; no IP anywhere.
    assert f"from {a.domain} by {b.domain} with ESMTP id" in received[0]
    assert not re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", "\n".join(received))
    assert all(r.rstrip().endswith("+0000") for r in received)
    # A signed with its arti identity key (XONIONAUTH), and B checked it.
    assert m.get_all("Authentication-Results") == [
        f"{b.domain}; x-onion-auth=pass smtp.mailfrom={a.domain}"]

    submit(b, f"bob@{b.domain}", f"alice@{a.domain}", "re: over tor", "Got it.\n")
    reply = find(a, "alice", "re: over tor")
    assert reply["Return-Path"] == f"<bob@{b.domain}>"
    assert "Got it." in reply.get_payload()
    assert reply.get_all("Authentication-Results") == [
        f"{a.domain}; x-onion-auth=pass smtp.mailfrom={b.domain}"]


def test_classic_client_through_c_tor_reaches_the_onion_service(pair, tornet):
    """The seed's own test: torsocks + swaks through the network's C tor client."""
    a, b = pair
    assert shutil.which("torsocks") and shutil.which("swaks")
    last = swaks_through_c_tor(tornet, a.domain, f"alice@{a.domain}", "via torsocks")
    out = last.stdout.decode(errors="replace")
    assert last.returncode == 0, out + last.stderr.decode(errors="replace")
    assert "250 2.0.0 Ok: queued as" in out
    assert f"220 {a.domain} ESMTP" in out
    m = find(a, "alice", "via torsocks")
    assert "Classic tools still work." in m.get_payload()


def unpublished_onion(tmp: Path) -> str:
    """A real v3 onion address (a valid ed25519 key, made by `smtorp init`) that nobody
    publishes. (A random 32-byte string passes the checksum but is usually not a key.)"""
    config = tmp / "ghost.toml"
    config.write_text(f'data_dir = "{tmp / "ghost"}"\n[onion]\nenabled = true\n[submission]\nlisten = []\n')
    r = subprocess.run([str(binary_path()), "--config", str(config), "init"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return (tmp / "ghost" / "onion" / "hostname").read_text().strip()


def test_mail_to_an_onion_that_does_not_exist_is_deferred_not_lost(pair, tmp_path):
    a, _ = pair
    nowhere = unpublished_onion(tmp_path)
    submit(a, f"alice@{a.domain}", f"nobody@{nowhere}", "into the void")
    deadline = time.monotonic() + TOR_TIMEOUT
    listing = ""
    while time.monotonic() < deadline:
        listing = a.queue_list().stdout.decode()
        if re.search(rf"nobody@{re.escape(nowhere)} \(pending, \d+ attempts:", listing):
            break
        time.sleep(1)
    # Still queued, pending, with the reason of the last failed attempt.
    assert re.search(rf"nobody@{re.escape(nowhere)} \(pending, \d+ attempts: .+\)", listing), listing


def test_restart_keeps_the_address_and_still_receives(pair):
    a, b = pair
    before = a.domain
    assert a.stop() == 0
    a.start()
    assert a.cli("address").stdout.decode().strip() == before
    submit(b, f"bob@{b.domain}", f"alice@{before}", "after restart")
    find(a, "alice", "after restart")


def test_refused_recipient_bounces_to_the_sender(pair):
    """B refuses an unknown user with 550 5.1.1; A returns an RFC 3464 report to alice."""
    a, b = pair
    submit(a, f"alice@{a.domain}", f"nosuchuser@{b.domain}", "to a stranger")
    dsn = find(a, "alice", "Undelivered Mail Returned to Sender")
    assert dsn["Return-Path"] == "<>"
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = dsn.get_payload()
    status = next(p for p in parts if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert f"Reporting-MTA: dns; {a.domain}" in text
    assert f"Final-Recipient: rfc822; nosuchuser@{b.domain}" in text
    assert "Action: failed" in text and "Status: 5.1.1" in text
    assert "550" in text  # the remote reply is quoted in Diagnostic-Code
    returned = next(p for p in parts if p.get_content_type() == "text/rfc822-headers")
    assert "Subject: to a stranger" in returned.as_string()


def test_an_imported_ctor_key_serves_its_old_address_over_tor(pair, tornet, tmp_path):
    """Moving from C tor: the imported identity is published by arti and receives mail."""
    from test_import_key import ctor_hidden_service_dir

    a, _ = pair
    hs = ctor_hidden_service_dir(tmp_path)
    old_address = (hs / "hostname").read_text().strip()
    c = OnionServer(binary_path(), tmp_path / "C", tornet / "arti.toml", ["carol"], import_key=hs)
    assert c.domain == old_address
    try:
        c.start()
        submit(a, f"alice@{a.domain}", f"carol@{old_address}", "to the old address")
        m = find(c, "carol", "to the old address")
        assert m["Delivered-To"] == f"carol@{old_address}"
    finally:
        c.kill()
