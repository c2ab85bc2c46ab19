"""The submission port (RFC 6409): STARTTLS with the self-signed certificate `init` makes,
AUTH PLAIN/LOGIN against `smtorp passwd`, sender and recipient rules, and the privacy
hygiene of submitted mail. Drives the real binary with smtplib, swaks and raw sockets."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import re
import smtplib
import socket
import ssl
import stat
import subprocess
import time

import pytest

from conftest import IPV4_RE, Server, bad_onion, free_port, make_onion, port_open, contains_hostname

PASSWORDS = {"alice": "alice-secret-pw", "bob": "bob-other-pw"}


class SubmissionServer(Server):
    """A Server with a submission listener on a free port of 127.0.0.1."""

    def __init__(self, binary, tmp, **kwargs):
        super().__init__(binary, tmp, **kwargs)
        self.sub_port = free_port()
        text = self.config_path.read_text()
        assert "[submission]\nlisten = []" in text
        text = text.replace("[submission]\nlisten = []",
                            f'[submission]\nlisten = ["127.0.0.1:{self.sub_port}"]')
        self.config_path.write_text(text)
        self.init_output = ""

    def init(self):
        r = super().init()
        self.init_output = r.stdout.decode()
        return r

    def start(self, timeout: float = 20):
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while not port_open(self.sub_port):
            assert time.monotonic() < deadline, f"submission port not open:\n{self.log()}"
            time.sleep(0.05)
        return self

    def passwd(self, user: str, password: str | None = None, *extra):
        data = b"" if password is None else (password + "\n").encode()
        return self.cli("passwd", *extra, user, input=data)

    def client(self, tls: bool = True, login: str | None = "alice") -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.sub_port, local_hostname="client.example", timeout=15)
        c.ehlo()
        if tls:
            c.starttls(context=insecure_context())
            c.ehlo()
            if login:
                c.login(login, PASSWORDS[login])
        return c

    def cert_path(self):
        return self.data_dir / "tls" / "cert.pem"


def insecure_context() -> ssl.SSLContext:
    """Verification off: the certificate is self-signed (pinned separately below)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fingerprint_of_pem(path) -> str:
    der = ssl.PEM_cert_to_DER_cert(path.read_text())
    return hashlib.sha256(der).hexdigest()


def printed_fingerprint(text: str) -> str:
    m = re.search(r"SHA-256 fingerprint: ([0-9A-F:]{95})", text)
    assert m, text
    return m.group(1).replace(":", "").lower()


@pytest.fixture
def sub(smtorp_bin, tmp_path):
    s = SubmissionServer(smtorp_bin, tmp_path / "sub", aliases={"postmaster": "alice", "info": "bob"})
    s.init()
    for user, pw in PASSWORDS.items():
        r = s.passwd(user, pw)
        assert r.returncode == 0, r.stderr
    s.start()
    yield s
    s.kill()


def msg(server, sender: str, to: str, subject="hi", extra="", body="Hello.\r\n") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}\r\n{body}").encode()


# ------------------------------------------------------------------ the dialogue rules


def test_no_auth_before_starttls_and_mail_refused_until_auth(sub):
    c = sub.client(tls=False)
    assert c.has_extn("starttls")
    assert not c.has_extn("auth"), c.esmtp_features
    code, text = c.mail(sub.addr("alice"))
    assert code == 530, text
    code, text = c.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
    assert code in (530, 538) and b"STARTTLS" in text, text
    c.starttls(context=insecure_context())
    c.ehlo()
    assert not c.has_extn("starttls")
    assert "PLAIN" in c.esmtp_features["auth"] and "LOGIN" in c.esmtp_features["auth"]
    code, text = c.mail(sub.addr("alice"))
    assert (code, text[:5]) == (530, b"5.7.0"), text
    c.quit()


def test_wrong_password_is_refused_and_not_logged(sub):
    c = sub.client(login=None)
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        c.login("alice", "not-the-password-xyz")
    assert e.value.smtp_code == 535
    c.close()
    # Unknown users get the same answer.
    c = sub.client(login=None)
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        c.login("mallory", "whatever-pw-123")
    assert e.value.smtp_code == 535
    c.close()
    log = sub.log()
    assert "AUTH failed" in log
    assert "not-the-password-xyz" not in log and "whatever-pw-123" not in log


def test_auth_login_and_user_at_domain(sub):
    c = smtplib.SMTP("127.0.0.1", sub.sub_port, local_hostname="client.example", timeout=15)
    c.ehlo()
    c.starttls(context=insecure_context())
    c.ehlo()
    c.user, c.password = sub.addr("bob"), PASSWORDS["bob"]
    code, text = c.auth("LOGIN", c.auth_login)
    assert code == 235, text
    code, _ = c.mail(sub.addr("info"))  # an alias of bob is bob's too
    assert code == 250
    c.quit()


