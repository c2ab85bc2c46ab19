"""Remote delivery between two smtorp servers over a static TCP route ([delivery] routes),
no Tor involved: A submits with sendmail, B receives over SMTP."""

import re
import socket
import time

from conftest import IPV4_RE, contains_hostname, holds_for, make_onion, smtp


def pair(server_factory, start_b=True):
    b = server_factory(users=("bob",), start=start_b)
    a = server_factory(users=("alice",), delivery={"routes": {b.domain: f"127.0.0.1:{b.port}"},
                                                   "retry_after": ["2s"]})
    return a, b


def wait_queue(server, predicate, timeout=20):
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = server.queue_list().stdout.decode()
        if predicate(out):
            return out
        time.sleep(0.2)
    raise AssertionError(f"queue never matched within {timeout}s:\n{out}\n{server.log()[-3000:]}")


def test_remote_delivery_over_a_route(server_factory):
    a, b = pair(server_factory)
    r = a.sendmail("-f", a.addr("alice"), b.addr("bob"),
                   input=f"To: {b.addr('bob')}\nSubject: a to b\n\nhello B\n".encode())
    assert r.returncode == 0, r.stderr
    m = b.wait_for_messages("bob", 1)[0]
    assert m["Subject"] == "a to b"
    assert m.get_payload() == "hello B\n"
    assert m["Return-Path"] == f"<{a.addr('alice')}>"
    assert m["Delivered-To"] == b.addr("bob")
    received = [re.sub(r"\s+", " ", r) for r in m.get_all("Received")]
    assert len(received) == 2, received
    assert received[0].startswith(f"from {a.domain} by {b.domain} with ESMTP id"), received[0]
    assert received[1].startswith(f"by {a.domain} id"), received[1]
    for line in received:
        assert not IPV4_RE.search(line), line
        assert not contains_hostname(line), line
        assert line.endswith("+0000"), line
    assert m["Message-ID"].endswith(f"@{a.domain}>")
    wait_queue(a, lambda out: "-- 0 message(s)" in out)


def test_remote_peer_down_is_deferred_then_delivered(server_factory):
    a, b = pair(server_factory, start_b=False)
    r = a.sendmail("-f", a.addr("alice"), b.addr("bob"), input=b"Subject: later\n\nx\n")
    assert r.returncode == 0, r.stderr
    out = wait_queue(a, lambda out: re.search(
        rf"{re.escape(b.addr('bob'))} \(pending, [1-9]\d* attempts?: .+\)", out))
    assert "1 message(s)" in out
    b.start()
    m = b.wait_for_messages("bob", 1, timeout=30)[0]
    assert m["Subject"] == "later"
    wait_queue(a, lambda out: "-- 0 message(s)" in out)
    holds_for(lambda: b.count("bob") == 1, 1.0, "delivered once")


