"""Delivery over SMTP into local Maildirs, checked with Python's mailbox module."""

import re
import socket
import subprocess

from conftest import IPV4_RE, contains_hostname, make_onion, raw, send_raw_transaction, simple_message, smtp

HOSTNAME = socket.gethostname()


def norm(value) -> str:
    """A header value with folding undone."""
    return re.sub(r"\s+", " ", str(value)).strip()


def assert_no_identity_leak(text: str):
    assert not IPV4_RE.search(text), f"IP address in {text!r}"
    assert "127.0.0.1" not in text
    assert not contains_hostname(text), f"host name {HOSTNAME!r} in {text!r}"
    assert "smtorp" not in text.lower(), f"software name in {text!r}"


def check_our_headers(server, msg, sender, rcpt):
    assert msg["Return-Path"] == f"<{sender}>", msg["Return-Path"]
    assert msg["Delivered-To"] == rcpt, msg["Delivered-To"]
    received = [norm(r) for r in msg.get_all("Received")]
    assert received, "no Received header"
    ours = received[0]
    assert f"by {server.domain}" in ours, ours
    assert re.search(r"with ESMTP id [0-9A-Fa-f]{16};", ours), ours
    assert re.search(r"\d{2}:\d{2}:\d{2} \+0000$", ours), ours
    assert_no_identity_leak(ours)


