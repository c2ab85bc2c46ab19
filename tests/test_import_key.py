"""`smtorp import-key`: a user of the classic setup (C tor + Exim) keeps their onion
address. The key comes from a real C tor: `tor` started with a HiddenServiceDir and
DisableNetwork (it makes the key and the hostname file offline), then stopped.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import binary_path


def ctor_hidden_service_dir(root: Path) -> Path:
    """A C tor HiddenServiceDir with hs_ed25519_secret_key and hostname, made offline."""
    if shutil.which("tor") is None:
        pytest.fail("Debian's tor is not installed (scripts/setup-debian installs it)")
    hs = root / "hs"
    hs.mkdir(mode=0o700)
    data = root / "tordata"
    proc = subprocess.Popen(
        ["tor", "--DisableNetwork", "1", "--SocksPort", "0", "--DataDirectory", str(data),
         "--HiddenServiceDir", str(hs), "--HiddenServicePort", "25 127.0.0.1:9",
         "--Log", f"notice file {root / 'tor.log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (hs / "hostname").exists():
            assert time.monotonic() < deadline, (root / "tor.log").read_text(errors="replace")
            assert proc.poll() is None, (root / "tor.log").read_text(errors="replace")
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    return hs


def smtorp(config: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary_path()), "--config", str(config), *args],
                          capture_output=True, timeout=60)


def write_config(tmp: Path) -> Path:
    config = tmp / "smtorp.toml"
    config.write_text(f'data_dir = "{tmp / "data"}"\n[onion]\nenabled = true\n[submission]\nlisten = []\n')
    return config


def test_imported_ctor_key_keeps_the_address(tmp_path):
    hs = ctor_hidden_service_dir(tmp_path)
    ctor_address = (hs / "hostname").read_text().strip()
    config = write_config(tmp_path)
    r = smtorp(config, "import-key", str(hs))
    assert r.returncode == 0, r.stderr.decode()
    assert ctor_address in r.stdout.decode()
    assert smtorp(config, "address").stdout.decode().strip() == ctor_address
    # init afterwards keeps it (it creates a key only when there is none).
    r = smtorp(config, "init")
    assert r.returncode == 0 and f"onion address: {ctor_address}" in r.stdout.decode()
    assert (tmp_path / "data" / "onion" / "hostname").read_text().strip() == ctor_address


def test_import_never_replaces_an_identity(tmp_path):
    hs = ctor_hidden_service_dir(tmp_path)
    config = write_config(tmp_path)
    assert smtorp(config, "init").returncode == 0
    ours = smtorp(config, "address").stdout.decode().strip()
    r = smtorp(config, "import-key", str(hs / "hs_ed25519_secret_key"))
    assert r.returncode != 0
    assert "already exists" in r.stderr.decode()
    assert smtorp(config, "address").stdout.decode().strip() == ours


def test_import_refuses_a_file_that_is_not_a_key(tmp_path):
    bogus = tmp_path / "hs_ed25519_secret_key"
    bogus.write_bytes(b"== ed25519v1-secret: type0 ==\0\0\0" + b"\x01" * 10)
    config = write_config(tmp_path)
    r = smtorp(config, "import-key", str(bogus))
    assert r.returncode != 0
    assert "not a C tor hs_ed25519_secret_key" in r.stderr.decode()
