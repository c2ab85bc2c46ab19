"""End-to-end fixtures for smtorp: run the REAL binary, talk to it with real clients and
read the Maildirs back with Python's `mailbox` module (an independent reader).

Run with:  /usr/bin/python3 -m pytest tests/
The binary: $SMTORP_BIN, else $CARGO_TARGET_DIR/debug/smtorp, else <repo>/target/debug/smtorp.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import hashlib
import mailbox
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------

def make_onion() -> str:
    """A fresh, valid v3 onion domain (56 base32 characters + .onion)."""
    pub = os.urandom(32)
    chk = hashlib.sha3_256(b".onion checksum" + pub + b"\x03").digest()[:2]
    return base64.b32encode(pub + chk + b"\x03").decode().lower() + ".onion"


def onion_of(public_key: bytes) -> str:
    """The v3 onion domain of an ed25519 public key."""
    chk = hashlib.sha3_256(b".onion checksum" + public_key + b"\x03").digest()[:2]
    return base64.b32encode(public_key + chk + b"\x03").decode().lower() + ".onion"


class OnionKey:
    """An onion service identity key made here (with OpenSSL, through `cryptography`): it
    writes C tor's `hs_ed25519_secret_key` for `[onion] key_file` and signs XONIONAUTH
    commands as docs/sender-auth.md section 4 says (an independent implementation)."""

    CTOR_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"

    def __init__(self, seed: bytes | None = None):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.seed = seed or os.urandom(32)
        self._key = Ed25519PrivateKey.from_private_bytes(self.seed)
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.onion = onion_of(self.public)

    def write_ctor_secret_key(self, path: Path) -> Path:
        """C tor's format: a 32-byte header, then SHA-512(seed) with the scalar clamped."""
        h = bytearray(hashlib.sha512(self.seed).digest())
        h[0] &= 248
        h[31] &= 127
        h[31] |= 64
        path.write_bytes(self.CTOR_HEADER + bytes(h))
        path.chmod(0o600)
        return path

    def xonionauth(self, server_onion: str, nonce_b64: str) -> str:
        """The command line (without CRLF) that authenticates this key to `server_onion`
        for a session whose EHLO showed `nonce_b64`."""
        label = server_onion[: -len(".onion")].upper()
        server_key = base64.b32decode(label)[:32]
        nonce = base64.b64decode(nonce_b64, validate=True)
        assert len(nonce) == 32
        message = b"SMTP XONIONAUTH v1\x00client\x00" + server_key + self.public + nonce
        assert len(message) == 122
        signature = self._key.sign(message)
        return f"XONIONAUTH {self.onion} {base64.b64encode(signature).decode()}"


def bad_onion(onion: str) -> str:
    """The same onion with one character flipped: the checksum no longer matches."""
    label = onion[: -len(".onion")]
    # Flip a character of the public key part (position 10), keeping it base32.
    i = 10
    c = label[i]
    flipped = "b" if c != "b" else "c"
    bad = label[:i] + flipped + label[i + 1:] + ".onion"
    assert bad != onion and len(bad) == len(onion)
    return bad


# --------------------------------------------------------------------------------------
# Binary and small helpers
# --------------------------------------------------------------------------------------

def binary_path() -> Path:
    env = os.environ.get("SMTORP_BIN")
    if env:
        return Path(env)
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        return Path(target) / "debug" / "smtorp"
    return REPO / "target" / "debug" / "smtorp"


@pytest.fixture(scope="session")
def smtorp_bin() -> Path:
    path = binary_path()
    assert path.is_file() and os.access(path, os.X_OK), (
        f"smtorp binary not found at {path}: run `cargo build -p smtorp` or set SMTORP_BIN"
    )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


# A dotted quad anywhere (IPv4 address) and the machine's host name: never in our headers.
IPV4_RE = re.compile(r"(?<![\d.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d.])")


