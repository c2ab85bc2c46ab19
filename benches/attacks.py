#!/usr/bin/env python3
"""The attacks of issue #9 against a given smtorp binary: memory, sessions and passwords.

Each attack runs against a fresh daemon (its own data_dir; the TCP listener of
tests/conftest.py's `Server` with onion-side rules, plus the submission port for the AUTH
attacks), so that the daemon's peak RSS (VmHWM from /proc) belongs to that attack alone.
For each attack it prints the RSS before, the peak, the RSS after the attack (once the
attacking clients are gone, to show whether memory is given back), what the attacking
sessions were answered, and what a legitimate client got during the attack.

    cargo build --release -p smtorp
    /usr/bin/python3 benches/attacks.py --bin $CARGO_TARGET_DIR/release/smtorp

The same script measures an older binary (--bin PATH): it writes only configuration keys
that both know. Attacks (--only NAME,NAME; all by default):

  big         --sessions sessions each send a --size-mib MiB message as fast as they can
  slow        the same at --slow-rate-kb KB/s per session
  stall       --sessions sessions stop inside DATA at --stall-mib MiB and stay (at most
              --stall-hold s), then leave
  auth        --auth-conc concurrent failed AUTH PLAIN on the submission port, --auth-rounds
              rounds, each connection from its own loopback address (127.0.1.x), so that no
              per-address budget hides the cost of the checks
  bob         --bob-conc concurrent AUTH for bob from 127.0.0.1, all wrong but one
  alice       --alice-wrong wrong passwords for alice from 127.0.0.1, one after the other;
              then alice's right password from 127.0.0.1 and from 127.0.0.2
  slowloris   --sessions sessions send 1 byte every --drip s inside a command line, for
              --slowloris-for s
  slowdata    the same inside DATA
  flood       --flood connections at once, held silent for --flood-hold s

A legitimate client (EHLO, MAIL, RCPT, DATA of 1 KB, QUIT) connects during each session
attack; its outcome is reported. Every attack is bounded in time (--attack-timeout).
Needs /usr/bin/python3 (3.11+, with pytest installed: tests/conftest.py imports it).
Run by hand; not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import Server, make_onion  # noqa: E402
from test_submission import SubmissionServer  # noqa: E402

MIB = 1024 * 1024
PASSWORDS = {"alice": "alice-secret-pw", "bob": "bob-other-pw"}
LINE = b"x" * 76 + b"\r\n"
BLOCK = LINE * (65536 // len(LINE))  # 65520 bytes of message text


# --------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------

def proc_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return -1


def mb(kb: int) -> str:
    if kb < 0:
        return "?"
    if kb >= 1024 * 1024:
        return f"{kb / 1024 / 1024:.2f} GB"
    return f"{kb / 1024:.1f} MB"


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Sampler:
    """Samples the daemon's VmRSS every `every` seconds (for the peak's timing and the
    RSS at chosen moments); VmHWM gives the true peak."""

    def __init__(self, pid: int, every: float = 0.25):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.task: asyncio.Task | None = None
        self.t0 = time.monotonic()

    async def _run(self):
        while True:
            self.samples.append((time.monotonic() - self.t0, proc_kb(self.pid, "VmRSS")))
            await asyncio.sleep(self.every)

    def start(self):
        self.task = asyncio.create_task(self._run())

    async def stop(self):
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    def now(self) -> int:
        return proc_kb(self.pid, "VmRSS")


# --------------------------------------------------------------------------------------
# A small asyncio SMTP client
# --------------------------------------------------------------------------------------

class Closed(Exception):
    pass


class Client:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str | None = None, timeout: float = 15) -> "Client":
        local = (source, 0) if source else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=local, limit=1 << 20), timeout)
        return cls(reader, writer)

    async def reply(self, timeout: float = 30) -> tuple[int, str]:
        lines = []
        while True:
            try:
                line = await asyncio.wait_for(self.reader.readline(), timeout)
            except asyncio.TimeoutError:
                raise  # an OSError too, but no close: callers report "no answer"
            except (ConnectionError, OSError) as e:
                raise Closed(str(e)) from e
            if not line:
                raise Closed("EOF")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                break
        try:
            code = int(lines[-1][:3])
        except ValueError:
            code = 0
        return code, " ".join(lines)

    async def send(self, data: bytes):
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            raise Closed(str(e)) from e

    async def cmd(self, line: str, timeout: float = 30) -> tuple[int, str]:
        await self.send(line.encode() + b"\r\n")
        return await self.reply(timeout)

    async def starttls(self, timeout: float = 30):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await asyncio.wait_for(self.writer.start_tls(ctx), timeout)

    async def wait_closed_by_peer(self, until: float) -> tuple[str, float] | None:
        """Reads until the server closes the connection or `until` (monotonic) passes.
        Returns (last reply line, when) if the server closed it, else None."""
        last = ""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return None
            try:
                line = await asyncio.wait_for(self.reader.readline(), left)
            except asyncio.TimeoutError:
                return None
            except (ConnectionError, OSError):
                return (last or "reset", time.monotonic())
            if not line:
                return (last or "EOF", time.monotonic())
            last = line.decode("utf-8", "replace").strip()[:40]

    def close(self):
        try:
            self.writer.transport.abort()
        except Exception:
            pass


def short(text: str) -> str:
    """'421 4.7.0 host Too many...' -> '421 4.7.0'."""
    parts = text.split()
    if len(parts) >= 2 and parts[1][:1].isdigit() and "." in parts[1]:
        return f"{parts[0]} {parts[1]}"
    return parts[0] if parts else text


GREETING_WAIT = 120


async def legitimate(port: int, domain: str, timeout: float = 30) -> str:
    """One ordinary transaction; what happened, in a few words."""
    t0 = time.monotonic()
    step = "connect"
    c = None
    try:
        c = await Client.connect(port, timeout=timeout)
        step = "greeting"
        # A newcomer that finds every session busy waits in line without a greeting
        # (`[smtp] wait_for_session`, 60 s); an MTA waits 5 minutes for one (RFC 5321
        # 4.5.3.2), so the client waits longer here than for the other replies.
        code, text = await c.reply(max(timeout, GREETING_WAIT))
        if code != 220:
            return f"{short(text)} at the greeting"
        body = (f"From: <friend@{make_onion()}>\r\nTo: <alice@{domain}>\r\nSubject: legit\r\n\r\n"
                ).encode() + LINE * 13
        for step, line, want in (("EHLO", "EHLO legit.example", 250),
                                 ("MAIL", f"MAIL FROM:<friend@{make_onion()}>", 250),
                                 ("RCPT", f"RCPT TO:<alice@{domain}>", 250),
                                 ("DATA", "DATA", 354)):
            code, text = await c.cmd(line, timeout)
            if code != want:
                return f"{short(text)} at {step}"
        step = "end of DATA"
        await c.send(body + b".\r\n")
        code, text = await c.reply(timeout)
        took = time.monotonic() - t0
        if code != 250:
            return f"{short(text)} at end of DATA"
        try:
            await c.cmd("QUIT", 5)
        except (Closed, asyncio.TimeoutError):
            pass
        return f"250 in {took:.2f} s"
    except asyncio.TimeoutError:
        waited = max(timeout, GREETING_WAIT) if step == "greeting" else timeout
        return f"no answer within {waited:.0f} s at {step}"
    except (Closed, ConnectionError, OSError) as e:
        return f"closed at {step} ({str(e)[:30]})"
    finally:
        if c:
            c.close()


# --------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------

SMTP_CFG = {
    # The production defaults (conftest shortens them for tests), and room for 25 MiB.
    "command_timeout": "5m",
    "data_timeout": "10m",
    "max_message_size": 30 * MIB,
}


def make_server(binary: Path, tmp: Path, submission: bool) -> Server:
    cls = SubmissionServer if submission else Server
    s = cls(binary, tmp, smtp=dict(SMTP_CFG))
    s.init()
    if submission:
        for user, pw in PASSWORDS.items():
            r = s.passwd(user, pw)
            assert r.returncode == 0, r.stderr
    s.start(timeout=60)
    return s


def stop_server(s: Server):
    try:
        s.stop(timeout=20)
    except AssertionError as e:
        print(f"   (stop: {str(e).splitlines()[0]})")
        s.kill()


# --------------------------------------------------------------------------------------
# The attacks. Each returns a dict: outcome (attacking sessions), legit (list of str),
# marks (name -> RSS kB at a moment), and leaves its clients closed.
# --------------------------------------------------------------------------------------

async def send_message_text(c: Client, size: int, rate: float | None):
    """Sends `size` bytes of message text (after the header), at `rate` bytes/s if set."""
    sent = 0
    t0 = time.monotonic()
    while sent < size:
        chunk = BLOCK if size - sent >= len(BLOCK) else LINE * max(1, (size - sent) // len(LINE))
        await c.send(chunk)
        sent += len(chunk)
        if rate:
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


async def open_data(port: int, domain: str, i: int) -> Client:
    c = await Client.connect(port)
    code, text = await c.reply()
    if code != 220:
        c.close()
        raise Closed(short(text) + " at the greeting")
    for line, want in (("EHLO attacker.example", 250), (f"MAIL FROM:<a{i}@{make_onion()}>", 250),
                       (f"RCPT TO:<alice@{domain}>", 250), ("DATA", 354)):
        code, text = await c.cmd(line)
        if code != want:
            c.close()
            raise Closed(f"{short(text)} at {line.split()[0]}")
    await c.send(f"From: <a{i}@x.onion>\r\nTo: <alice@{domain}>\r\nSubject: attack {i}\r\n\r\n".encode())
    return c


async def attack_big(s: Server, a, rate: float | None) -> dict:
    size = int(a.size_mib * MIB)
    deadline = time.monotonic() + a.attack_timeout
    results: list[str] = []

    async def one(i):
        c = None
        try:
            c = await open_data(s.port, s.domain, i)
            await send_message_text(c, size, rate)
            await c.send(b".\r\n")
            code, text = await c.reply(timeout=max(1, deadline - time.monotonic()))
            results.append(short(text))
        except Closed as e:
            results.append(f"closed: {str(e)[:20]}")
        except asyncio.TimeoutError:
            results.append("no answer")
        finally:
            if c:
                c.close()

    t0 = time.monotonic()
    legit = asyncio.create_task(legit_after(s, a.probe_after))
    await run_clients(one, a.sessions, a.attack_timeout)
    took = time.monotonic() - t0
    return {"outcome": dict(Counter(results)), "took_s": round(took, 1), "legit": [await legit]}


async def attack_stall(s: Server, a, sampler: Sampler) -> dict:
    size = int(a.stall_mib * MIB)
    clients: list[Client] = []
    refused: list[str] = []

    async def one(i):
        try:
            c = await open_data(s.port, s.domain, i)
            await send_message_text(c, size, None)
            clients.append(c)
        except Closed as e:
            refused.append(str(e)[:20])
        except asyncio.TimeoutError:
            refused.append("no answer")

    t0 = time.monotonic()
    await run_clients(one, a.sessions, a.attack_timeout)
    sent_s = time.monotonic() - t0
    held_from = time.monotonic()
    until = held_from + a.stall_hold
    legit = asyncio.create_task(legit_after(s, a.probe_after))
    closed = await asyncio.gather(*(c.wait_closed_by_peer(until) for c in clients))
    rss_held = sampler.now()
    by_server = [(r[0], r[1] - held_from) for r in closed if r]
    for c in clients:
        c.close()
    outcome = {"stalled": len(clients), "refused": dict(Counter(refused)),
               "closed by the server": len(by_server)}
    if by_server:
        outcome["closed after (s, median)"] = round(statistics.median(t for _, t in by_server), 1)
        outcome["closing replies"] = dict(Counter(short(r) for r, _ in by_server))
    return {"outcome": outcome, "took_s": round(sent_s, 1), "legit": [await legit],
            "marks": {"RSS at the end of the stall, before the clients leave": rss_held}}


async def run_clients(one, n: int, timeout: float) -> None:
    """Runs `one(i)` for i in range(n) at once; those still running after `timeout` are
    cancelled."""
    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.wait(tasks, timeout=timeout)
    for t in tasks:
        t.cancel()


async def legit_after(s: Server, delay: float) -> str:
    await asyncio.sleep(delay)
    return await legitimate(s.port, s.domain)


async def auth_attempt(port: int, user: str, password: str, source: str | None) -> str:
    c = None
    try:
        c = await Client.connect(port, source=source, timeout=60)
        code, text = await c.reply(60)
        if code != 220:
            return short(text)
        await c.cmd("EHLO client.example", 60)
        code, text = await c.cmd("STARTTLS", 60)
        if code != 220:
            return short(text)
        await c.starttls(60)
        await c.cmd("EHLO client.example", 60)
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, text = await c.cmd(f"AUTH PLAIN {token}", 120)
        try:
            await c.cmd("QUIT", 5)
        except (Closed, asyncio.TimeoutError):
            pass
        return str(code)
    except asyncio.TimeoutError:
        return "no answer"
    except (Closed, ConnectionError, OSError, ssl.SSLError) as e:
        return f"closed ({str(e)[:20]})"
    finally:
        if c:
            c.close()


async def attack_auth(s: SubmissionServer, a, sampler: Sampler) -> dict:
    marks = {}
    rounds = []
    t0 = time.monotonic()
    for r in range(a.auth_rounds):
        tr = time.monotonic()
        codes = await asyncio.wait_for(asyncio.gather(*(
            auth_attempt(s.sub_port, "alice", f"wrong-{r}-{i}", f"127.0.1.{i % 250 + 1}")
            for i in range(a.auth_conc))), a.attack_timeout)
        await asyncio.sleep(1)
        marks[f"RSS after round {r + 1}"] = sampler.now()
        rounds.append({"codes": dict(Counter(codes)), "took_s": round(time.monotonic() - tr - 1, 1)})
    return {"outcome": {"rounds": rounds}, "took_s": round(time.monotonic() - t0, 1),
            "marks": marks, "legit": []}


async def attack_bob(s: SubmissionServer, a, sampler: Sampler) -> dict:
    right = a.bob_conc // 2
    t0 = time.monotonic()
    codes = await asyncio.wait_for(asyncio.gather(*(
        auth_attempt(s.sub_port, "bob", PASSWORDS["bob"] if i == right else f"guess-{i}", "127.0.0.1")
        for i in range(a.bob_conc))), a.attack_timeout)
    wrong = [c for i, c in enumerate(codes) if i != right]
    took = time.monotonic() - t0
    return {"outcome": {"wrong passwords": dict(Counter(wrong)), "the right password": codes[right]},
            "took_s": round(took, 1), "legit": []}


async def attack_alice(s: SubmissionServer, a, sampler: Sampler) -> dict:
    t0 = time.monotonic()
    codes = []
    for i in range(a.alice_wrong):
        codes.append(await asyncio.wait_for(
            auth_attempt(s.sub_port, "alice", f"guess-{i}", "127.0.0.1"), a.attack_timeout))
    took = time.monotonic() - t0
    same = await auth_attempt(s.sub_port, "alice", PASSWORDS["alice"], "127.0.0.1")
    other = await auth_attempt(s.sub_port, "alice", PASSWORDS["alice"], "127.0.0.2")
    return {"outcome": {"wrong passwords": dict(Counter(codes))}, "took_s": round(took, 1),
            "legit": [f"alice's right password from 127.0.0.1: {same}",
                      f"from 127.0.0.2: {other}"]}


async def attack_slowloris(s: Server, a, in_data: bool) -> dict:
    held_until = time.monotonic() + a.slowloris_for
    opened: list[str] = []
    closes: list[tuple[str, float]] = []
    line = b"EHLO slowloris.example.org.with.a.long.name\r\n"

    async def one(i):
        c = None
        t_open = time.monotonic()
        try:
            if in_data:
                c = await open_data(s.port, s.domain, i)
            else:
                c = await Client.connect(s.port)
                code, text = await c.reply()
                if code != 220:
                    opened.append(short(text))
                    return
            opened.append("220")
            k = 0
            while time.monotonic() < held_until:
                byte = b"x" if in_data else line[k % len(line):k % len(line) + 1]
                try:
                    await c.send(byte)
                except Closed:
                    closes.append(("reset", time.monotonic() - t_open))
                    return
                k += 1
                r = await c.wait_closed_by_peer(min(held_until, time.monotonic() + a.drip))
                if r:
                    closes.append((short(r[0]), r[1] - t_open))
                    return
        except Closed as e:
            opened.append(str(e)[:20])
        except asyncio.TimeoutError:
            opened.append("no answer")
        finally:
            if c:
                c.close()

    probes = [asyncio.create_task(legit_after(s, d)) for d in (a.probe_after, a.slowloris_for / 2)]
    await run_clients(one, a.sessions, a.slowloris_for + 30)
    outcome = {"opened": dict(Counter(opened)), "closed by the server": len(closes),
               "still open at the end": opened.count("220") - len(closes)}
    if closes:
        outcome["closed after (s, median)"] = round(statistics.median(t for _, t in closes), 1)
        outcome["closing replies"] = dict(Counter(r for r, _ in closes))
    return {"outcome": outcome, "took_s": a.slowloris_for, "legit": [await p for p in probes]}


async def attack_flood(s: Server, a) -> dict:
    until = time.monotonic() + a.flood_hold
    first: list[str] = []
    closes: list[str] = []

    async def one(i):
        c = None
        try:
            c = await Client.connect(s.port, timeout=10)
            code, text = await c.reply(10)
            first.append(short(text))
            if code == 220:
                r = await c.wait_closed_by_peer(until)
                if r:
                    closes.append(short(r[0]))
        except asyncio.TimeoutError:
            first.append("no answer in 10 s")
        except (Closed, OSError) as e:
            first.append(f"closed ({str(e)[:20]})")
        finally:
            if c:
                c.close()

    probes = [asyncio.create_task(legit_after(s, d)) for d in (a.probe_after, a.flood_hold / 2)]
    await run_clients(one, a.flood, a.flood_hold + 30)
    return {"outcome": {"first reply": dict(Counter(first)),
                        "later closed by the server": dict(Counter(closes))},
            "took_s": a.flood_hold, "legit": [await p for p in probes]}


ATTACKS = {
    "big": ("{sessions} sessions x {size_mib} MiB, fast", False),
    "slow": ("{sessions} sessions x {size_mib} MiB at {slow_rate_kb} KB/s each", False),
    "stall": ("{sessions} sessions stop inside DATA at {stall_mib} MiB", False),
    "auth": ("{auth_conc} concurrent failed AUTH PLAIN, {auth_rounds} rounds", True),
    "bob": ("{bob_conc} concurrent AUTH for bob, 1 right", True),
    "alice": ("{alice_wrong} wrong passwords for alice, then the right one", True),
    "slowloris": ("{sessions} slowloris sessions in a command (1 byte / {drip} s)", False),
    "slowdata": ("{sessions} slowloris sessions in DATA (1 byte / {drip} s)", False),
    "flood": ("{flood} concurrent connections", False),
}


async def run_attack(name: str, s: Server, a) -> dict:
    sampler = Sampler(s.pid)
    sampler.start()
    try:
        if name == "big":
            r = await attack_big(s, a, None)
        elif name == "slow":
            r = await attack_big(s, a, a.slow_rate_kb * 1000)
        elif name == "stall":
            r = await attack_stall(s, a, sampler)
        elif name == "auth":
            r = await attack_auth(s, a, sampler)
        elif name == "bob":
            r = await attack_bob(s, a, sampler)
        elif name == "alice":
            r = await attack_alice(s, a, sampler)
        elif name == "slowloris":
            r = await attack_slowloris(s, a, in_data=False)
        elif name == "slowdata":
            r = await attack_slowloris(s, a, in_data=True)
        elif name == "flood":
            r = await attack_flood(s, a)
        else:
            raise ValueError(name)
        # The clients are gone: how much does the daemon keep?
        await asyncio.sleep(a.settle)
        r["rss_after_kb"] = sampler.now()
        r["sampled_peak_kb"] = max(v for _, v in sampler.samples)
    finally:
        await sampler.stop()
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", type=Path, required=True, help="the smtorp binary to attack")
    p.add_argument("--only", default=",".join(ATTACKS), help="comma-separated attack names")
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--size-mib", type=float, default=20)
    p.add_argument("--slow-rate-kb", type=float, default=400)
    p.add_argument("--stall-mib", type=float, default=24.9)
    p.add_argument("--stall-hold", type=float, default=60)
    p.add_argument("--auth-conc", type=int, default=100)
    p.add_argument("--auth-rounds", type=int, default=3)
    p.add_argument("--bob-conc", type=int, default=60)
    p.add_argument("--alice-wrong", type=int, default=10)
    p.add_argument("--drip", type=float, default=10)
    p.add_argument("--slowloris-for", type=float, default=60)
    p.add_argument("--flood", type=int, default=1000)
    p.add_argument("--flood-hold", type=float, default=20)
    p.add_argument("--probe-after", type=float, default=3,
                   help="seconds into an attack when the legitimate client connects")
    p.add_argument("--settle", type=float, default=5,
                   help="seconds after the attack before the RSS 'after' is read")
    p.add_argument("--attack-timeout", type=float, default=300)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    a = p.parse_args()

    for n in (a.sessions, a.auth_conc, a.bob_conc, a.alice_wrong):
        assert 1 <= n <= 1000, "session counts are bounded to 1..1000"
    assert 1 <= a.flood <= 5000 and a.auth_rounds <= 10
    for t in (a.stall_hold, a.slowloris_for, a.flood_hold, a.attack_timeout):
        assert 0 < t <= 1800, "every phase is bounded to 30 min"
    names = [n for n in a.only.split(",") if n]
    for n in names:
        assert n in ATTACKS, f"unknown attack {n}; known: {', '.join(ATTACKS)}"
    binary = a.bin.resolve()
    assert binary.is_file(), binary
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.flood + 1000)), hard))

    tmp = Path(tempfile.mkdtemp(prefix="smtorp-attacks-"))
    print(f"binary {binary}; load average {loadavg()}; {os.cpu_count()} CPUs; work in {tmp}")
    results = {}
    for name in names:
        desc, submission = ATTACKS[name]
        title = desc.format(**vars(a))
        s = make_server(binary, tmp / name, submission)
        try:
            base = proc_kb(s.pid, "VmRSS")
            load0 = loadavg()
            r = asyncio.run(asyncio.wait_for(run_attack(name, s, a), a.attack_timeout * 4))
            r.update(title=title, rss_before_kb=base, peak_kb=proc_kb(s.pid, "VmHWM"),
                     load=f"{load0} -> {loadavg()}")
        finally:
            stop_server(s)
        results[name] = r
        print(f"== {name}: {title}")
        print(f"   RSS before {mb(r['rss_before_kb'])}, peak (VmHWM) {mb(r['peak_kb'])}, "
              f"after {mb(r['rss_after_kb'])}; took {r['took_s']} s; load {r['load']}")
        for k, v in r.get("marks", {}).items():
            print(f"   {k}: {mb(v)}")
        print(f"   attackers: {json.dumps(r['outcome'])}")
        for line in r["legit"]:
            print(f"   legitimate client: {line}")
        sys.stdout.flush()
        if not a.keep:
            shutil.rmtree(tmp / name, ignore_errors=True)

    print()
    print(f"| attack | RSS before | peak RSS | RSS after | attackers got | legitimate client |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        marks = "; ".join(f"{k}: {mb(v)}" for k, v in r.get("marks", {}).items())
        peak = mb(r["peak_kb"]) + (f" ({marks})" if marks else "")
        print(f"| {r['title']} | {mb(r['rss_before_kb'])} | {peak} | {mb(r['rss_after_kb'])} | "
              f"{json.dumps(r['outcome'])} | {'; '.join(r['legit']) or '-'} |")
    if a.json:
        a.json.write_text(json.dumps({"binary": str(binary), "results": results}, indent=2))
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