def find_bounce(server, user, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in server.messages(user):
            if m["Return-Path"] == "<>" and "MAILER-DAEMON@" in (m["From"] or ""):
                return m
        time.sleep(0.1)
    raise AssertionError(f"no bounce for {user} within {timeout}s\n{server.log()[-3000:]}")


def test_remote_unknown_user_fails_permanently_and_bounces(server_factory):
    a, b = pair(server_factory)
    rcpt = f"nobody@{b.domain}"
    r = a.sendmail("-f", a.addr("alice"), rcpt, input=b"Subject: nobody\n\nx\n")
    assert r.returncode == 0, r.stderr
    # Not retried as pending: failed (or gone from the queue) after B's 550.
    out = wait_queue(a, lambda out: rcpt not in out or "(failed" in out)
    assert f"{rcpt} (pending" not in out, out
    bounce = find_bounce(a, "alice")
    text = bounce.as_string()
    assert rcpt in text and "550" in text and "5.1.1" in text, text
    assert bounce.get_content_type() == "multipart/report"
    assert "Subject: nobody" in text  # the original headers are attached
    time.sleep(3)  # longer than retry_after: still not pending, exactly one bounce
    out = a.queue_list().stdout.decode()
    assert f"{rcpt} (pending" not in out, out
    assert a.count("alice") == 1
    assert b.count("bob") == 0


def test_bounce_reveals_no_software_or_ip(server_factory):
    """Privacy rule (crates/smtorp/src/headers.rs): what we add carries no IP address, no
    host name and no software name -- bounces included."""
    a, b = pair(server_factory)
    r = a.sendmail("-f", a.addr("alice"), f"nobody@{b.domain}", input=b"Subject: fp\n\nx\n")
    assert r.returncode == 0, r.stderr
    find_bounce(a, "alice")
    raw = a.raw_files("alice")[0].decode()
    assert not IPV4_RE.search(raw), raw
    assert not contains_hostname(raw)
    assert "smtorp" not in raw.lower(), [l for l in raw.splitlines() if "smtorp" in l.lower()]


def test_remote_partial_failure(server_factory):
    a, b = pair(server_factory)
    r = a.sendmail("-f", a.addr("alice"), b.addr("bob"), f"nobody@{b.domain}", a.addr("alice"),
                   input=b"Subject: mixed\n\nx\n")
    assert r.returncode == 0, r.stderr
    assert b.wait_for_messages("bob", 1)[0]["Subject"] == "mixed"
    msgs = a.wait_for_messages("alice", 2)  # the message itself and the bounce for nobody@B
    time.sleep(1)
    msgs = a.messages("alice")
    subjects = sorted(m["Subject"] for m in msgs)
    assert subjects == ["Undelivered Mail Returned to Sender", "mixed"], subjects
    bounce = find_bounce(a, "alice")
    text = bounce.as_string()
    assert f"nobody@{b.domain}" in text
    assert b.addr("bob") not in text.split("text/rfc822-headers")[0], "bob was delivered, not bounced"
    assert b.count("bob") == 1
    wait_queue(a, lambda out: "-- 0 message(s)" in out)


def test_onion_side_never_relays_to_a_routed_domain(server_factory):
    """Even with a route, SMTP clients of A cannot relay through A to B."""
    a, b = pair(server_factory)
    with smtp(a) as c:
        code, _ = c.docmd(f"MAIL FROM:<x@{make_onion()}>")
        assert code == 250
        code, text = c.docmd(f"RCPT TO:<{b.addr('bob')}>")
        assert code == 550 and b"5.7.1" in text, text
    b.assert_no_delivery("bob", wait=1)


def test_remote_hop_keeps_dot_lines(server_factory):
    """Dot-stuffing on the way out: lines starting with '.' (and a lone '.') survive."""
    a, b = pair(server_factory)
    body = ".leading\n..two\n.\nmiddle\n"
    r = a.sendmail("-i", "-f", a.addr("alice"), b.addr("bob"),
                   input=("Subject: dots remote\n\n" + body).encode())
    assert r.returncode == 0, r.stderr
    m = b.wait_for_messages("bob", 1)[0]
    # Trailing blank lines are checked by test_remote_delivery_over_a_route.
    assert m.get_payload().rstrip("\n") == body.rstrip("\n"), repr(m.get_payload())


def test_remote_hop_preserves_the_message_bytes(server_factory):
    """What B stores is what A queued: the same body, byte for byte (no line added)."""
    a, b = pair(server_factory)
    body = "one\ntwo\n"
    r = a.sendmail("-f", a.addr("alice"), b.addr("bob"), input=("Subject: exact\n\n" + body).encode())
    assert r.returncode == 0, r.stderr
    raw_b = b.wait_for_messages("bob", 1) and b.raw_files("bob")[0]
    assert raw_b.endswith(b"\n\none\ntwo\n"), raw_b[-40:]
    assert not raw_b.endswith(b"two\n\n"), f"an empty line was appended on the hop: {raw_b[-40:]!r}"
