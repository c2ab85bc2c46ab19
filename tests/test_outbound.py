"""Outbound delivery against peers that misbehave on purpose, reached over static routes
on 127.0.0.1: a scripted SMTP peer (beside, not instead of, the real peers of
test_remote.py, test_postfix.py and test_tor.py) that refuses, defers, drops the
connection mid-DATA and counts connections.

What is checked: retries after 4xx, no duplicate after a dropped DATA, deferral and expiry
with a bounce, no bounce for a null sender, connection reuse and PIPELINING.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from conftest import Server, make_onion


class ScriptedPeer:
    """A small SMTP server on 127.0.0.1 that follows a script:

    - refuse: local parts answered 550 5.1.1 at RCPT;
    - defer_data: how many DATA transactions get 451 4.3.0 before one is accepted;
    - drop_data: how many transactions are cut (connection closed) after the final dot,
      before any reply: the peer keeps nothing of them;
    - pipelining: whether EHLO offers PIPELINING.
    """

    def __init__(self, domain: str, *, refuse=(), defer_data=0, drop_data=0, pipelining=True):
        self.domain = domain
        self.refuse = set(refuse)
        self.defer_data = defer_data
        self.drop_data = drop_data
        self.pipelining = pipelining
        self.connections = 0
        self.stored: list[dict] = []
        self.pipelined_batches = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closed = True
        self.listener.close()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket):
        conn.settimeout(30)
        buf = b""

        def send(text: str):
            conn.sendall(text.encode())

        def lines():
            nonlocal buf
            while True:
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    yield line.decode(errors="replace")
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk

        try:
            send(f"220 {self.domain} ESMTP\r\n")
            sender, rcpts = None, []
            it = lines()
            for line in it:
                verb = line[:4].upper()
                if verb == "EHLO":
                    caps = ["PIPELINING"] if self.pipelining else []
                    caps += ["8BITMIME"]
                    send("".join(f"250-{c}\r\n" for c in [self.domain] + caps[:-1]) + f"250 {caps[-1]}\r\n")
                elif verb == "MAIL":
                    # A pipelining client sends RCPT and DATA without waiting for this
                    # reply; one that does not pipeline cannot. Look before answering.
                    nonlocal_wait = time.monotonic() + 0.5
                    while b"DATA\r\n" not in buf and time.monotonic() < nonlocal_wait:
                        conn.settimeout(max(0.01, nonlocal_wait - time.monotonic()))
                        try:
                            chunk = conn.recv(65536)
                        except socket.timeout:
                            break
                        if not chunk:
                            break
                        buf += chunk
                    conn.settimeout(30)
                    if b"DATA\r\n" in buf:
                        with self.lock:
                            self.pipelined_batches += 1
                    sender, rcpts = line.split(":", 1)[1].strip(), []
                    send("250 2.1.0 Ok\r\n")
                elif verb == "RCPT":
                    addr = re.search(r"<([^>]*)>", line).group(1)
                    if addr.split("@")[0] in self.refuse:
                        send("550 5.1.1 <%s>: Recipient address rejected: no such user\r\n" % addr)
                    else:
                        rcpts.append(addr)
                        send("250 2.1.5 Ok\r\n")
                elif verb == "DATA":
                    if not rcpts:
                        send("554 5.5.1 No valid recipients\r\n")
                        continue
                    send("354 End data with <CR><LF>.<CR><LF>\r\n")
                    data = []
                    for dl in it:
                        if dl == ".":
                            break
                        data.append(dl[1:] if dl.startswith("..") else dl)
                    with self.lock:
                        drop = self.drop_data > 0
                        if drop:
                            self.drop_data -= 1
                        defer = not drop and self.defer_data > 0
                        if defer:
                            self.defer_data -= 1
                    if drop:
                        conn.close()
                        return
                    if defer:
                        send("451 4.3.0 Try again later\r\n")
                        continue
                    with self.lock:
                        self.stored.append({"sender": sender, "rcpts": list(rcpts), "data": "\n".join(data)})
                    send("250 2.0.0 Ok: queued\r\n")
                elif verb == "RSET":
                    sender, rcpts = None, []
                    send("250 2.0.0 Ok\r\n")
                elif verb == "NOOP":
                    send("250 2.0.0 Ok\r\n")
                elif verb == "QUIT":
                    send("221 2.0.0 Bye\r\n")
                    conn.close()
                    return
                else:
                    send("502 5.5.1 Unknown command\r\n")
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def subjects(self) -> list[str]:
        with self.lock:
            return [m for s in self.stored for m in re.findall(r"^Subject: (.*)$", s["data"], re.M)]

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.stored) >= n:
                    return
            time.sleep(0.05)
        raise AssertionError(f"peer got {len(self.stored)} messages, expected {n}")


@pytest.fixture
def peer_and_server(server_factory):
    peers = []

    def make(peer_kwargs=None, delivery=None):
        domain = make_onion()
        peer = ScriptedPeer(domain, **(peer_kwargs or {}))
        peers.append(peer)
        cfg = {"routes": {domain: f"127.0.0.1:{peer.port}"}, "retry_after": ["1s"]}
        cfg.update(delivery or {})
        server = server_factory(delivery=cfg)
        return peer, server

    yield make
    for p in peers:
        p.close()


def local_sender(server: Server) -> str:
    # Mail from the onion side may come from anywhere; the submission path is sendmail.
    return f"alice@{server.domain}"


def sendmail(server: Server, rcpt: str, subject: str, sender: str | None = None):
    args = ["-f", sender if sender is not None else local_sender(server), rcpt]
    r = server.sendmail(*args, input=f"Subject: {subject}\n\nbody of {subject}\n".encode())
    assert r.returncode == 0, r.stderr.decode()


def test_451_is_retried_then_delivered_once(peer_and_server):
    peer, server = peer_and_server({"defer_data": 2})
    sendmail(server, f"bob@{peer.domain}", "deferred twice")
    peer.wait_for(1, timeout=30)
    server.queue_settled(timeout=30)
    time.sleep(1.5)
    assert peer.subjects() == ["deferred twice"]


def test_dropped_connection_mid_data_is_retried_without_duplicate(peer_and_server):
    peer, server = peer_and_server({"drop_data": 1})
    sendmail(server, f"bob@{peer.domain}", "dropped once")
    peer.wait_for(1, timeout=30)
    server.queue_settled(timeout=30)
    time.sleep(1.5)
    assert peer.subjects() == ["dropped once"]
    assert peer.connections >= 2  # the first one was cut


def test_closed_port_is_deferred_visible_then_expires_with_a_bounce(server_factory):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there now
    domain = make_onion()
    server = server_factory(delivery={"routes": {domain: f"127.0.0.1:{port}"},
                                      "retry_after": ["1s"], "max_lifetime": "6s"})
    sendmail(server, f"bob@{domain}", "into a closed port")
    deadline = time.monotonic() + 15
    listing = ""
    while time.monotonic() < deadline:
        listing = server.queue_list().stdout.decode()
        if f"bob@{domain} (pending" in listing and "attempts:" in listing:
            break
        time.sleep(0.2)
    assert re.search(rf"bob@{re.escape(domain)} \(pending, \d+ attempts: .*127\.0\.0\.1:{port}", listing), listing
    status = server.cli("status").stdout.decode()
    assert "recipients:" in status and "deferred" in status
    # After max_lifetime the recipient fails and alice hears about it.
    dsn = server.wait_for_messages("alice", 1, timeout=30)[0]
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    report = dsn.as_string()
    assert f"Final-Recipient: rfc822; bob@{domain}" in report
    assert "Status: 4.4.7" in report and "expired" in report
    server.queue_settled(timeout=15)


def test_null_sender_is_never_bounced(peer_and_server):
    peer, server = peer_and_server({"refuse": ["nobody"]})
    sendmail(server, f"nobody@{peer.domain}", "a bounce of a bounce", sender="<>")
    server.queue_settled(timeout=30)
    time.sleep(1.5)
    assert peer.stored == []
    for user in server.users:
        assert server.count(user) == 0, f"{user} got a bounce for a null-sender message"
    assert "not bouncing a message with a null sender" in server.log()


def test_refused_recipient_bounces_and_the_others_are_delivered(peer_and_server):
    peer, server = peer_and_server({"refuse": ["nobody"]})
    r = server.sendmail("-f", local_sender(server), f"bob@{peer.domain}", f"nobody@{peer.domain}",
                        input=b"Subject: half\n\nfor two\n")
    assert r.returncode == 0
    peer.wait_for(1)
    assert peer.stored[0]["rcpts"] == [f"bob@{peer.domain}"]
    dsn = server.wait_for_messages("alice", 1, timeout=30)[0]
    report = dsn.as_string()
    assert f"Final-Recipient: rfc822; nobody@{peer.domain}" in report
    assert "Status: 5.1.1" in report and "Recipient address rejected" in report
    assert report.count("Final-Recipient:") == 1, "only the refused recipient is reported"


def test_many_messages_to_one_destination_reuse_connections_and_pipeline(peer_and_server):
    peer, server = peer_and_server()
    n = 12
    for i in range(n):
        sendmail(server, f"bob@{peer.domain}", f"message {i}")
    peer.wait_for(n, timeout=60)
    server.queue_settled(timeout=30)
    assert sorted(peer.subjects()) == sorted(f"message {i}" for i in range(n))
    # Connection caching: far fewer connections than messages (at most 4 sessions to one
    # destination at once).
    assert peer.connections <= 4, f"{peer.connections} connections for {n} messages"
    # PIPELINING: every transaction's DATA came before the peer answered its MAIL.
    assert peer.pipelined_batches == n


def test_without_pipelining_the_client_goes_step_by_step(peer_and_server):
    peer, server = peer_and_server({"pipelining": False, "refuse": ["nobody"]})
    r = server.sendmail("-f", local_sender(server), f"bob@{peer.domain}", f"nobody@{peer.domain}",
                        input=b"Subject: stepwise\n\nhi\n")
    assert r.returncode == 0
    peer.wait_for(1)
    assert peer.pipelined_batches == 0
    assert peer.stored[0]["rcpts"] == [f"bob@{peer.domain}"]
