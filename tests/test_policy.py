"""Recipient policy: no open relay, onion checks, unknown users, path tricks."""

import pytest

from conftest import all_files, bad_onion, make_onion, raw


def open_transaction(r, sender=None):
    assert r.cmd("EHLO client.example")[0] == 250
    code, text = r.cmd(f"MAIL FROM:<{sender or 'x@' + make_onion()}>")
    assert code == 250, text


def test_relay_to_clearnet_refused(server):
    with raw(server) as r:
        open_transaction(r)
        for rcpt in ("bob@example.com", "alice@localhost", "root@gmail.com"):
            code, text = r.cmd(f"RCPT TO:<{rcpt}>")
            assert code == 550, (rcpt, text)
            assert "5.7.1" in text, (rcpt, text)
        # No accepted recipient: DATA is a sequence error.
        assert r.cmd("DATA")[0] == 503


def test_relay_to_other_onion_refused(server):
    other = make_onion()
    with raw(server) as r:
        open_transaction(r)
        code, text = r.cmd(f"RCPT TO:<alice@{other}>")
        assert code == 550 and "5.7.1" in text, text
        code, text = r.cmd(f"RCPT TO:<x@{other.upper()}>")
        assert code == 550 and "5.7.1" in text, text


def test_unknown_user_refused(server):
    with raw(server) as r:
        open_transaction(r)
        for local in ("carol", "root", "alice2", "mailer-daemon"):
            code, text = r.cmd(f"RCPT TO:<{local}@{server.domain}>")
            assert code == 550 and "5.1.1" in text, (local, text)
        # Case-insensitive for known users.
        code, text = r.cmd(f"RCPT TO:<ALICE@{server.domain.upper()}>")
        assert code == 250, text


def test_malformed_onion_refused(server):
    bad = bad_onion(server.domain)
    with raw(server) as r:
        open_transaction(r)
        code, text = r.cmd(f"RCPT TO:<alice@{bad}>")
        assert code == 501, text
        assert "5.1.3" in text and "onion" in text.lower(), text
        # Too short, v2-style and bogus onions too.
        for dom in ("abcdefghijklmnop.onion", "onion", "x.onion", "a" * 56 + ".onion"):
            code, text = r.cmd(f"RCPT TO:<alice@{dom}>")
            assert code == 501 and "onion" in text.lower(), (dom, text)
        # A malformed onion sender is refused as well.
        assert r.cmd("RSET")[0] == 250
        code, text = r.cmd(f"MAIL FROM:<x@{bad_onion(make_onion())}>")
        assert code == 501 and "onion" in text.lower(), text


def test_address_literal_refused(server):
    with raw(server) as r:
        open_transaction(r)
        for rcpt in ("x@[127.0.0.1]", "alice@[127.0.0.1]", "postmaster@[IPv6:::1]"):
            code, text = r.cmd(f"RCPT TO:<{rcpt}>")
            assert 500 <= code < 600, (rcpt, code, text)


PATH_TRICKS = [
    b'"../../etc/passwd"@{d}',
    b"../../etc/passwd@{d}",
    b"a/b@{d}",
    b"alice/../bob@{d}",
    b"..@{d}",
    b".alice@{d}",
    b"alice.@{d}",
    b"alice\\@{d}",
    b"alice\x00@{d}",
    b"alice\x01@{d}",
    b"alice%2f..@{d}",
    b"./alice@{d}",
    b"new@{d}",
    b"tmp@{d}",
]


def test_path_tricks_refused_and_nothing_created(server):
    before = all_files(server.data_dir)
    results = []
    for trick in PATH_TRICKS:
        rcpt = trick.replace(b"{d}", server.domain.encode())
        # One session per address: the error limit must not cut the list short.
        with raw(server) as r:
            open_transaction(r)
            r.send(b"RCPT TO:<" + rcpt + b">\r\n")
            try:
                code, text = r.reply()
            except ConnectionError:
                results.append((rcpt, None, "closed without a reply"))
                continue
            results.append((rcpt, code, text))
            # Still no valid recipient: DATA is refused.
            code, text = r.cmd("DATA")
            assert code == 503, (rcpt, text)
    for rcpt, code, text in results:
        assert code is not None and 500 <= code < 600, (rcpt, code, text)
    # Nothing appeared in the data directory but queue internals (sled files may change).
    after = all_files(server.data_dir)
    new = {p for p in after - before if not p.startswith("queue")}
    assert not new, f"files created by path tricks: {sorted(new)}"
    assert not server.data_dir.parent.joinpath("etc").exists()
    for user in ("alice", "bob"):
        assert server.count(user) == 0


def test_path_tricks_in_sender_do_not_matter(server):
    """A hostile sender local part is refused or harmless; the message never escapes."""
    before = all_files(server.data_dir)
    with raw(server) as r:
        assert r.cmd("EHLO client.example")[0] == 250
        for sender in ("../../x@" + make_onion(), "a/b@" + make_onion()):
            code, text = r.cmd(f"MAIL FROM:<{sender}>")
            assert 500 <= code < 600, (sender, text)
    after = all_files(server.data_dir)
    assert not {p for p in after - before if not p.startswith("queue")}


@pytest.mark.parametrize("domain_kind", ["clearnet", "bad_onion", "unknown_user"])
def test_refusal_does_not_deliver(server, domain_kind):
    rcpt = {
        "clearnet": "alice@example.com",
        "bad_onion": f"alice@{bad_onion(server.domain)}",
        "unknown_user": f"nobody@{server.domain}",
    }[domain_kind]
    import smtplib

    from conftest import smtp

    with smtp(server) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
            c.sendmail(f"x@{make_onion()}", [rcpt], b"Subject: no\r\n\r\nno\r\n")
        code, _ = exc.value.recipients[rcpt]
        assert 500 <= code < 600
    server.assert_no_delivery("alice", wait=1.0)
    out = server.queue_list().stdout.decode()
    assert "0 message(s)" in out, out
