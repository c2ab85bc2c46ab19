"""Protocol abuse over raw sockets: long lines, bare LF/CR, SMTP smuggling, limits,
pipelining, garbage, slow clients, session and error limits, odd commands."""

import contextlib
import os
import random
import re
import socket
import threading
import time

import pytest

from conftest import Raw, holds_for, make_onion, raw, send_raw_transaction, smtp


def ehlo(r):
    code, text = r.cmd("EHLO client.example")
    assert code == 250, text


def deliver_normal(server, user="alice", subject="normal after abuse"):
    """A normal message over a fresh smtplib session; asserts it arrives."""
    before = server.count(user)
    with smtp(server) as c:
        assert c.sendmail(f"x@{make_onion()}", [server.addr(user)],
                          f"Subject: {subject}\r\n\r\nfine\r\n".encode()) == {}
    msgs = server.wait_for_messages(user, before + 1)
    assert any(m["Subject"] == subject for m in msgs)


# ---------------------------------------------------------------------------------------
# Long lines
# ---------------------------------------------------------------------------------------

def test_long_command_line(server):
    with raw(server) as r:
        ehlo(r)
        code, text = r.cmd(b"NOOP " + b"x" * 595)  # 600 octets + CRLF
        assert code == 500 and "5.5.2" in text, text
        # The session goes on.
        assert r.cmd("NOOP")[0] == 250
        code, text = r.cmd("MAIL FROM:<" + "a" * 600 + "@" + make_onion() + ">")
        assert code == 500 and "5.5.2" in text, text
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        # 512 octets including CRLF is still allowed (RFC 5321 4.5.3.1.4).
        code, text = r.cmd(b"NOOP " + b"y" * (512 - 5 - 2))
        assert code == 250, text


def test_5mb_without_crlf(server):
    rss_before = server.rss_kb()
    with raw(server) as r:
        ehlo(r)
        chunk = b"A" * 65536
        sent = 0
        deadline = time.monotonic() + 60
        while sent < 5 * 1024 * 1024 and time.monotonic() < deadline:
            r.send(chunk)
            sent += len(chunk)
        assert sent >= 5 * 1024 * 1024
        r.send(b"\r\n")
        code, text = r.reply(timeout=20)
        assert code == 500 and "5.5.2" in text, text
        # Session continues.
        assert r.cmd("NOOP")[0] == 250
    rss_after = server.rss_kb()
    # The line was discarded, not buffered: no growth near 5 MB.
    assert rss_after - rss_before < 4 * 1024, (rss_before, rss_after)
    assert server.alive()
    deliver_normal(server)