def test_repeated_failures_close_the_session(sub):
    c = sub.client(login=None)
    codes = []
    for i in range(3):
        try:
            code, _ = c.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0alice\0bad{i}".encode()).decode())
        except smtplib.SMTPServerDisconnected:
            break
        codes.append(code)
    assert codes[:3] == [535, 535, 535]
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        c.noop()
        c.noop()


def test_sending_as_someone_else_is_refused(sub):
    c = sub.client()
    for sender in (sub.addr("bob"), sub.addr("info"), f"alice@{make_onion()}", "alice@example.com"):
        code, text = c.mail(sender)
        assert (code, text[:5]) == (553, b"5.7.1"), (sender, text)
    with pytest.raises(smtplib.SMTPSenderRefused) as e:
        c.sendmail(sub.addr("bob"), [sub.addr("alice")], msg(sub, sub.addr("bob"), sub.addr("alice")))
    assert e.value.smtp_code == 553
    c.quit()


def test_relay_to_an_onion_stays_queued(sub):
    remote = f"carol@{make_onion()}"
    c = sub.client()
    refused = c.sendmail(sub.addr("alice"), [remote], msg(sub, sub.addr("alice"), remote))
    assert refused == {}
    c.quit()
    out = sub.queue_list().stdout.decode()
    line = next((l for l in out.splitlines() if remote in l), None)
    assert line and f"{remote} (pending" in line, out
    assert sub.addr("alice") in line


def test_local_delivery_with_header_hygiene(sub):
    extra = (
        "Date: Tue, 02 Jan 2024 01:30:00 +0200\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Thunderbird/128.3.0\r\n"
        "X-Mailer: K-9 Mail\r\n"
        "X-Originating-IP: [192.168.1.23]\r\n"
        "Received: from laptop.home (192.168.1.23) by relay;\r\n Mon, 1 Jan 2024 00:00:00 +0200\r\n"
        # A "pass" planted in our name is removed (RFC 8601 5); another service's is kept.
        f"Authentication-Results: {sub.domain.upper()}; x-onion-auth=pass smtp.mailfrom={make_onion()}\r\n"
        "Authentication-Results: other.example; spf=pass\r\n"
    )
    c = sub.client()
    c.sendmail(sub.addr("alice"), [sub.addr("bob")], msg(sub, sub.addr("alice"), sub.addr("bob"), "hygiene", extra))
    c.quit()
    m = sub.wait_for_messages("bob", 1)[0]
    raw = sub.raw_files("bob")[0]
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "hygiene"
    for name in ("User-Agent", "X-Mailer", "X-Originating-IP"):
        assert parsed[name] is None, name
    assert parsed.get_all("Date") == ["Mon, 01 Jan 2024 23:30:00 +0000"]
    mid = parsed["Message-ID"]
    assert re.fullmatch(rf"<[0-9a-f]{{32}}@{re.escape(sub.domain)}>", str(mid)), mid
    received = parsed.get_all("Received")
    assert len(received) == 1, received
    ours = re.sub(r"\s+", " ", str(received[0]))
    assert ours.startswith(f"by {sub.domain} "), ours
    assert ours.endswith("+0000"), ours
    assert "client.example" not in ours and "from" not in ours.split(";")[0], ours
    assert not IPV4_RE.search(ours), ours
    assert not IPV4_RE.search(raw.decode(errors="replace")), raw
    assert b"laptop" not in raw and b"Thunderbird" not in raw
    assert not contains_hostname(raw.decode(errors="replace")), raw
    assert m["From"] == f"<{sub.addr('alice')}>"
    assert parsed.get_all("Authentication-Results") == ["other.example; spf=pass"]


def test_missing_date_is_added_in_utc(sub):
    c = sub.client()
    c.sendmail(sub.addr("alice"), [sub.addr("alice")], msg(sub, sub.addr("alice"), sub.addr("alice"), "nodate"))
    c.quit()
    m = sub.wait_for_messages("alice", 1)[0]
    assert m["Date"].endswith("+0000"), m["Date"]
    assert m["Message-ID"].endswith(f"@{sub.domain}>")


def test_clearnet_and_malformed_onion_recipients_are_refused(sub):
    c = sub.client()
    code, _ = c.mail(sub.addr("alice"))
    assert code == 250
    code, text = c.rcpt("someone@example.com")
    assert code in (550, 553) and b"smtorp delivers only to onion addresses" in text, text
    code, text = c.rcpt(f"someone@{bad_onion(make_onion())}")
    assert code in (550, 553) and b"smtorp delivers only to onion addresses" in text, text
    code, text = c.rcpt("nobody@" + sub.domain)
    assert code == 550, text
    c.quit()


