"""Two ways an address or a message could be misread downstream, on every path in:

- a NUL byte in the message (`\\r\\n\\0.\\r\\n` looks like the end of data to a peer that strips
  NULs): refused with 554 5.6.0 on the onion side, on the submission port and through
  `sendmail`, never queued or relayed;
- quoted local parts (`"x>Evil:y"@B`, `"<evil@x>"@B`): kept in valid RFC 5321 form in the
  Return-Path we write and in the MAIL FROM we send to the next hop.
"""

from __future__ import annotations

import time

import pytest

from conftest import Server, make_onion, raw, send_raw_transaction
from test_submission import sub  # noqa: F401 (the fixture)

SMUGGLED = b"Subject: nul\r\n\r\nhello\r\n\x00.\r\nMAIL FROM:<x@y.onion>\r\n"


def test_nul_on_the_onion_side_is_refused(server):
    with raw(server) as r:
        code, text = send_raw_transaction(r, f"a@{make_onion()}", [server.addr("bob")], SMUGGLED)
        assert (code, text[4:9]) == (554, "5.6.0"), text
        # The session goes on.
        assert r.cmd("NOOP")[0] == 250
    server.assert_no_delivery("bob", wait=1.0)


def test_nul_through_sendmail_is_refused(server):
    r = server.sendmail(server.addr("bob"), input=b"Subject: nul\n\nbefore\x00after\n")
    assert r.returncode != 0, r
    assert b"NUL" in r.stderr, r.stderr
    server.assert_no_delivery("bob", wait=1.0)


def test_nul_on_the_submission_port_is_refused(sub):
    c = sub.client()
    code, _ = c.mail(sub.addr("alice"))
    assert code == 250
    assert c.rcpt(sub.addr("bob"))[0] == 250
    code, text = c.data(b"Subject: nul\r\n\r\nx\r\n\x00.\r\nx\r\n")
    assert (code, text[:5]) == (554, b"5.6.0"), text
    c.quit()
    sub.assert_no_delivery("bob", wait=1.0)


@pytest.mark.parametrize("local", ['"x>Evil:y"', '"<evil@x>"', '"a,b"'])
def test_quoted_senders_keep_their_quotes_in_return_path(server, local):
    sender = f"{local}@{make_onion()}"
    with raw(server) as r:
        code, text = send_raw_transaction(r, sender, [server.addr("bob")], b"Subject: quoted\r\n\r\nx\r\n")
    assert code == 250, text
    m = server.wait_for_messages("bob", 1)[0]
    assert m["Return-Path"] == f"<{sender}>"


def test_quoted_sender_reaches_the_next_hop_quoted(server_factory):
    b = server_factory(users=("bob",))
    a = server_factory(users=("alice",), delivery={"routes": {b.domain: f"127.0.0.1:{b.port}"}})
    sender = f'"x>Evil:y"@{a.domain}'
    # root is a trusted submitter and may use any sender.
    r = a.sendmail("-f", sender, b.addr("bob"), input=b"Subject: relayed quoted\n\nx\n")
    assert r.returncode == 0, r.stderr
    m = b.wait_for_messages("bob", 1, timeout=30)[0]
    assert m["Return-Path"] == f"<{sender}>"
