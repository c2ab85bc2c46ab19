"""Sender authentication from the onion key (XONIONAUTH, docs/sender-auth.md) end to end,
over TCP static routes (no Tor): smtorp servers signing with C tor key files made here,
raw clients forging senders, a Python client that signs with OpenSSL (an independent
implementation of the signed message), Postfix-like unauthenticated peers, and a malicious
relaying server M."""

from __future__ import annotations

import re
import socket
import smtplib
import threading
import time

from conftest import (
    OnionKey,
    free_port,
    holds_for,
    make_onion,
    raw,
    smtp,
    wait_until,
)


def auth_results(message) -> list[str]:
    return [re.sub(r"\s+", " ", v).strip() for v in message.get_all("Authentication-Results") or []]


def signed_pair(server_factory, b_smtp=None, route_auth="always"):
    """B (bob) and A (alice) that both sign; A routes B's domain to B's listener."""
    b = server_factory(users=("bob",), key=OnionKey(), smtp=b_smtp or {})
    a = server_factory(users=("alice",), key=OnionKey(),
                       delivery={"routes": {b.domain: f"127.0.0.1:{b.port}"},
                                 "route_auth": route_auth})
    return a, b


def send_a_to_b(a, b, subject="a to b", extra=""):
    r = a.sendmail("-f", a.addr("alice"), b.addr("bob"),
                   input=f"From: {a.addr('alice')}\nTo: {b.addr('bob')}\nSubject: {subject}\n{extra}\nhello\n".encode())
    assert r.returncode == 0, r.stderr


def signed_client(server, key: OnionKey) -> smtplib.SMTP:
    """An smtplib client that authenticated to `server` as `key`'s onion (235)."""
    c = smtp(server)
    nonce = c.esmtp_features.get("xonionauth", "").strip()
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", nonce), c.esmtp_features
    code, text = c.docmd(key.xonionauth(server.domain, nonce))
    assert code == 235, text
    return c


def message(sender_header: str, to: str, subject: str = "x") -> bytes:
    return f"From: {sender_header}\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def test_a_to_b_passes_and_is_marked(server_factory):
    a, b = signed_pair(server_factory)
    # A planted "pass" in B's name goes no further than B.
    send_a_to_b(a, b, extra=f"Authentication-Results: {b.domain}; x-onion-auth=pass smtp.mailfrom={make_onion()}\n")
    m = b.wait_for_messages("bob", 1)[0]
    assert auth_results(m) == [f"{b.domain}; x-onion-auth=pass smtp.mailfrom={a.domain}"]
    # Our header comes right after our Received, above everything the peer sent.
    names = [name.lower() for name, _ in m.items()]
    i = names.index("authentication-results")
    assert names[i - 1] == "received", names
    assert re.sub(r"\s+", " ", m.items()[i - 1][1]).startswith(f"from {a.domain} by {b.domain} "), m.items()
    # A's key is in no log.
    key_file = (a.tmp / "hs_ed25519_secret_key").read_bytes()
    for server in (a, b):
        log = server.log_path.read_bytes()
        assert key_file[32:48] not in log and key_file[32:48].hex().encode() not in log


def test_forging_a_peer_that_authenticated_before_is_refused(server_factory):
    a, b = signed_pair(server_factory)
    send_a_to_b(a, b)
    b.wait_for_messages("bob", 1)
    # Anyone else on B's onion side claiming alice@A: refused in the envelope...
    c = smtp(b)
    code, text = c.mail(a.addr("alice"))
    assert (code, text.decode()[:5]) == (550, "5.7.1"), text
    assert "authenticates its mail" in text.decode(), text
    # ... and in the header From (with any envelope sender), at the end of DATA.
    c.rset()
    try:
        c.sendmail(f"eve@{make_onion()}", [b.addr("bob")],
                   message(f"Alice <{a.addr('alice')}>", b.addr("bob"), "forged"))
        raise AssertionError("a forged header From was accepted")
    except smtplib.SMTPDataError as e:
        assert e.smtp_code == 550 and b"5.7.1" in e.smtp_error, e
    c.quit()
    # Forgotten: B accepts A's unauthenticated mail again, marked none.
    r = b.cli("peers", "forget", a.domain)
    assert r.returncode == 0 and b"forgotten" in r.stdout, (r.stdout, r.stderr)
    with smtp(b) as c:
        c.sendmail(a.addr("alice"), [b.addr("bob")], message(f"<{a.addr('alice')}>", b.addr("bob"), "unsigned"))
    msgs = b.wait_for_messages("bob", 2)
    unsigned = [m for m in msgs if m["Subject"] == "unsigned"][0]
    assert auth_results(unsigned) == [f"{b.domain}; x-onion-auth=none"]
    r = b.cli("peers", "forget", a.domain)
    assert r.returncode == 0 and b"not a known peer" in r.stdout, r.stdout
    # The record survives a restart (it is in the queue's store, as a keyed hash).
    send_a_to_b(a, b, "again")
    b.wait_for_messages("bob", 3)
    b.restart()
    with smtp(b) as c:
        code, text = c.mail(a.addr("alice"))
        assert code == 550, text