def test_5mb_in_data_without_crlf(server):
    with raw(server) as r:
        ehlo(r)
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{server.addr('alice')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        for _ in range(80):
            r.send(b"B" * 65536)
        r.send(b"\r\n.\r\n")
        code, text = r.reply(timeout=30)
        assert 500 <= code < 600, text
        assert r.cmd("NOOP")[0] == 250
    server.assert_no_delivery("alice", wait=1.5)
    assert server.peak_rss_kb() < 200 * 1024, server.peak_rss_kb()
    deliver_normal(server)


def test_data_line_over_1000_octets(server):
    with raw(server) as r:
        ehlo(r)
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{server.addr('alice')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: long\r\n\r\n" + b"z" * 1200 + b"\r\nshort\r\n.\r\n")
        code, text = r.reply(timeout=20)
        assert 500 <= code < 600, text
        # 998 octets + CRLF is fine, on the same connection.
        code, text = send_raw_transaction(
            r, f"x@{make_onion()}", [server.addr("alice")],
            b"Subject: ok998\r\n\r\n" + b"w" * 998 + b"\r\n")
        assert code == 250, text
    server.wait_for_messages("alice", 1)
    holds_for(lambda: server.count("alice") == 1, 1.0, "only the good message")
    msgs = server.messages("alice")
    assert [m["Subject"] for m in msgs] == ["ok998"]
    assert msgs[0].get_payload() == "w" * 998 + "\n"


# ---------------------------------------------------------------------------------------
# Bare LF / CR and SMTP smuggling
# ---------------------------------------------------------------------------------------

def test_bare_lf_in_command(server):
    with raw(server) as r:
        ehlo(r)
        r.send(b"NOOP\n")
        code, text = r.reply()
        assert code == 521, text
        assert r.is_closed(timeout=5)
    deliver_normal(server)


def test_bare_cr_in_command(server):
    with raw(server) as r:
        ehlo(r)
        r.send(b"NO\rOP\r\n")
        code, text = r.reply()
        assert 500 <= code < 600, text
        assert r.is_closed(timeout=5)


SMUGGLING_VARIANTS = {
    "lf_dot_lf": b"\n.\n",
    "crlf_dot_lf": b"\r\n.\n",
    "lf_dot_crlf": b"\n.\r\n",
    "cr_dot_cr": b"\r.\r",
    "crlf_dot_cr": b"\r\n.\r",
    "cr_dot_crlf": b"\r.\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING_VARIANTS))
def test_smtp_smuggling(server, name):
    end = SMUGGLING_VARIANTS[name]
    outer = f"x@{make_onion()}"
    smuggled_sender = f"admin@{make_onion()}"
    payload = (
        b"Subject: outer\r\n\r\nouter body"
        + end
        + f"MAIL FROM:<{smuggled_sender}>\r\nRCPT TO:<{server.addr('bob')}>\r\nDATA\r\n".encode()
        + b"Subject: SMUGGLED\r\n\r\nsmuggled body\r\n.\r\n"
    )
    with raw(server) as r:
        ehlo(r)
        assert r.cmd(f"MAIL FROM:<{outer}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{server.addr('alice')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        r.send(payload)
        code, text = r.reply(timeout=10)
        assert code == 521, (name, text)
        assert r.is_closed(timeout=5)
        # Anything sent after must not have been answered with 250/354.
        assert b"354" not in r.buf and b"250" not in r.buf, r.buf
    server.assert_no_delivery("bob", wait=2.0)
    assert server.count("alice") == 0
    out = server.queue_list().stdout.decode()
    assert "0 message(s)" in out, out


def test_bare_cr_in_data(server):
    with raw(server) as r:
        ehlo(r)
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{server.addr('alice')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: cr\r\n\r\nline with a bare\rCR inside\r\n.\r\n")
        code, text = r.reply(timeout=10)
        assert code == 521, text
        assert r.is_closed(timeout=5)
    server.assert_no_delivery("alice", wait=1.5)


def test_smuggling_after_valid_end_is_pipelined_not_smuggled(server):
    """A real <CRLF>.<CRLF> followed by a pipelined transaction is legitimate: both arrive."""
    with raw(server) as r:
        ehlo(r)
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{server.addr('alice')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: first\r\n\r\nA\r\n.\r\n"
               + f"MAIL FROM:<y@{make_onion()}>\r\nRCPT TO:<{server.addr('bob')}>\r\nDATA\r\n".encode())
        replies = r.replies(4, timeout=20)
        assert [c for c, _ in replies] == [250, 250, 250, 354], replies
        r.send(b"Subject: second\r\n\r\nB\r\n.\r\n")
        assert r.reply(timeout=20)[0] == 250
    assert server.wait_for_messages("alice", 1)[0]["Subject"] == "first"
    assert server.wait_for_messages("bob", 1)[0]["Subject"] == "second"


# ---------------------------------------------------------------------------------------
# Sizes and recipients
# ---------------------------------------------------------------------------------------

def test_size_parameter_too_big(server):
    with raw(server) as r:
        ehlo(r)
        code, text = r.cmd(f"MAIL FROM:<x@{make_onion()}> SIZE=999999999")
        assert code == 552, text
        assert "5.3.4" in text
        code, text = r.cmd(f"MAIL FROM:<x@{make_onion()}> SIZE=1000")
        assert code == 250, text


def test_message_over_max_size(server_factory):
    srv = server_factory(smtp={"max_message_size": 10000})
    with raw(srv) as r:
        code, text = r.cmd("EHLO client.example")
        assert "SIZE 10000" in text, text
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{srv.addr('alice')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        big = b"Subject: big\r\n\r\n" + (b"0123456789" * 70 + b"\r\n") * 30  # ~21 KB
        r.send(big + b".\r\n")
        code, text = r.reply(timeout=20)
        assert code == 552 and "5.3.4" in text, text
        # A normal message on the same connection works.
        code, text = send_raw_transaction(r, f"x@{make_onion()}", [srv.addr("alice")],
                                          b"Subject: small\r\n\r\nsmall\r\n")
        assert code == 250, text
    srv.wait_for_messages("alice", 1)
    holds_for(lambda: srv.count("alice") == 1, 1.0, "only the small message")
    assert [m["Subject"] for m in srv.messages("alice")] == ["small"]


def test_too_many_recipients(server_factory):
    srv = server_factory(users=("alice", "bob", "carol", "dave"), smtp={"max_recipients": 3})
    with raw(srv) as r:
        ehlo(r)
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        for u in ("alice", "bob", "carol"):
            assert r.cmd(f"RCPT TO:<{srv.addr(u)}>")[0] == 250
        code, text = r.cmd(f"RCPT TO:<{srv.addr('dave')}>")
        assert code == 452 and "4.5.3" in text, text
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: three\r\n\r\nx\r\n.\r\n")
        assert r.reply(timeout=20)[0] == 250
    for u in ("alice", "bob", "carol"):
        assert srv.wait_for_messages(u, 1)[0]["Subject"] == "three"
    holds_for(lambda: srv.count("dave") == 0, 0.5, "nothing for dave")


# ---------------------------------------------------------------------------------------
# Pipelining
# ---------------------------------------------------------------------------------------

def test_pipelining(server):
    with raw(server) as r:
        ehlo(r)
        r.send(
            f"MAIL FROM:<x@{make_onion()}>\r\nRCPT TO:<{server.addr('alice')}>\r\n"
            f"RCPT TO:<{server.addr('bob')}>\r\nDATA\r\n".encode()
        )
        replies = r.replies(4, timeout=10)
        assert [c for c, _ in replies] == [250, 250, 250, 354], replies
        r.send(b"Subject: piped\r\n\r\npipelined\r\n.\r\nQUIT\r\n")
        code, text = r.reply(timeout=20)
        assert code == 250, text
        assert r.reply()[0] == 221
    assert server.wait_for_messages("alice", 1)[0]["Subject"] == "piped"
    assert server.wait_for_messages("bob", 1)[0]["Subject"] == "piped"


def test_pipelining_with_a_refused_recipient(server):
    with raw(server) as r:
        r.send(
            f"EHLO c\r\nMAIL FROM:<x@{make_onion()}>\r\nRCPT TO:<nobody@{server.domain}>\r\n"
            f"RCPT TO:<{server.addr('alice')}>\r\nDATA\r\n".encode()
        )
        replies = r.replies(5, timeout=10)
        assert [c for c, _ in replies] == [250, 250, 550, 250, 354], replies
        r.send(b"Subject: half\r\n\r\nx\r\n.\r\n")
        assert r.reply(timeout=20)[0] == 250
    assert server.wait_for_messages("alice", 1)[0]["Subject"] == "half"


# ---------------------------------------------------------------------------------------
# Garbage
# ---------------------------------------------------------------------------------------

REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -]")


def _garbage_session(port, rnd: random.Random, problems: list):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as e:
        problems.append(f"connect: {e}")
        return
    try:
        s.settimeout(5)
        banner = b""
        while b"\r\n" not in banner:
            chunk = s.recv(4096)
            if not chunk:
                break
            banner += chunk
        if not banner.startswith(b"220 ") and not banner.startswith(b"421 "):
            problems.append(f"banner {banner!r}")
            return
        kind = rnd.random()
        if kind < 0.5:
            data = rnd.randbytes(4096)
        elif kind < 0.8:
            # Printable junk lines with proper CRLF: exercises the command parser.
            words = ["MAIL", "RCPT", "DATA", "EHLO", "FROM:<", "TO:<", ">", "@", ".onion",
                     "SIZE=", "BODY=8BITMIME", "\x00", "\xff", "..", "<>", ":", "  ", "RSET"]
            lines = []
            for _ in range(60):
                lines.append("".join(rnd.choice(words) for _ in range(rnd.randint(1, 8))))
            data = ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")[:4096]
        else:
            # Valid start, then binary DATA junk.
            data = (f"EHLO x\r\nMAIL FROM:<a@{make_onion()}>\r\nDATA\r\n").encode() + rnd.randbytes(3000)
        try:
            s.sendall(data)
        except OSError:
            return  # The server may have closed already: fine.
        received = b""
        s.settimeout(1.0)
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not chunk:
                break
            received += chunk
        for line in received.split(b"\r\n"):
            if line and not REPLY_LINE.match(line):
                problems.append(f"not a reply line: {line[:100]!r}")
    finally:
        s.close()


def test_garbage_never_kills_the_server(server):
    rnd = random.Random(int.from_bytes(os.urandom(8), "big"))
    print("garbage seed state", rnd.getstate()[1][0])
    problems: list = []
    deadline = time.monotonic() + 25
    done = 0
    lock = threading.Lock()

    def worker(seed):
        nonlocal done
        wr = random.Random(seed)
        while time.monotonic() < deadline:
            with lock:
                if done >= 200:
                    return
                done += 1
            _garbage_session(server.port, wr, problems)

    threads = [threading.Thread(target=worker, args=(rnd.random(),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads)
    assert done >= 50, f"only {done} garbage sessions ran"
    assert server.alive(), server.log()
    assert not problems, problems[:10]
    deliver_normal(server)
    # Garbage sessions delivered nothing to bob.
    assert server.count("bob") == 0


# ---------------------------------------------------------------------------------------
# Timeouts, sessions, errors
# ---------------------------------------------------------------------------------------

def test_idle_client_gets_421(server_factory):
    srv = server_factory(smtp={"command_timeout": "2s"})
    with raw(srv) as r:
        ehlo(r)
        t0 = time.monotonic()
        code, text = r.reply(timeout=8)
        waited = time.monotonic() - t0
        assert code == 421, text
        assert 1.5 <= waited <= 6, waited
        assert r.is_closed(timeout=3)
    # A client that keeps talking is not cut off.
    with raw(srv) as r:
        for _ in range(3):
            time.sleep(1.2)
            assert r.cmd("NOOP")[0] == 250


def test_idle_in_data_gets_421(server_factory):
    srv = server_factory(smtp={"command_timeout": "30s", "data_timeout": "2s"})
    with raw(srv) as r:
        ehlo(r)
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        assert r.cmd(f"RCPT TO:<{srv.addr('alice')}>")[0] == 250
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: half\r\n\r\nhalf a mess")
        code, text = r.reply(timeout=8)
        assert code == 421, text
        assert r.is_closed(timeout=3)
    srv.assert_no_delivery("alice", wait=1)


@contextlib.contextmanager
def every_place_and_the_line_taken(srv, n: int):
    """`n` sessions holding every place, just active (none may be closed for a newcomer:
    that takes a second of idleness), and `n` newcomers in line behind them (no greeting
    yet). Yields (held, waiting); closes them all at the end."""
    held = [raw(srv) for _ in range(n)]
    waiting = []
    try:
        for r in held:
            assert r.cmd("NOOP")[0] == 250
        waiting = [Raw(srv.port) for _ in range(n)]
        yield held, waiting
    finally:
        for r in held + waiting:
            r.close()


def test_max_sessions(server_factory):
    """With every place taken by sessions that are not idle, newcomers wait in line for a
    place (no greeting yet), first come first served, up to `max_sessions` of them; one
    more is told 421 at once; one in line gets its greeting when a place comes free, and
    the others 421 when their wait (`wait_for_session`, 3 s here) is over."""
    srv = server_factory(smtp={"max_sessions": 3, "wait_for_session": "3s"})
    with every_place_and_the_line_taken(srv, 3) as (held, waiting):
        with Raw(srv.port) as seventh:
            code, text = seventh.reply(timeout=3)
            assert code == 421, text
            assert "4.3.2" in text
            assert seventh.is_closed(timeout=5)
        for w in waiting:
            with pytest.raises(TimeoutError):
                w.reply(timeout=0.3)
        # The held sessions still work.
        for r in held:
            assert r.cmd("NOOP")[0] == 250
        # One leaves: its place goes to the first in line.
        held.pop().cmd("QUIT")
        code, text = waiting[0].reply(timeout=5)
        assert code == 220, text
        assert waiting[0].cmd("NOOP")[0] == 250
        # The others' wait runs out.
        for w in waiting[1:]:
            code, text = w.reply(timeout=15)
            assert code == 421 and "4.3.2" in text, text


def test_sigterm_with_newcomers_in_line(server_factory):
    """Every place held and the line full: SIGTERM still stops the daemon at once (clean
    exit), and those in line are told 421 rather than left hanging."""
    srv = server_factory(smtp={"max_sessions": 2, "wait_for_session": "60s"})
    with every_place_and_the_line_taken(srv, 2) as (_, waiting):
        for w in waiting:
            with pytest.raises(TimeoutError):
                w.reply(timeout=0.3)
        srv.stop(timeout=10)
        for w in waiting:
            code, text = w.reply(timeout=5)
            assert code == 421 and "4.3.2" in text, text


def test_max_errors(server_factory):
    srv = server_factory(smtp={"max_errors": 4})
    with raw(srv) as r:
        ehlo(r)
        codes = []
        for i in range(3):
            codes.append(r.cmd(f"BOGUS{i}")[0])
        assert codes == [500, 500, 500]
        r.send(b"BOGUS3\r\n")
        assert r.reply()[0] == 500
        code, text = r.reply()
        assert code == 421, text
        assert r.is_closed(timeout=5)


def test_unknown_vrfy_help(server):
    with raw(server) as r:
        ehlo(r)
        code, text = r.cmd("XYZZY")
        assert code == 500, text
        code, text = r.cmd(f"VRFY alice")
        assert code == 252, text
        code, text = r.cmd(f"VRFY nobody")
        assert code == 252, text  # never tells which users exist
        code, text = r.cmd("HELP")
        assert code == 214, text
        assert "smtorp" not in text.lower()
        code, text = r.cmd("EXPN postmaster")
        assert 500 <= code < 600, text
        code, text = r.cmd("STARTTLS")
        assert 500 <= code < 600, text
        code, text = r.cmd("AUTH PLAIN AGlhAHg=")
        assert 500 <= code < 600, text
        assert r.cmd("NOOP")[0] == 250
        assert r.cmd("QUIT")[0] == 221
        assert r.is_closed()


def test_sequence_errors(server):
    with raw(server) as r:
        code, text = r.cmd(f"MAIL FROM:<x@{make_onion()}>")
        assert code == 503, f"MAIL before EHLO: {text}"
        ehlo(r)
        assert r.cmd(f"RCPT TO:<{server.addr('alice')}>")[0] == 503
        assert r.cmd("DATA")[0] == 503
        assert r.cmd(f"MAIL FROM:<x@{make_onion()}>")[0] == 250
        assert r.cmd(f"MAIL FROM:<y@{make_onion()}>")[0] == 503  # nested MAIL
        assert r.cmd("DATA")[0] == 503  # no RCPT yet
        assert r.cmd("RSET")[0] == 250
        assert r.cmd(f"RCPT TO:<{server.addr('alice')}>")[0] == 503  # RSET forgot MAIL
    server.assert_no_delivery("alice", wait=0.5)


def test_syntax_errors(server):
    with raw(server) as r:
        ehlo(r)
        for line in ("MAIL FROM:x", "MAIL FROM:<no-at-sign>", "MAIL TO:<a@b>", "EHLO"):
            code, text = r.cmd(line)
            assert 500 <= code < 600, (line, text)
        assert r.cmd("NOOP")[0] == 250


def test_server_survives_abrupt_disconnects(server):
    for i in range(30):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if i % 3 == 0:
            s.sendall(f"EHLO a\r\nMAIL FROM:<x@{make_onion()}>\r\nRCPT TO:<{server.addr('alice')}>\r\nDATA\r\nSubject: cut\r\n\r\nhalf".encode())
        elif i % 3 == 1:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    assert server.alive()
    server.assert_no_delivery("alice", wait=1)
    deliver_normal(server)
    assert [m["Subject"] for m in server.messages("alice")] == ["normal after abuse"]
