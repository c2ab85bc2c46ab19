#!/usr/bin/env python3
"""Delivery to a peer that just restarted, over the private Tor network.

Brings up a private Tor network (`tornet up`), two smtorp servers A and B with their own
onion services (the configuration of tests/test_tor.py: connect_timeout 30 s, retry_after
2s/3s/5s), warms B up with one delivery B -> A, then N times: stops A (SIGTERM), starts it
again with the same key, submits a message on B for alice@A and measures the time from the
submission until the file is in alice's Maildir on A. Each round is bounded (--timeout);
a round that times out counts as a failure, and B is restarted (which clears its Tor
client's memory of A) so that the next round starts clean.

Usage:
    cargo build --workspace --bins
    SMTORP_BIN=$CARGO_TARGET_DIR/debug/smtorp /usr/bin/python3 benches/peer-restart.py [-n 10]

Options: -n N rounds (default 10, at most 100), --timeout SECS per delivery (default 180),
--pause SECS between A's start and the submission (default 0), --down SECS (submit while A
is down and start A SECS later; the time is then counted from A's start), --kill (SIGKILL
instead of SIGTERM), --keep DIR (keep the network and logs), --log FILTER (tracing filter
for both servers, e.g. "info,tor_hsclient=debug").
Prints one line per round, then min/median/max and the number of failures. Run by hand;
not part of CI.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import binary_path  # noqa: E402
from test_tor import OnionServer, submit, tornet_bin  # noqa: E402


def set_log(server: OnionServer, level: str) -> None:
    text = server.config_path.read_text()
    text = text.replace('level = "info"', f'level = "{level}"')
    server.config_path.write_text(text)


def delivered(server: OnionServer, user: str, subject: str) -> bool:
    return any(m["Subject"] == subject for m in server.messages(user))


def wait_for(a: OnionServer, subject: str, timeout: float) -> float | None:
    """Seconds until the message is in alice's Maildir on A."""
    t0 = time.monotonic()
    while time.monotonic() < t0 + timeout:
        if delivered(a, "alice", subject):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def deliver(b: OnionServer, a: OnionServer, subject: str, timeout: float) -> float | None:
    """Seconds from submission on B until the message is in alice's Maildir on A."""
    t0 = time.monotonic()
    submit(b, f"bob@{b.domain}", f"alice@{a.domain}", subject)
    took = wait_for(a, subject, timeout - (time.monotonic() - t0))
    return None if took is None else time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--pause", type=float, default=0)
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--log", default="info")
    parser.add_argument("--kill", action="store_true", help="stop A with SIGKILL, not SIGTERM")
    parser.add_argument("--down", type=float, default=None,
                        help="submit while A is down and start A this many seconds later")
    args = parser.parse_args()
    if not 1 <= args.n <= 100:
        parser.error("-n must be 1..100")
    if shutil.which("tor") is None:
        print("Debian's tor is not installed (scripts/setup-debian installs it)", file=sys.stderr)
        return 2

    work = args.keep or Path(tempfile.mkdtemp(prefix="smtorp-peer-restart-"))
    work.mkdir(parents=True, exist_ok=True)
    net = work / "tornet"
    net.mkdir(exist_ok=True)
    tornet = str(tornet_bin())
    up = subprocess.run([tornet, "up", str(net)], capture_output=True, timeout=240)
    if up.returncode != 0:
        print(up.stdout.decode(), up.stderr.decode(), file=sys.stderr)
        return 1
    a = b = None
    times: list[float] = []
    failures = 0
    try:
        a = OnionServer(binary_path(), work / "A", net / "arti.toml", ["alice"])
        b = OnionServer(binary_path(), work / "B", net / "arti.toml", ["bob"])
        for s in (a, b):
            set_log(s, args.log)
        a.start()
        b.start()
        warm = deliver(b, a, "warm-up", args.timeout)
        print(f"warm-up delivery B -> A: {warm if warm is None else round(warm, 2)} s", flush=True)
        for i in range(1, args.n + 1):
            t_stop = time.monotonic()
            if args.kill:
                a.kill()
            else:
                try:
                    a.stop(timeout=20)
                except AssertionError:
                    print(f"round {i}: A did not stop cleanly (killed)", flush=True)
            if args.down is None:
                a.start()
                restart = time.monotonic() - t_stop
                time.sleep(args.pause)
                took = deliver(b, a, f"restart {i}", args.timeout)
            else:
                # The message waits on B while A is down; timed from A's start.
                submit(b, f"bob@{b.domain}", f"alice@{a.domain}", f"restart {i}")
                time.sleep(args.down)
                a.start()
                restart = time.monotonic() - t_stop
                took = wait_for(a, f"restart {i}", args.timeout)
            if took is None:
                failures += 1
                print(f"round {i}: restart {restart:.1f} s, NOT delivered within {args.timeout:.0f} s",
                      flush=True)
                # Start the next round from a clean state: restarting B forgets what its
                # Tor client learnt about A; the message is still in B's queue.
                try:
                    b.stop(timeout=20)
                except AssertionError:
                    b.kill()
                b.start()
                late = wait_for(a, f"restart {i}", args.timeout)
                print(f"         after restarting B: {'not ' if late is None else ''}delivered"
                      + ("" if late is None else f" {late:.1f} s later"), flush=True)
            else:
                times.append(took)
                print(f"round {i}: restart {restart:.1f} s, delivered in {took:.2f} s", flush=True)
    finally:
        for s in (a, b):
            if s is not None and s.proc is not None:
                s.kill()
        subprocess.run([tornet, "down", str(net)], capture_output=True, timeout=120)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}")
    if times:
        print(f"delivered {len(times)}/{args.n}: min {min(times):.2f} s, "
              f"median {statistics.median(times):.2f} s, max {max(times):.2f} s; "
              f"failures (over {args.timeout:.0f} s): {failures}")
    else:
        print(f"delivered 0/{args.n}; failures (over {args.timeout:.0f} s): {failures}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
