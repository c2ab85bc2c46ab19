"""Staying reachable (issue #11), over a private Tor network of its own (this module freezes
it): the self-probe, `smtorp status --json` and its exit code, the defences in force, and an
outage of the whole network (every tor daemon stopped with SIGSTOP) that the servers notice,
try to repair, and recover from by themselves once the network is back, delivering the mail
queued meanwhile. The servers probe every few seconds here (10 minutes by default).

Every wait is bounded; no figure of speed is asserted.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import wait_until
from test_tor import (OnionServer, find, private_network, running_pair, submit,
                      swaks_through_c_tor, tornet_bin)

PROBE = {"probe_interval": "3s", "probe_timeout": "10s", "probe_failures": 2}


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    # This module freezes its network: it has one of its own.
    with private_network(tmp_path_factory.mktemp("tornet-avail")) as net:
        yield net


class ProbedServer(OnionServer):
    """An onion server that probes itself every few seconds."""

    def __init__(self, binary: Path, tmp: Path, arti_toml: Path, users):
        super().__init__(binary, tmp, arti_toml, users)
        text = self.config_path.read_text()
        keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in PROBE.items())
        text = text.replace('connect_timeout = "30s"\n', 'connect_timeout = "30s"\n' + keys, 1)
        self.config_path.write_text(text)

    def status(self) -> tuple[int, dict]:
        r = self.cli("status", "--json", timeout=90)
        assert r.returncode in (0, 1, 2), r.stderr.decode()
        return r.returncode, json.loads(r.stdout)


@pytest.fixture(scope="module")
def servers(network, tmp_path_factory):
    with running_pair(ProbedServer, network, tmp_path_factory) as pair:
        yield pair


def reachable(server: ProbedServer):
    code, report = server.status()
    probe = report["probe"]
    if code == 0 and probe["last_success"] and probe["consecutive_failures"] == 0:
        return report
    return None


def tornet(network: Path, command: str):
    r = subprocess.run([str(tornet_bin()), command, str(network)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()


def test_status_reports_reachable_after_start_with_the_defences_on(servers):
    a, b = servers
    for s in (a, b):
        report = wait_until(lambda: reachable(s), timeout=60, what="a successful self-probe", every=1)
        assert report["daemon_running"] and report["queue_available"]
        assert report["onion_address"] == s.domain
        assert report["tor_ready"] is True
        assert report["probe"]["last_code"] == 220
        assert report["probe"]["threshold"] == 2
        # Proof-of-work and the limits are on by default, and reported.
        assert report["defences"] == {"pow": True, "intro_rate": 25, "intro_burst": 200,
                                      "max_streams_per_circuit": 8}
        assert report["health"] == {"status": "ok", "code": 0, "reasons": []}
        human = s.cli("status")
        assert human.returncode == 0, human.stdout.decode()
        text = human.stdout.decode()
        assert re.search(r"^reachability: +reachable: last self-probe", text, re.M), text
        assert re.search(r"^defences: +proof-of-work on", text, re.M), text
        assert re.search(r"^health: +OK$", text, re.M), text


def test_with_pow_and_the_limits_on_arti_and_c_tor_still_deliver(servers, network):
    a, b = servers
    submit(a, f"alice@{a.domain}", f"bob@{b.domain}", "pow on, a to b")
    find(b, "bob", "pow on, a to b")
    submit(b, f"bob@{b.domain}", f"alice@{a.domain}", "pow on, b to a")
    find(a, "alice", "pow on, b to a")
    # The C tor client (Tor 0.4.9 solves puzzles) through torsocks + swaks. On the private
    # network a time period is 8 minutes; just after it turns, the new descriptor can take
    # a minute to reach C tor, hence the longer wait.
    last = swaks_through_c_tor(network, b.domain, f"bob@{b.domain}", "pow on, via c tor",
                               timeout=240)
    assert last.returncode == 0, last.stdout.decode(errors="replace") + last.stderr.decode(errors="replace")
    find(b, "bob", "pow on, via c tor")


def test_an_outage_is_reported_repaired_and_recovered_from_without_a_restart(servers, network):
    a, b = servers
    wait_until(lambda: reachable(b), timeout=60, what="B reachable before the outage", every=1)
    pids = (a.pid, b.pid)
    b_log_start = len(b.log_path.read_bytes())
    tornet(network, "freeze")
    frozen_at = time.monotonic()
    try:
        # A queues mail for B while nothing answers.
        submit(a, f"alice@{a.domain}", f"bob@{b.domain}", "queued during the outage")
        # B notices: degraded (1) after a failed probe, down (2) at the threshold.
        codes = []

        def outage_seen():
            code, report = b.status()
            codes.append(code)
            return code == 2 and report["probe"]["consecutive_failures"] >= 2 and report

        report = wait_until(outage_seen, timeout=120, what="B reporting the outage", every=2)
        assert 1 in codes or 2 in codes
        assert "unreachable" in " ".join(report["health"]["reasons"])
        human = b.cli("status", timeout=90)
        assert human.returncode == 2
        assert re.search(r"^health: +DOWN: our onion service is unreachable", human.stdout.decode(), re.M)

        # ... and tries to repair, first the service, then the Tor client, logged at warn.
        def repaired(what):
            return lambda: what in b.log_path.read_bytes()[b_log_start:].decode(errors="replace")

        wait_until(repaired("repair: relaunching the onion service"), timeout=90,
                   what="a relaunch in B's log", every=1)
        wait_until(repaired("repair: rebuilding the Tor client"), timeout=120,
                   what="a rebuild in B's log", every=1)
        assert all(m["Subject"] != "queued during the outage" for m in b.messages("bob"))
        outage = time.monotonic() - frozen_at
    finally:
        tornet(network, "thaw")
    thawed_at = time.monotonic()
    # No restart by the test: the same processes deliver the queued mail and are reachable.
    find(b, "bob", "queued during the outage", timeout=240)
    delivered = time.monotonic() - thawed_at
    report = wait_until(lambda: reachable(b), timeout=120, what="B reachable again", every=1)
    recovered = time.monotonic() - thawed_at
    assert (a.pid, b.pid) == pids and a.alive() and b.alive()
    probe = report["probe"]
    assert probe["relaunches"] >= 1 and probe["rebuilds"] >= 1
    assert probe["last_repair"]["action"] in ("relaunch", "rebuild")
    # Same key, same address: the status and the hostname file agree.
    assert report["onion_address"] == b.domain
    assert b.cli("address").stdout.decode().strip() == b.domain
    log = b.log_path.read_bytes()[b_log_start:].decode(errors="replace")
    assert "self-probe: our onion service is reachable again" in log
    assert "panicked" not in log, log[-3000:]
    print(f"\noutage {outage:.0f} s; after the thaw: queued mail delivered in {delivered:.1f} s, "
          f"B reachable by its probe in {recovered:.1f} s; B: {probe['relaunches']} relaunch(es), "
          f"{probe['rebuilds']} rebuild(s)")
