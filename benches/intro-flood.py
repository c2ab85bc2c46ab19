#!/usr/bin/env python3
"""A flood of introductions against an onion mail server, over the private Tor network.

Brings up a private Tor network (`tornet up`) and two smtorp servers A and B (the
configuration of tests/test_tor.py, with B's `[onion]` defences as given below). Then:

1. Baseline: --rounds deliveries A -> B. Before each, A is restarted, so that its Tor
   client has no circuit to B left and every delivery needs a fresh introduction (the step
   a flood attacks). Each delivery is timed from the submission on A until the file is in
   bob's Maildir on B.
2. Flood: the network's C tor client opens --flood connection attempts to B's onion
   address at once, each with its own SOCKS credentials (so its own circuit and its own
   introduction: IsolateSOCKSAuth), and starts a new one whenever one ends, for --duration
   seconds. An attempt that gets through reads the greeting and says QUIT. C tor 0.4.9
   solves B's proof-of-work puzzles when B's descriptor asks for them, like any client.
3. During the flood (from --settle seconds on, --every seconds apart), the same --rounds
   deliveries A -> B.

Prints the delivery times with and without the flood, what the flood's attempts got (by
SOCKS reply), B's `smtorp status --json` during the flood (onion service state, defences,
self-probe), B's peak RSS, and the warnings B's log has from arti's onion service and
proof-of-work code.

Usage:
    cargo build --workspace --bins
    SMTORP_BIN=$CARGO_TARGET_DIR/debug/smtorp /usr/bin/python3 benches/intro-flood.py \\
        [--flood 300] [--duration 150] [--rounds 5] [--every 25] [--no-pow] [--no-limits]
        [--intro-rate R --intro-burst B] [--keep DIR]

--no-pow sets B's `pow = false`; --no-limits sets `intro_rate = 0`, `intro_burst = 0` (no
DoS parameters sent to the introduction points); --intro-rate/--intro-burst set others. Every count and wait is bounded
(--flood <= 2000, --duration <= 600, each attempt 60 s, each delivery --timeout). Run by
hand; not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import binary_path  # noqa: E402
from test_tor import OnionServer, submit, tornet_bin  # noqa: E402

# SOCKS5 replies (RFC 1928 6; 0xF0-0xF7 are Tor's extended onion errors).
REPLIES = {
    0: "connected", 1: "general failure", 4: "host unreachable", 5: "refused", 6: "TTL expired",
    0xF0: "descriptor not found", 0xF1: "descriptor invalid", 0xF2: "introduction failed",
    0xF3: "rendezvous failed", 0xF6: "bad address", 0xF7: "introduction timed out",
}


def set_onion_keys(server: OnionServer, keys: dict) -> None:
    text = server.config_path.read_text()
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    text = text.replace('connect_timeout = "30s"\n', 'connect_timeout = "30s"\n' + lines, 1)
    server.config_path.write_text(text)


def delivered(server: OnionServer, user: str, subject: str) -> bool:
    return any(m["Subject"] == subject for m in server.messages(user))


def deliver(a: OnionServer, b: OnionServer, subject: str, timeout: float) -> float | None:
    """Restarts A (no circuits left), then seconds from submission until bob has it."""
    a.stop()
    a.start(timeout=120)
    t0 = time.monotonic()
    submit(a, f"alice@{a.domain}", f"bob@{b.domain}", subject)
    while time.monotonic() < t0 + timeout:
        if delivered(b, "bob", subject):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


async def attempt(socks_port: int, host: str, n: int, timeout: float) -> str:
    """One SOCKS5 connection to host:25 with credentials of its own."""
    user = f"flood{n}".encode()
    password = os.urandom(8).hex().encode()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", socks_port)
            writer.write(b"\x05\x01\x02")
            if await reader.readexactly(2) != b"\x05\x02":
                return "socks refused the method"
            writer.write(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
            if (await reader.readexactly(2))[1] != 0:
                return "socks refused the credentials"
            name = host.encode()
            writer.write(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + (25).to_bytes(2, "big"))
            reply = await reader.readexactly(10)
            code = reply[1]
            if code != 0:
                return REPLIES.get(code, f"reply {code:#x}")
            greeting = await reader.readline()
            writer.write(b"QUIT\r\n")
            await writer.drain()
            return "connected, greeted" if greeting.startswith(b"220") else "connected, no greeting"
    except TimeoutError:
        return "timed out"
    except (OSError, asyncio.IncompleteReadError) as e:
        return f"error: {type(e).__name__}"
    finally:
        if writer is not None:
            writer.close()


async def flood(socks_port: int, host: str, concurrency: int, duration: float,
                outcomes: Counter, stop: threading.Event) -> None:
    counter = iter(range(10**9))
    end = time.monotonic() + duration

    async def worker():
        while time.monotonic() < end and not stop.is_set():
            outcome = await attempt(socks_port, host, next(counter), min(60.0, duration))
            outcomes[outcome] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def summary(times: list[float | None]) -> str:
    ok = [t for t in times if t is not None]
    failed = len(times) - len(ok)
    if not ok:
        return f"none delivered ({failed} timed out)"
    return (f"median {statistics.median(ok):.1f} s, min {min(ok):.1f}, max {max(ok):.1f}"
            f" ({len(ok)} delivered, {failed} timed out)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=300)
    parser.add_argument("--duration", type=float, default=150)
    parser.add_argument("--settle", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--no-pow", action="store_true")
    parser.add_argument("--no-limits", action="store_true")
    parser.add_argument("--intro-rate", type=int, help="B's [onion] intro_rate")
    parser.add_argument("--intro-burst", type=int, help="B's [onion] intro_burst")
    parser.add_argument("--every", type=float, default=25,
                        help="seconds between the deliveries during the flood")
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    if not 1 <= args.flood <= 2000 or not 10 <= args.duration <= 600 or not 1 <= args.rounds <= 20:
        parser.error("--flood 1..2000, --duration 10..600, --rounds 1..20")
    if shutil.which("tor") is None:
        print("Debian's tor is not installed (scripts/setup-debian)", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="smtorp-flood-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    net = work / "net"
    up = subprocess.run([str(tornet_bin()), "up", str(net)], capture_output=True, timeout=300)
    if up.returncode != 0:
        print(up.stdout.decode(), up.stderr.decode(), file=sys.stderr)
        return 1
    servers: list[OnionServer] = []
    try:
        binary = binary_path()
        a = OnionServer(binary, work / "A", net / "arti.toml", ["alice"])
        b = OnionServer(binary, work / "B", net / "arti.toml", ["bob"])
        servers += [a, b]
        keys = {}
        if args.no_pow:
            keys["pow"] = False
        if args.no_limits:
            keys.update(intro_rate=0, intro_burst=0)
        if args.intro_rate is not None:
            keys["intro_rate"] = args.intro_rate
        if args.intro_burst is not None:
            keys["intro_burst"] = args.intro_burst
        set_onion_keys(b, keys)
        a.start(timeout=120)
        b.start(timeout=120)
        socks_port = int((net / "socks_port").read_text().strip())
        first = b.cli("status", "--json", timeout=90)
        print(f"== B's defences: {json.loads(first.stdout).get('defences') if first.stdout else '?'}")
        # Warm-up: B's descriptor is published and A has fetched it once.
        warm = deliver(a, b, "warm-up", args.timeout * 2)
        print(f"== warm-up delivery: {warm}")
        base = [deliver(a, b, f"baseline {i}", args.timeout) for i in range(args.rounds)]
        print(f"== without a flood: {summary(base)}: {base}", flush=True)

        outcomes: Counter = Counter()
        stop = threading.Event()
        flooder = threading.Thread(
            target=lambda: asyncio.run(flood(socks_port, b.domain, args.flood, args.duration,
                                             outcomes, stop)),
            daemon=True)
        started = time.monotonic()
        flooder.start()
        time.sleep(args.settle)
        during = []
        statuses = []
        # The deliveries are spread over the flood, --every seconds apart.
        for i in range(args.rounds):
            slot = started + args.settle + i * args.every
            if slot > started + args.duration - 5:
                break
            time.sleep(max(0.0, slot - time.monotonic()))
            during.append(deliver(a, b, f"during the flood {i}", args.timeout))
            r = b.cli("status", "--json", timeout=90)
            if r.stdout:
                statuses.append(json.loads(r.stdout))
        elapsed = time.monotonic() - started
        at_end = dict(outcomes)
        stop.set()
        flooder.join(timeout=120)
        print(f"== during a flood of {args.flood} concurrent introductions: {summary(during)}: {during}")
        total = sum(at_end.values())
        print(f"== the flood's attempts while measured: {total} ended "
              f"in {elapsed:.0f} s ({total / max(1.0, elapsed):.1f}/s); by outcome:")
        for outcome, n in sorted(at_end.items(), key=lambda x: -x[1]):
            print(f"   {n:6d}  {outcome}")
        for s in statuses:
            print(f"== B status: service {s.get('onion_service')!r}, health {s.get('health')}, "
                  f"probe failures {s.get('probe', {}).get('consecutive_failures')}")
        print("== B's `smtorp status` at the end of the flood:")
        print(b.cli("status", timeout=90).stdout.decode())
        print(f"== B peak RSS {b.peak_rss_kb() / 1024:.0f} MB, A peak RSS {a.peak_rss_kb() / 1024:.0f} MB")
        warnings = Counter()
        for line in b.log_path.read_text(errors="replace").splitlines():
            if " WARN " in line and ("tor_hs" in line or "pow" in line.lower()):
                warnings[line.split(" WARN ", 1)[1][:140]] += 1
        print("== B's warnings from arti's onion service code:")
        for text, n in warnings.most_common(10):
            print(f"   {n:5d}  {text}")
        return 0
    finally:
        for s in servers:
            if s.proc is not None:
                s.kill()
        subprocess.run([str(tornet_bin()), "down", str(net)], capture_output=True, timeout=120)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
