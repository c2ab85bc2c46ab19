"""`smtorp sendmail`: local submission through the maildrop."""

import re
import time

from conftest import all_files, bad_onion, make_onion


def maildrop_files(server):
    d = server.data_dir / "maildrop"
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def test_sendmail_with_daemon_running(server):
    msg = b"Subject: from sendmail\nTo: alice\n\nline one\nline two\n"
    r = server.sendmail(server.addr("alice"), input=msg)
    assert r.returncode == 0, r.stderr
    m = server.wait_for_messages("alice", 1)[0]
    assert m["Subject"] == "from sendmail"
    assert m.get_payload() == "line one\nline two\n"
    assert m["Delivered-To"] == server.addr("alice")
    # Added header fields.
    assert re.search(r"\+0000$", m["Date"]), m["Date"]
    assert m["Message-ID"].endswith(f"@{server.domain}>"), m["Message-ID"]
    assert m["From"], "From added"
    received = re.sub(r"\s+", " ", m["Received"])
    assert f"by {server.domain}" in received and received.endswith("+0000"), received
    assert not re.search(r"\d+\.\d+\.\d+\.\d+", received)
    # The maildrop is emptied after pickup (bounded wait).
    deadline = time.monotonic() + 10
    while maildrop_files(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert maildrop_files(server) == []
    assert b"\r" not in server.raw_files("alice")[0]


def test_sendmail_unqualified_and_multiple_recipients(server):
    r = server.sendmail("alice", "info", input=b"Subject: two\n\nhi\n")
    assert r.returncode == 0, r.stderr
    assert server.wait_for_messages("alice", 1)[0]["Subject"] == "two"
    assert server.wait_for_messages("bob", 1)[0]["Subject"] == "two"


def test_sendmail_t_reads_recipients_and_removes_bcc(server):
    msg = (
        f"To: Alice <{server.addr('alice')}>\n"
        f"Bcc: {server.addr('bob')}\n"
        "Subject: with -t\n\nbody\n"
    ).encode()
    r = server.sendmail("-t", input=msg)
    assert r.returncode == 0, r.stderr
    a = server.wait_for_messages("alice", 1)[0]
    b = server.wait_for_messages("bob", 1)[0]
    for m in (a, b):
        assert m["Subject"] == "with -t"
        assert m["Bcc"] is None, "Bcc must be removed"
    raw_b = server.raw_files("bob")[0]
    assert b"Bcc:" not in raw_b
    # bob got it although only named in Bcc.
    assert b["Delivered-To"] == server.addr("bob")


def test_sendmail_t_with_cc(server):
    msg = (f"To: {server.addr('alice')}\nCc: {server.addr('bob')}\nSubject: cc\n\nx\n").encode()
    r = server.sendmail("-t", "-i", input=msg)
    assert r.returncode == 0, r.stderr
    assert server.wait_for_messages("alice", 1)[0]["Cc"] == server.addr("bob")
    assert server.wait_for_messages("bob", 1)[0]["Subject"] == "cc"


def test_sendmail_while_daemon_stopped(server_factory):
    srv = server_factory(start=False)
    r = srv.sendmail(srv.addr("alice"), input=b"Subject: offline\n\nwaiting\n")
    assert r.returncode == 0, r.stderr
    files = maildrop_files(srv)
    assert len(files) == 1, files
    assert srv.count("alice") == 0
    srv.start()
    m = srv.wait_for_messages("alice", 1)[0]
    assert m["Subject"] == "offline"
    deadline = time.monotonic() + 10
    while maildrop_files(srv) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert maildrop_files(srv) == []
    srv.stop()


def test_sendmail_clearnet_refused(server_factory):
    srv = server_factory(start=False)
    before = all_files(srv.data_dir)
    r = srv.sendmail("bob@example.com", input=b"Subject: x\n\nno\n")
    assert r.returncode != 0
    assert b"onion" in r.stderr.lower(), r.stderr
    assert maildrop_files(srv) == []
    assert all_files(srv.data_dir) == before


def test_sendmail_clearnet_in_to_header_refused(server_factory):
    srv = server_factory(start=False)
    r = srv.sendmail("-t", input=f"To: {srv.addr('alice')}, bob@example.com\nSubject: x\n\nno\n".encode())
    assert r.returncode != 0
    assert b"onion" in r.stderr.lower(), r.stderr
    assert maildrop_files(srv) == []


def test_sendmail_malformed_onion_refused(server_factory):
    srv = server_factory(start=False)
    r = srv.sendmail(f"alice@{bad_onion(srv.domain)}", input=b"Subject: x\n\nno\n")
    assert r.returncode != 0
    assert b"onion" in r.stderr.lower(), r.stderr
    assert maildrop_files(srv) == []
    r = srv.sendmail(f"bob@{bad_onion(make_onion())}", input=b"Subject: x\n\nno\n")
    assert r.returncode != 0
    assert maildrop_files(srv) == []


def test_sendmail_unknown_local_user_refused(server_factory):
    srv = server_factory(start=False)
    r = srv.sendmail(srv.addr("nobody"), input=b"Subject: x\n\nno\n")
    assert r.returncode != 0
    assert b"nobody" in r.stderr, r.stderr
    r = srv.sendmail("nobody", input=b"Subject: x\n\nno\n")
    assert r.returncode != 0
    assert maildrop_files(srv) == []


def test_sendmail_no_recipient_is_usage_error(server_factory):
    srv = server_factory(start=False)
    r = srv.sendmail(input=b"Subject: x\n\nno\n")
    assert r.returncode != 0
    assert maildrop_files(srv) == []


def test_sendmail_f_sets_return_path(server):
    sender = f"robot@{make_onion()}"
    r = server.sendmail("-f", sender, server.addr("alice"), input=b"Subject: f\n\nx\n")
    assert r.returncode == 0, r.stderr
    m = server.wait_for_messages("alice", 1)[0]
    assert m["Return-Path"] == f"<{sender}>"
    # From is added from the envelope sender when the message has none.
    assert sender in m["From"]
    # Unqualified -f gets our domain.
    r = server.sendmail("-fcron", server.addr("bob"), input=b"Subject: f2\n\nx\n")
    assert r.returncode == 0, r.stderr
    m = server.wait_for_messages("bob", 1)[0]
    assert m["Return-Path"] == f"<cron@{server.domain}>"


def test_sendmail_keeps_existing_date_and_message_id(server):
    msg = (b"Date: Mon, 01 Jan 2024 00:00:00 +0000\nMessage-ID: <fixed@example.onion>\n"
           b"Subject: kept\n\nx\n")
    r = server.sendmail(server.addr("alice"), input=msg)
    assert r.returncode == 0, r.stderr
    m = server.wait_for_messages("alice", 1)[0]
    assert m.get_all("Date") == ["Mon, 01 Jan 2024 00:00:00 +0000"]
    assert m.get_all("Message-ID") == ["<fixed@example.onion>"]


def test_sendmail_lone_dot_ends_input_without_i(server):
    msg = b"Subject: dot\n\nbefore\n.\nafter\n"
    r = server.sendmail(server.addr("alice"), input=msg)
    assert r.returncode == 0, r.stderr
    m = server.wait_for_messages("alice", 1)[0]
    assert m.get_payload() == "before\n", repr(m.get_payload())


def test_sendmail_lone_dot_kept_with_i_and_oi(server):
    msg = b"Subject: dot\n\nbefore\n.\nafter\n..two\n"
    for flag, user in (("-i", "alice"), ("-oi", "bob")):
        r = server.sendmail(flag, server.addr(user), input=msg)
        assert r.returncode == 0, r.stderr
        m = server.wait_for_messages(user, 1)[0]
        assert m.get_payload() == "before\n.\nafter\n..two\n", (flag, repr(m.get_payload()))


def test_sendmail_body_without_header(server):
    r = server.sendmail(server.addr("alice"), input=b"just a line of text\n")
    assert r.returncode == 0, r.stderr
    m = server.wait_for_messages("alice", 1)[0]
    assert m.get_payload() == "just a line of text\n", repr(m.get_payload())
    assert m["Message-ID"].endswith(f"@{server.domain}>")


def test_sendmail_to_remote_onion_is_queued(server):
    remote = f"bob@{make_onion()}"
    r = server.sendmail(remote, input=b"Subject: remote\n\nx\n")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    out = ""
    while time.monotonic() < deadline:
        out = server.queue_list().stdout.decode()
        if remote in out:
            break
        time.sleep(0.2)
    assert remote in out, out
    assert "1 message(s)" in out