def test_forging_our_own_domain_is_refused(server_factory):
    b = server_factory(users=("bob",), key=OnionKey())
    c = smtp(b)
    code, text = c.mail(b.addr("bob"))
    assert code == 550 and b"5.7.1" in text and b"is ours" in text, text
    c.rset()
    try:
        c.sendmail(f"x@{make_onion()}", [b.addr("bob")], message(f"Bob <{b.addr('bob')}>", b.addr("bob")))
        raise AssertionError("a header From at our own domain was accepted")
    except smtplib.SMTPDataError as e:
        assert e.smtp_code == 550 and b"5.7.1" in e.smtp_error, e
    c.quit()
    b.assert_no_delivery("bob", wait=0.5)


def test_an_authenticated_session_sends_only_as_its_onion(server_factory):
    b = server_factory(users=("bob",), key=OnionKey())
    key = OnionKey()
    c = signed_client(b, key)
    # Another onion in the envelope: refused, saying why.
    code, text = c.mail(f"eve@{make_onion()}")
    assert code == 550 and b"not the onion this session authenticated as" in text, text
    c.rset()
    # The right envelope but another onion in the header From: refused at the end of DATA.
    try:
        c.sendmail(f"carol@{key.onion}", [b.addr("bob")],
                   message(f"\"alice@{make_onion()}\" <carol@{key.onion}>", b.addr("bob")))
        raise AssertionError("a mismatched header From was accepted")
    except smtplib.SMTPDataError as e:
        assert e.smtp_code == 550 and b"5.7.1" in e.smtp_error, e
    # The pass holds across RSET and transactions: a correct message, then a bounce (<>).
    c.sendmail(f"carol@{key.onion}", [b.addr("bob")], message(f"Carol <carol@{key.onion}>", b.addr("bob"), "ok"))
    c.sendmail("", [b.addr("bob")], message(f"MAILER-DAEMON@{key.onion}", b.addr("bob"), "bounce"))
    # A second attempt in the session: 503.
    code, text = c.docmd(key.xonionauth(b.domain, "A" * 43 + "="))
    assert code == 503, text
    c.quit()
    msgs = {m["Subject"]: m for m in b.wait_for_messages("bob", 2)}
    assert auth_results(msgs["ok"]) == [f"{b.domain}; x-onion-auth=pass smtp.mailfrom={key.onion}"]
    assert auth_results(msgs["bounce"]) == [f"{b.domain}; x-onion-auth=pass smtp.mailfrom={key.onion}"]


def test_bad_signatures_get_535_and_the_session_is_not_authenticated(server_factory):
    b = server_factory(users=("bob",), key=OnionKey())
    key = OnionKey()
    c = smtp(b)
    nonce = c.esmtp_features["xonionauth"].strip()
    # Signed for another server (what a relaying server would get): 535.
    code, text = c.docmd(key.xonionauth(make_onion(), nonce))
    assert code == 535 and b"5.7.8" in text, text
    # Marked fail, and still accepted in verify mode for a domain nobody protects.
    c.sendmail(f"x@{key.onion}", [b.addr("bob")], message(f"<x@{key.onion}>", b.addr("bob"), "failed"))
    c.quit()
    # A stale nonce (from another session) is refused too.
    c1, c2 = smtp(b), smtp(b)
    stale = c1.esmtp_features["xonionauth"].strip()
    code, text = c2.docmd(key.xonionauth(b.domain, stale))
    assert code == 535, text
    c1.quit()
    c2.quit()
    m = b.wait_for_messages("bob", 1)[0]
    assert auth_results(m) == [f"{b.domain}; x-onion-auth=fail"]


def test_require_refuses_unauthenticated_senders(server_factory):
    a, b = signed_pair(server_factory, b_smtp={"sender_auth": "require"})
    with smtp(b) as c:
        code, text = c.mail(f"x@{make_onion()}")
        assert code == 530 and b"5.7.0" in text, text
    # A signing smtorp peer gets through.
    send_a_to_b(a, b)
    m = b.wait_for_messages("bob", 1)[0]
    assert auth_results(m) == [f"{b.domain}; x-onion-auth=pass smtp.mailfrom={a.domain}"]


def test_off_offers_nothing_and_adds_no_header(server_factory):
    b = server_factory(users=("bob",), key=OnionKey(), smtp={"sender_auth": "off"})
    with smtp(b) as c:
        assert "xonionauth" not in c.esmtp_features
        code, _ = c.docmd("XONIONAUTH x y")
        assert code == 502
        c.sendmail(f"x@{make_onion()}", [b.addr("bob")], message("<x@example.org>", b.addr("bob")))
    m = b.wait_for_messages("bob", 1)[0]
    assert m.get_all("Authentication-Results") is None