def test_swaks_delivery(server):
    sender = f"x@{make_onion()}"
    rcpt = server.addr("alice")
    r = subprocess.run(
        [
            "swaks", "--server", f"127.0.0.1:{server.port}", "--helo", "client.example",
            "--from", sender, "--to", rcpt, "--body", "Swaks body line\nsecond line",
            "--header", "Subject: swaks test", "--timeout", "15",
        ],
        capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    msgs = server.wait_for_messages("alice", 1)
    assert len(msgs) == 1
    msg = msgs[0]
    assert msg["Subject"] == "swaks test"
    body = msg.get_payload()
    assert "Swaks body line\nsecond line" in body, body
    check_our_headers(server, msg, sender, rcpt)
    # The Maildir file is in new/ and uses LF line ends only.
    files = list((server.maildir_path("alice") / "new").iterdir())
    assert len(files) == 1
    data = files[0].read_bytes()
    assert b"\r" not in data, data[:500]
    assert server.count("bob") == 0


def test_smtplib_delivery_and_headers(server):
    sender = f"carol@{make_onion()}"
    rcpt = server.addr("alice")
    body = "Dear Alice,\r\nthis is a test.\r\n-- \r\nCarol\r\n"
    with smtp(server) as c:
        refused = c.sendmail(sender, [rcpt], simple_message(server, "smtplib test", body, sender=sender))
        assert refused == {}
    msgs = server.wait_for_messages("alice", 1)
    assert len(msgs) == 1
    msg = msgs[0]
    assert msg["Subject"] == "smtplib test"
    assert msg.get_payload() == body.replace("\r\n", "\n")
    check_our_headers(server, msg, sender, rcpt)
    # Received is the first field after Return-Path and Delivered-To.
    keys = [k.lower() for k in msg.keys()]
    assert keys[:3] == ["return-path", "delivered-to", "received"], keys


def test_banner_and_ehlo_reveal_nothing(server):
    with raw(server, greet=False) as r:
        code, banner = r.greet()
        assert code == 220
        assert banner == f"220 {server.domain} ESMTP", banner
        code, ehlo = r.cmd("EHLO client.example")
        assert code == 250
        lines = ehlo.split("\n")
        assert lines[0] == f"250-{server.domain}", lines
        for text in (banner, ehlo):
            assert_no_identity_leak(text)
            assert not re.search(r"\d+\.\d+\.\d+", text.replace(server.domain, "")), text
        exts = {l[4:].split()[0].upper() for l in lines[1:]}
        assert {"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"} <= exts, exts
        code, helo = r.cmd("HELO client.example")
        assert code == 250 and helo == f"250 {server.domain}", helo
        assert r.cmd("QUIT")[0] == 221


def test_helo_address_literal_not_copied_into_received(server):
    """A client greeting with its IP address literal must not have that IP written into
    our Received header (privacy rule: no IP address in what we add)."""
    sender = f"x@{make_onion()}"
    with raw(server) as r:
        code, _ = r.cmd("EHLO [127.0.0.1]")
        assert code == 250
        assert r.cmd(f"MAIL FROM:<{sender}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{server.addr('alice')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: literal\r\n\r\nhi\r\n.\r\n")
        code, text = r.reply(timeout=20)
        assert code == 250, text
    msg = server.wait_for_messages("alice", 1)[0]
    received = norm(msg.get_all("Received")[0])
    assert f"by {server.domain}" in received
    assert not IPV4_RE.search(received), f"client IP literal copied into Received: {received!r}"


def test_multiple_recipients_one_copy_each(server):
    sender = f"x@{make_onion()}"
    with smtp(server) as c:
        refused = c.sendmail(sender, [server.addr("alice"), server.addr("bob"), server.addr("alice")],
                             simple_message(server, "two"))
        assert refused == {}
    a = server.wait_for_messages("alice", 1)
    b = server.wait_for_messages("bob", 1)
    assert len(a) == 1 and len(b) == 1
    assert a[0]["Delivered-To"] == server.addr("alice")
    assert b[0]["Delivered-To"] == server.addr("bob")
    assert a[0]["Subject"] == b[0]["Subject"] == "two"


def test_alias_and_postmaster(server):
    sender = f"x@{make_onion()}"
    with smtp(server) as c:
        assert c.sendmail(sender, [server.addr("info")], simple_message(server, "to info", to="info")) == {}
        assert c.sendmail(sender, [server.addr("postmaster")],
                          simple_message(server, "to postmaster", to="postmaster")) == {}
        # The bare <postmaster> form of RFC 5321 is accepted too.
        code, _ = c.docmd("MAIL FROM:<%s>" % sender)
        assert code == 250
        code, text = c.docmd("RCPT TO:<postmaster>")
        assert code == 250, text
        c.rset()
    bob = server.wait_for_messages("bob", 1)
    assert bob[0]["Subject"] == "to info"
    assert bob[0]["Delivered-To"].lower().startswith("info@")
    alice = server.wait_for_messages("alice", 1)
    assert alice[0]["Subject"] == "to postmaster"
    # Alias delivery did not create a Maildir named after the alias.
    assert not (server.maildir_path("info")).exists()
    assert not (server.maildir_path("postmaster")).exists()


def test_postmaster_without_alias_is_accepted(server_factory):
    srv = server_factory(users=("alice", "postmaster"))
    with smtp(srv) as c:
        code, _ = c.docmd(f"MAIL FROM:<x@{make_onion()}>")
        assert code == 250
        code, text = c.docmd(f"RCPT TO:<postmaster@{srv.domain}>")
        assert code == 250, text
        code, text = c.docmd(f"RCPT TO:<PostMaster@{srv.domain.upper()}>")
        assert code == 250, text


def test_dot_stuffing(server):
    sender = f"x@{make_onion()}"
    body_lines = [".leading dot", "..two dots", ".", "normal", " .space dot", "end."]
    body = "\r\n".join(body_lines) + "\r\n"
    with raw(server) as r:
        # Stuff by hand: every line starting with '.' gets one more.
        stuffed = "".join(("." + l if l.startswith(".") else l) + "\r\n" for l in body_lines)
        code, text = send_raw_transaction(
            r, sender, [server.addr("alice")],
            b"Subject: dots\r\n\r\n" + stuffed.encode())
        assert code == 250, text
    msg = server.wait_for_messages("alice", 1)[0]
    assert msg.get_payload() == body.replace("\r\n", "\n"), repr(msg.get_payload())
    # smtplib stuffs dots itself: same result.
    with smtp(server) as c:
        c.sendmail(sender, [server.addr("bob")], b"Subject: dots2\r\n\r\n" + body.encode())
    msg = server.wait_for_messages("bob", 1)[0]
    assert msg.get_payload() == body.replace("\r\n", "\n")


def test_8bit_utf8_body(server):
    sender = f"x@{make_onion()}"
    text = "Grüße aus Köln — ☃ 日本語 ✉\r\nçà et là\r\n"
    message = (
        "Subject: utf8\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n" + text
    ).encode("utf-8")
    with smtp(server) as c:
        assert c.has_extn("8bitmime") and c.has_extn("smtputf8")
        assert c.sendmail(sender, [server.addr("alice")], message, mail_options=["BODY=8BITMIME"]) == {}
        assert c.sendmail(sender, [server.addr("bob")], message,
                          mail_options=["BODY=8BITMIME", "SMTPUTF8"]) == {}
    for user in ("alice", "bob"):
        server.wait_for_messages(user, 1)
        raw_file = server.raw_files(user)[0]
        assert text.replace("\r\n", "\n").encode("utf-8") in raw_file
        msg = server.messages(user)[0]
        assert msg.get_payload(decode=True).decode("utf-8") == text.replace("\r\n", "\n")


def test_utf8_sender_with_smtputf8(server_factory):
    srv2 = server_factory(users=("alice",))
    sender = f"jürgen@{make_onion()}"
    with raw(srv2) as c:
        assert c.cmd("EHLO client.example")[0] == 250
        code, text = c.cmd(f"MAIL FROM:<{sender}>".encode())
        assert code == 501, f"non-ASCII sender without SMTPUTF8 must be refused: {text}"
        code, text = c.cmd(f"MAIL FROM:<{sender}> SMTPUTF8".encode())
        assert code == 250, text
        assert c.cmd(f"RCPT TO:<{srv2.addr('alice')}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send("Subject: from jürgen\r\n\r\nhallo\r\n.\r\n".encode())
        code, text = c.reply(timeout=20)
        assert code == 250, text
    srv2.wait_for_messages("alice", 1)
    raw_file = srv2.raw_files("alice")[0]
    assert f"Return-Path: <{sender}>".encode() in raw_file


def test_lf_line_endings_and_no_crlf_in_file(server):
    sender = f"x@{make_onion()}"
    with smtp(server) as c:
        c.sendmail(sender, [server.addr("alice")], b"Subject: lf\r\n\r\na\r\nb\r\n\r\nc\r\n")
    server.wait_for_messages("alice", 1)
    data = server.raw_files("alice")[0]
    assert b"\r" not in data
    assert data.endswith(b"\n\na\nb\n\nc\n"), data


def test_many_messages_one_session(server):
    sender = f"x@{make_onion()}"
    n = 30
    with smtp(server) as c:
        for i in range(n):
            assert c.sendmail(sender, [server.addr("alice")],
                              simple_message(server, f"msg {i}", sender=sender)) == {}
    msgs = server.wait_for_messages("alice", n)
    assert len(msgs) == n
    assert sorted(m["Subject"] for m in msgs) == sorted(f"msg {i}" for i in range(n))
    ids = [re.search(r"id ([0-9A-Fa-f]{16});", norm(m["Received"])).group(1) for m in msgs]
    assert len(set(ids)) == n, "queue ids must be unique"


def test_null_sender(server):
    with raw(server) as r:
        code, text = send_raw_transaction(r, "", [server.addr("alice")], b"Subject: bounce\r\n\r\nx\r\n")
        assert code == 250, text
    msg = server.wait_for_messages("alice", 1)[0]
    assert msg["Return-Path"] == "<>"
