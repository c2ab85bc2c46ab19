"""Postfix as a real peer MTA, on 127.0.0.1: smtorp delivers to it over a static route,
and it relays to smtorp through a transport map. Postfix is set up from scratch in a
temporary folder (its own config, queue and data directories; nothing of the system's
Postfix is touched) and delivers into a Maildir with its `virtual` agent.
"""

from __future__ import annotations

import mailbox
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port, make_onion, port_open

def master_cf(port: int) -> str:
    """The throwaway Postfix's master.cf: an smtpd on 127.0.0.1:port and the services it
    shares with benches/postfix-compare.sh (tests/data/postfix-master.cf)."""
    services = (Path(__file__).parent / "data" / "postfix-master.cf").read_text()
    return f"127.0.0.1:{port} inet n - n - - smtpd\n" + services


class Postfix:
    """A throwaway Postfix instance: mail for `domain` goes to Maildirs under vmail/;
    mail for `relay_domain` is relayed to `relay_to` (smtorp's TCP listener)."""

    def __init__(self, root: Path, domain: str, users: list[str], relay_domain: str, relay_to: str):
        self.root, self.domain = root, domain
        self.port = free_port()
        etc = root / "etc"
        for d in ("etc", "spool", "data", "vmail"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.chown(root / "data", "postfix", "postfix")
        os.chown(root / "vmail", 65534, 65534)
        (etc / "vmailbox").write_text("".join(f"{u}@{domain} {u}/\n" for u in users))
        (etc / "transport").write_text(f"{relay_domain} smtp:[{relay_to.split(':')[0]}]:{relay_to.split(':')[1]}\n")
        # This instance's own settings, then the ones shared with benches/postfix-compare.sh.
        shared = (Path(__file__).parent / "data" / "postfix-main.cf").read_text()
        (etc / "main.cf").write_text(f"""\
config_directory = {etc}
queue_directory = {root}/spool
data_directory = {root}/data
syslog_name = postfix-smtorp-test
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = peer.localdomain
relay_domains = {relay_domain}
transport_maps = texthash:{etc}/transport
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {root}/vmail
virtual_mailbox_maps = texthash:{etc}/vmailbox
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
""" + shared)
        (etc / "master.cf").write_text(master_cf(self.port))
        for step in ("set-permissions", "check", "start"):
            r = subprocess.run(["postfix", "-c", str(etc), step], capture_output=True, timeout=60)
            assert r.returncode == 0, f"postfix {step}: {r.stdout!r} {r.stderr!r} {self.maillog()[-2000:]}"
        deadline = time.monotonic() + 20
        while not port_open(self.port):
            assert time.monotonic() < deadline, f"postfix not listening: {self.maillog()[-2000:]}"
            time.sleep(0.1)

    def maillog(self) -> str:
        p = self.root / "maillog"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self):
        subprocess.run(["postfix", "-c", str(self.root / "etc"), "stop"], capture_output=True, timeout=60)

    def messages(self, user: str):
        path = self.root / "vmail" / user
        if not (path / "new").exists():
            return []
        return list(mailbox.Maildir(str(path), factory=None, create=False))

    def wait_for(self, user: str, n: int, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.messages(user)
            if len(msgs) >= n:
                return msgs
            time.sleep(0.2)
        raise AssertionError(f"postfix: {user} has {len(self.messages(user))} messages\n{self.maillog()[-3000:]}")


@pytest.fixture
def postfix_and_smtorp(server_factory, tmp_path):
    if shutil.which("postfix") is None:
        pytest.fail("postfix is not installed (scripts/setup-debian installs it)")
    peer_domain = make_onion()
    # smtorp first (its port is Postfix's relay target), routed to Postfix's port.
    server = server_factory(start=False)
    # Postfix's daemons run as the postfix user, who cannot enter pytest's 0700 folders.
    root = Path(tempfile.mkdtemp(prefix="smtorp-postfix-"))
    root.chmod(0o755)
    postfix = Postfix(root, peer_domain, ["carol"], server.domain, f"127.0.0.1:{server.port}")
    text = server.config_path.read_text().replace(
        "[delivery]\n", f'[delivery]\nroutes = {{ "{peer_domain}" = "127.0.0.1:{postfix.port}" }}\n'
    )
    server.config_path.write_text(text)
    server.start()
    try:
        yield postfix, server
    finally:
        postfix.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_smtorp_delivers_to_postfix(postfix_and_smtorp):
    postfix, server = postfix_and_smtorp
    r = server.sendmail("-f", f"alice@{server.domain}", f"carol@{postfix.domain}",
                        input=b"Subject: to postfix\n\nHello Postfix.\n.. two dots\n. one dot\n")
    assert r.returncode == 0, r.stderr.decode()
    (msg,) = postfix.wait_for("carol", 1)
    assert msg["Subject"] == "to postfix"
    # Lines starting with dots survive dot-stuffing on the way out, byte for byte.
    assert msg.get_payload() == "Hello Postfix.\n.. two dots\n. one dot\n"
    received = msg.get_all("Received")
    assert any(f"by {server.domain} id " in r for r in received), received
    server.queue_settled(timeout=20)


def test_postfix_delivers_to_smtorp(postfix_and_smtorp):
    postfix, server = postfix_and_smtorp
    r = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{postfix.port}", "--helo", "client.localdomain",
         "--from", f"carol@{postfix.domain}", "--to", f"alice@{server.domain}",
         "--header", "Subject: from postfix", "--body", "Hello smtorp."],
        capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout.decode()
    (msg,) = server.wait_for_messages("alice", 1, timeout=30)
    assert msg["Subject"] == "from postfix"
    assert msg["Return-Path"] == f"<carol@{postfix.domain}>"
    # Our Received names Postfix by its EHLO name and us by our onion address only.
    assert f"from peer.localdomain by {server.domain} with ESMTP id" in msg.get_all("Received")[0]
    # Postfix does not speak XONIONAUTH: accepted (sender_auth = "verify") and marked none.
    assert msg.get_all("Authentication-Results") == [f"{server.domain}; x-onion-auth=none"]


def test_postfix_refusal_bounces_with_its_text(postfix_and_smtorp):
    postfix, server = postfix_and_smtorp
    r = server.sendmail("-f", f"alice@{server.domain}", f"nosuch@{postfix.domain}",
                        input=b"Subject: to nobody\n\nHi.\n")
    assert r.returncode == 0
    (dsn,) = server.wait_for_messages("alice", 1, timeout=30)
    report = dsn.as_string()
    assert f"Final-Recipient: rfc822; nosuch@{postfix.domain}" in report
    assert "Status: 5.1.1" in report
    assert "User unknown in virtual mailbox table" in report