def test_a_route_to_an_unprivileged_port_is_not_signed_by_default(server_factory):
    # Anyone may listen on 127.0.0.1:<high port>: by default smtorp does not sign there.
    a, b = signed_pair(server_factory, route_auth="privileged")
    send_a_to_b(a, b)
    m = b.wait_for_messages("bob", 1)[0]
    assert auth_results(m) == [f"{b.domain}; x-onion-auth=none"]


class RelayingServer(threading.Thread):
    """M, a malicious server: A delivers mail for M's own onion to it; M opens a session at
    B, shows A B's nonce, and forwards A's XONIONAUTH (signed for M) to B, then tries to send
    as alice@A at B. Records B's replies."""

    def __init__(self, b, domain: str):
        super().__init__(daemon=True)
        self.b = b
        self.domain = domain
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(60)
        self.port = self.listener.getsockname()[1]
        self.b_auth_reply: tuple[int, str] | None = None
        self.b_mail_reply: tuple[int, str] | None = None
        self.error: BaseException | None = None
        self.alice = ""  # the address M tries to send as

    def run(self):
        try:
            self.relay()
        except BaseException as e:  # reported by the test
            self.error = e

    def relay(self):
        conn, _ = self.listener.accept()
        conn.settimeout(30)
        buf = b""

        def line() -> str:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = conn.recv(4096)
                if not chunk:
                    raise ConnectionError("A closed")
                buf += chunk
            one, buf = buf.split(b"\r\n", 1)
            return one.decode()

        to_b = raw(self.b)
        code, ehlo = to_b.cmd("EHLO m.example")
        nonce = re.search(r"XONIONAUTH (\S+)", ehlo).group(1)
        conn.sendall(f"220 {self.domain} ESMTP\r\n".encode())
        assert line().upper().startswith("EHLO ")
        conn.sendall(f"250-{self.domain}\r\n250-XONIONAUTH {nonce}\r\n250 8BITMIME\r\n".encode())
        command = line()
        assert command.startswith("XONIONAUTH "), command
        self.b_auth_reply = to_b.cmd(command)
        self.b_mail_reply = to_b.cmd(f"MAIL FROM:<{self.alice}>")
        to_b.cmd("QUIT")
        code, text = self.b_auth_reply
        conn.sendall(f"{text.splitlines()[-1]}\r\n".encode())
        conn.close()


def test_a_relaying_server_cannot_send_as_a(server_factory):
    b = server_factory(users=("bob",), key=OnionKey())
    m_domain = OnionKey().onion
    relay = RelayingServer(b, m_domain)
    a = server_factory(users=("alice",), key=OnionKey(),
                       delivery={"routes": {b.domain: f"127.0.0.1:{b.port}",
                                            m_domain: f"127.0.0.1:{relay.port}"},
                                 "route_auth": "always", "retry_after": ["1h"]})
    relay.alice = a.addr("alice")
    # A has authenticated to B once (so B knows A signs).
    send_a_to_b(a, b)
    b.wait_for_messages("bob", 1)
    relay.start()
    r = a.sendmail("-f", a.addr("alice"), f"mallory@{m_domain}", input=b"Subject: to M\n\nx\n")
    assert r.returncode == 0, r.stderr
    relay.join(timeout=60)
    assert relay.error is None, relay.error
    # B refuses the signature (it names M, not B) and then the sender.
    assert relay.b_auth_reply[0] == 535, relay.b_auth_reply
    assert relay.b_mail_reply[0] == 550, relay.b_mail_reply
    holds_for(lambda: b.count("bob") == 1, 1.0, "nothing more reached bob")
    # A keeps the message: a refused authentication is temporary, shown in `queue show`.
    listing = wait_until(lambda: (out := a.queue_list().stdout.decode()) and "XONIONAUTH" in out and out,
                         timeout=20, what="the refusal in the queue")
    queue_id = re.search(r"^([0-9A-F]{16})\b", listing, re.M).group(1)
    shown = a.cli("queue", "show", queue_id).stdout.decode()
    assert "answered XONIONAUTH: 535" in shown and "pending" in shown, shown


def test_postfix_style_unauthenticated_peers_are_still_accepted(server_factory):
    # What Postfix or Exim behind C tor do: no XONIONAUTH, a sender at their own onion.
    b = server_factory(users=("bob",), key=OnionKey())
    peer = make_onion()
    with smtp(b) as c:
        c.sendmail(f"carol@{peer}", [b.addr("bob")], message(f"Carol <carol@{peer}>", b.addr("bob")))
    m = b.wait_for_messages("bob", 1)[0]
    assert auth_results(m) == [f"{b.domain}; x-onion-auth=none"]