def test_starttls_command_injection_is_ignored(sub):
    """Plaintext pipelined after STARTTLS (CVE-2011-0411 class) must never run in TLS."""
    s = socket.create_connection(("127.0.0.1", sub.sub_port), timeout=10)
    f = s.makefile("rb")

    def reply(fp):
        lines = []
        while True:
            line = fp.readline()
            assert line, lines
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    assert reply(f).startswith(b"220 ")
    s.sendall(b"EHLO client.example\r\n")
    assert b"STARTTLS" in reply(f)
    s.sendall(b"STARTTLS\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    assert reply(f).startswith(b"220 2.0.0")
    tls = insecure_context().wrap_socket(s, server_hostname=None)
    tf = tls.makefile("rb")
    tls.sendall(b"NOOP\r\n")
    # The first reply inside TLS is the one to our NOOP: nothing injected ran (no 250 to
    # RSET, no 221 to QUIT).
    assert reply(tf).startswith(b"250 2.0.0")
    tls.sendall(b"MAIL FROM:<alice@" + sub.domain.encode() + b">\r\n")
    assert reply(tf).startswith(b"503 ")  # EHLO needed again after STARTTLS
    tls.sendall(b"QUIT\r\n")
    assert reply(tf).startswith(b"221 ")
    tls.close()


def test_swaks_delivers_with_tls_and_auth_plain(sub):
    r = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(sub.sub_port), "--tls",
         "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", PASSWORDS["alice"],
         "--ehlo", "client.example", "--from", sub.addr("alice"), "--to", sub.addr("bob"),
         "--header", "Subject: via swaks", "--header", "X-Mailer: swaks",
         "--timeout", "20"],
        capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    m = sub.wait_for_messages("bob", 1)[0]
    assert m["Subject"] == "via swaks"
    assert m["X-Mailer"] is None
    assert "+0000" in m["Date"]


# ------------------------------------------------------------------ TLS material


def test_certificate_fingerprint_matches_init_and_the_wire(sub):
    cert = sub.cert_path()
    key = sub.data_dir / "tls" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    fp = fingerprint_of_pem(cert)
    assert printed_fingerprint(sub.init_output) == fp, sub.init_output
    r = sub.cli("check-config")
    assert r.returncode == 0 and printed_fingerprint(r.stdout.decode()) == fp
    # What the server presents is that certificate.
    c = sub.client(login=None)
    assert hashlib.sha256(c.sock.getpeercert(binary_form=True)).hexdigest() == fp
    c.quit()
    # It names our domain and nothing else: not this machine. (Compare the decoded names:
    # the host name's bytes may occur by chance in a random onion name or key.)
    decoded = ssl._ssl._test_decode_cert(str(cert))
    names = [v for rdn in decoded["subject"] for (k, v) in rdn if k == "commonName"]
    names += [v for (k, v) in decoded.get("subjectAltName", ())]
    assert names and set(names) == {sub.domain}, decoded
    host = socket.gethostname()
    assert host not in names
    # A pinned client can verify it.
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False  # the name is an onion domain we reached as 127.0.0.1
    c = smtplib.SMTP("127.0.0.1", sub.sub_port, local_hostname="client.example", timeout=15)
    c.starttls(context=ctx)
    c.login("alice", PASSWORDS["alice"])
    c.quit()


# ------------------------------------------------------------------ passwords


def test_passwd_file_and_unknown_user(sub):
    r = sub.passwd("mallory", "pw-for-nobody")
    assert r.returncode != 0
    assert b"local user" in r.stderr, r.stderr
    path = sub.data_dir / "passwd"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_bytes()
    for pw in PASSWORDS.values():
        assert pw.encode() not in text
    assert text.count(b"$argon2id$") == 2
    assert sorted(l.split(b":", 1)[0] for l in text.splitlines()) == [b"alice", b"bob"]
    # A new password takes effect at once; the old one stops working.
    r = sub.passwd("alice", "brand-new-pw")
    assert r.returncode == 0, r.stderr
    c = sub.client(login=None)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        c.login("alice", PASSWORDS["alice"])
    c.close()
    c = sub.client(login=None)
    c.login("alice", "brand-new-pw")
    c.quit()
    # --delete removes it.
    r = sub.passwd("alice", None, "--delete")
    assert r.returncode == 0, r.stderr
    assert b"alice:" not in path.read_bytes()
    c = sub.client(login=None)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        c.login("alice", "brand-new-pw")
    c.close()
    assert sub.passwd("alice", "").returncode != 0  # empty password refused


# ------------------------------------------------------------------ the sendmail path too


def test_sendmail_gets_the_same_hygiene(sub):
    m = (b"Subject: local\nUser-Agent: mutt/2.2\nX-Mailer: cron\n"
         b"Received: from somewhere\nDate: Tue, 02 Jan 2024 01:30:00 +0200\n\nbody\n")
    r = sub.sendmail(sub.addr("alice"), input=m)
    assert r.returncode == 0, r.stderr
    got = sub.wait_for_messages("alice", 1)[0]
    assert got["User-Agent"] is None and got["X-Mailer"] is None
    import datetime
    import email.utils

    assert got["Date"].endswith(" +0000"), got["Date"]
    assert email.utils.parsedate_to_datetime(got["Date"]) == datetime.datetime(
        2024, 1, 1, 23, 30, tzinfo=datetime.timezone.utc)
    assert len(got.get_all("Received")) == 1
    assert "somewhere" not in got["Received"]