def contains_hostname(text: str) -> bool:
    """True if the machine's host name appears in `text` as a name of its own (onion
    addresses are removed first: a short host name such as "vm" may occur inside them)."""
    host = socket.gethostname().lower()
    if not host or host == "localhost":
        return False
    cleaned = re.sub(r"[a-z2-7]{56}\.onion", "", text.lower())
    return re.search(r"(?<![a-z0-9-])" + re.escape(host) + r"(?![a-z0-9-])", cleaned) is not None


def wait_until(predicate, timeout: float = 10.0, what: str = "the condition", every: float = 0.05):
    """Polls `predicate` until it is true; fails after `timeout` seconds (for waiting on an
    event instead of sleeping a fixed time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(every)


def holds_for(predicate, seconds: float, what: str = "the condition", every: float = 0.1):
    """Asserts that `predicate` stays true for `seconds` (for "nothing more happens":
    no duplicate, no late delivery)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        time.sleep(every)
    assert predicate(), f"{what} stopped holding"


def all_files(root: Path) -> set[str]:
    """Every path (files and folders) below root, relative, as strings."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------

class Server:
    """One smtorp daemon on a private data_dir with one TCP listener on 127.0.0.1."""

    def __init__(self, binary: Path, tmp: Path, *, users=("alice", "bob"), aliases=None,
                 smtp=None, delivery=None, extra_domains=(), log_level="info",
                 key: OnionKey | None = None):
        """`key`: our onion's identity key, written for `[onion] key_file` (the server then
        signs its mail with XONIONAUTH); without one the domain is a random onion and the
        server does not sign."""
        self.binary = binary
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.data_dir = tmp / "data"
        self.config_path = tmp / "smtorp.toml"
        self.log_path = tmp / "smtorp.log"
        self.key = key
        self.domain = key.onion if key else make_onion()
        self.port = free_port()
        self.users = list(users)
        self.aliases = dict(aliases or {})
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.starts = 0
        smtp_cfg = {
            "listen": [f"127.0.0.1:{self.port}"],
            "command_timeout": "30s",
            "data_timeout": "30s",
        }
        smtp_cfg.update(smtp or {})
        delivery_cfg = {"retry_after": ["2s"], "concurrency": 8}
        delivery_cfg.update(delivery or {})
        lines = [
            f"data_dir = {toml_str(str(self.data_dir))}",
            "",
            "[onion]",
            "enabled = false",
        ]
        if key:
            key_file = key.write_ctor_secret_key(tmp / "hs_ed25519_secret_key")
            lines.append(f"key_file = {toml_str(str(key_file))}")
        lines += [
            "",
            "[smtp]",
        ]
        lines += [f"{k} = {toml_value(v)}" for k, v in smtp_cfg.items()]
        lines += [
            "",
            "[submission]",
            "listen = []",
            "",
            "[local]",
            f"domains = {toml_value([self.domain, *extra_domains])}",
            f"users = {toml_value(self.users)}",
            f"aliases = {toml_value(self.aliases)}",
            'maildir = "{data_dir}/mail/{user}"',
            "",
            "[delivery]",
        ]
        lines += [f"{k} = {toml_value(v)}" for k, v in delivery_cfg.items()]
        lines += ["", "[log]", f"level = {toml_str(log_level)}", ""]
        self.config_path.write_text("\n".join(lines))

    # --- CLI -------------------------------------------------------------------------

    def cli(self, *args, input: bytes | None = None, timeout: float = 30,
            env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        full_env.pop("RUST_LOG", None)
        full_env.pop("SMTORP_CONFIG", None)
        if env:
            full_env.update(env)
        return subprocess.run(
            [str(self.binary), "--config", str(self.config_path), *args],
            input=input if input is not None else b"",
            capture_output=True,
            timeout=timeout,
            env=full_env,
        )

    def init(self):
        r = self.cli("init")
        assert r.returncode == 0, f"init failed: {r.stdout!r} {r.stderr!r}"
        return r

    def sendmail(self, *args, input: bytes, timeout: float = 30, env=None):
        return self.cli("sendmail", *args, input=input, timeout=timeout, env=env)

    def queue_list(self) -> subprocess.CompletedProcess:
        return self.cli("queue", "list")

    # --- process ---------------------------------------------------------------------

    def start(self, timeout: float = 20):
        assert self.proc is None, "already running"
        self.starts += 1
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n===== start #{self.starts} =====\n".encode())
        self._log_file.flush()
        log_offset = self.log_path.stat().st_size
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        self.proc = subprocess.Popen(
            [str(self.binary), "--config", str(self.config_path), "run"],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise AssertionError(f"smtorp exited early with {rc}:\n{self.log()}")
            with open(self.log_path, "rb") as f:
                f.seek(log_offset)
                ready = b"smtorp ready" in f.read()
            if ready and port_open(self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"smtorp not ready within {timeout}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM; asserts a clean exit (code 0) within `timeout` seconds."""
        assert self.proc is not None, "not running"
        proc = self.proc
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            self._closed()
            raise AssertionError(f"smtorp did not stop within {timeout}s of SIGTERM:\n{self.log()}")
        self._closed()
        assert rc == 0, f"smtorp exited with {rc} after SIGTERM:\n{self.log()}"
        self.last_stop_seconds = time.monotonic() - t0
        return rc

    def kill(self):
        """SIGKILL, no questions asked."""
        if self.proc is None:
            return
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._closed()

    def restart(self):
        if self.alive():
            self.stop()
        else:
            self.kill()
        return self.start()

    def _closed(self):
        self.proc = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def peak_rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return -1

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return -1

    # --- addresses -------------------------------------------------------------------

    def addr(self, local: str) -> str:
        return f"{local}@{self.domain}"

    # --- Maildirs --------------------------------------------------------------------

    def maildir_path(self, user: str) -> Path:
        return self.data_dir / "mail" / user

    def maildir(self, user: str) -> mailbox.Maildir:
        return mailbox.Maildir(str(self.maildir_path(user)), factory=None, create=False)

    def messages(self, user: str) -> list[email.message.Message]:
        path = self.maildir_path(user)
        if not (path / "new").is_dir():
            return []
        md = self.maildir(user)
        return [md[key] for key in md.keys()]

    def count(self, user: str) -> int:
        path = self.maildir_path(user)
        if not (path / "new").is_dir():
            return 0
        return len(self.maildir(user))

    def raw_files(self, user: str) -> list[bytes]:
        """The raw bytes of every delivered file (new/ and cur/)."""
        out = []
        for sub in ("new", "cur"):
            d = self.maildir_path(user) / sub
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    if not p.name.startswith("."):
                        out.append(p.read_bytes())
        return out

    def wait_for_messages(self, user: str, n: int, timeout: float = 20) -> list[email.message.Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(user) >= n:
                # A short grace period to catch extra (duplicate) deliveries.
                time.sleep(0.2)
                return self.messages(user)
            time.sleep(0.05)
        got = self.count(user)
        raise AssertionError(
            f"{user}: {got} message(s) after {timeout}s, expected {n}\n--- log ---\n{self.log()}"
        )

    def assert_no_delivery(self, user: str, wait: float = 2.0):
        """Waits `wait` seconds (bounded) and asserts that the user's Maildir is empty."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            assert self.count(user) == 0, f"unexpected delivery to {user}: {self.raw_files(user)!r}"
            time.sleep(0.1)
        assert self.count(user) == 0

    def queue_settled(self, timeout: float = 30) -> str:
        """Waits until `queue list` reports an empty queue; returns its output."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            r = self.queue_list()
            out = r.stdout.decode(errors="replace")
            if r.returncode == 0 and "-- 0 message(s) in the queue" in out:
                return out
            time.sleep(0.2)
        raise AssertionError(f"queue not empty after {timeout}s:\n{out}\n{self.log()}")


@pytest.fixture
def server_factory(smtorp_bin, tmp_path):
    """Makes servers (init done, not started unless start=True); kills them all at teardown."""
    servers: list[Server] = []
    counter = [0]

    def make(start=True, **kwargs) -> Server:
        counter[0] += 1
        s = Server(smtorp_bin, tmp_path / f"srv{counter[0]}", **kwargs)
        servers.append(s)
        s.init()
        if start:
            s.start()
        return s

    yield make
    for s in servers:
        s.kill()


@pytest.fixture
def server(server_factory) -> Server:
    """A running server with users alice and bob, aliases postmaster->alice, info->bob."""
    return server_factory(aliases={"postmaster": "alice", "info": "bob"})


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------

def smtp(server: Server, timeout: float = 15):
    """A smtplib.SMTP connected to the server (EHLO done)."""
    import smtplib

    client = smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.example", timeout=timeout)
    client.ehlo()
    return client


class Raw:
    """A raw socket SMTP client: send bytes, read replies with timeouts."""

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.banner = None

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete reply; buffered {self.buf[:300]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"no complete reply; buffered {self.buf[:300]!r}")
        if not chunk:
            return False
        self.buf += chunk
        return True

    def reply(self, timeout: float | None = None) -> tuple[int, str]:
        """One (possibly multi-line) reply: (code, text with all lines joined by \\n)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                if not self._fill(deadline):
                    raise ConnectionError(f"closed; partial {self.buf!r}, lines {lines!r}")
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                break
        code = int(lines[-1][:3])
        return code, "\n".join(lines)

    def replies(self, n: int, timeout: float | None = None) -> list[tuple[int, str]]:
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line: str | bytes, timeout: float | None = None) -> tuple[int, str]:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def greet(self) -> tuple[int, str]:
        self.banner = self.reply()
        return self.banner

    def is_closed(self, timeout: float = 5) -> bool:
        """True if the server closes the connection (EOF or reset) within `timeout`; any
        data received before is kept in the buffer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
            self.buf += chunk
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def raw(server: Server, greet: bool = True, timeout: float = 10) -> Raw:
    r = Raw(server.port, timeout=timeout)
    if greet:
        code, text = r.greet()
        assert code == 220, text
    return r


def simple_message(server: Server, subject="hello", body="Hello Alice.\r\n", to="alice",
                   sender=None, extra_headers="") -> bytes:
    sender = sender or f"sender@{make_onion()}"
    return (
        f"From: <{sender}>\r\nTo: <{server.addr(to)}>\r\nSubject: {subject}\r\n{extra_headers}\r\n{body}"
    ).encode()


def send_raw_transaction(r: Raw, sender: str, rcpts: list[str], data: bytes) -> tuple[int, str]:
    """EHLO + MAIL + RCPTs + DATA + data + '.' over a Raw client; returns the final reply."""
    code, text = r.cmd("EHLO client.example")
    assert code == 250, text
    code, text = r.cmd(f"MAIL FROM:<{sender}>")
    assert code == 250, text
    for rcpt in rcpts:
        code, text = r.cmd(f"RCPT TO:<{rcpt}>")
        assert code == 250, text
    code, text = r.cmd("DATA")
    assert code == 354, text
    r.send(data + b".\r\n")
    return r.reply(timeout=20)


# --------------------------------------------------------------------------------------
# Local users of the machine (for the tests of local submission)
# --------------------------------------------------------------------------------------

# A user who is in [local] users of the servers these tests make, and one who is not.
LOCAL_USER = "smtorpta"
OTHER_USER = "smtorptm"


def ensure_system_user(name: str) -> int:
    """Creates a system user without a home (once) and returns its uid. Needs root."""
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        pass
    r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, f"useradd {name}: {r.stderr!r}"
    return pwd.getpwnam(name).pw_uid


@pytest.fixture(scope="session")
def system_users():
    """(local user, other user) of the machine, created once; the tests run as root."""
    assert os.geteuid() == 0, "these tests create users and must run as root"
    return ensure_system_user(LOCAL_USER), ensure_system_user(OTHER_USER)


@pytest.fixture
def public_tmp():
    """A temporary folder other users can enter (pytest's own are 0700)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="smtorp-public-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_user(user: str, argv: list[str], input: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs a command as another user of the machine (runuser), without our environment."""
    import shutil

    runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
    assert runuser, "runuser is missing (package util-linux)"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run([runuser, "-u", user, "--", *argv], input=input, capture_output=True,
                          timeout=timeout, env=env)
