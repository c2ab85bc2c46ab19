"""mutt as a real reader of smtorp's Maildirs: `mutt -f <maildir>` opens the folder and
counts the messages (its status line), and pipes each one out exactly as delivered.

mutt needs a terminal, so it runs on a pseudo-terminal and the test types its keys once
the index is drawn: a batch run with no human and no muttrc (-n -F /dev/null).
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import time
import uuid

import pytest

from conftest import make_onion, simple_message, smtp

SEP = "--smtorp-test-separator--"


class Terminal:
    """A program on a pseudo-terminal: read what it draws, type keys."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.environ.update(env)
            os.execvp(argv[0], argv)
        self.screen = b""
        self.mark = 0  # expect() looks at what was drawn after this offset
        self.status = None

    def _read(self, wait: float) -> bool:
        """Reads what is there (waiting up to `wait` s); False once the program is gone."""
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the program closed the terminal
                chunk = b""
            self.screen += chunk
            if chunk:
                return True
        if self.status is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = status
        return self.status is None

    def expect(self, pattern: bytes, timeout: float = 20) -> re.Match:
        """Waits until `pattern` appears in what was drawn since the last match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.screen[self.mark:])
            if m:
                self.mark += m.end()
                return m
            if not self._read(0.1):
                break
        raise AssertionError(f"no {pattern!r} on the terminal: {self.screen[-2000:]!r}")

    def type(self, keys: bytes):
        os.write(self.fd, keys)

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None and time.monotonic() < deadline:
            self._read(0.1)
        if self.status is None:
            self.kill()
            raise AssertionError(f"still running after {timeout}s: {self.screen[-2000:]!r}")
        os.close(self.fd)
        return os.waitstatus_to_exitcode(self.status)

    def kill(self):
        if self.status is None:
            os.kill(self.pid, 9)
            self.status = os.waitpid(self.pid, 0)[1]
            os.close(self.fd)


def mutt_count_and_pipe(folder, out_file) -> int:
    """Opens `folder` read-only in mutt, reads the message count from mutt's status line,
    tags every message and pipes them all (raw, separated by SEP) into `out_file`, then
    exits. Returns mutt's count."""
    mutt = shutil.which("mutt") or shutil.which("neomutt")
    if mutt is None:
        pytest.fail("mutt is not installed (scripts/setup-debian installs it)")
    settings = [f"set folder={folder}", "set mbox_type=Maildir", "set pipe_split=no", "set pipe_decode=no",
                "set wait_key=no", f'set pipe_sep="\\n{SEP}\\n"', "set sort=mailbox-order"]
    argv = [mutt, "-n", "-F", "/dev/null", "-R", "-f", str(folder)]
    for c in settings:
        argv += ["-e", c]
    term = Terminal(argv, {"TERM": "vt100", "HOME": str(out_file.parent)})
    try:
        # The index is drawn: its status line says "[Msgs:N ...".
        count = int(term.expect(rb"\[Msgs:(\d+)").group(1))
        term.type(b"T~A\r")  # <tag-pattern> ~A: every message
        term.expect(rb"Tag:" + str(count).encode())
        term.type(f";|cat > {out_file}\r".encode())  # <tag-prefix><pipe-message>
        deadline = time.monotonic() + 20
        while not (out_file.exists() and out_file.read_bytes().count(SEP.encode()) >= count - 1):
            assert time.monotonic() < deadline, f"mutt piped nothing: {term.screen[-2000:]!r}"
            term._read(0.1)
        term.type(b"x")  # <exit>
        assert term.wait() == 0, term.screen[-2000:]
    finally:
        term.kill()
    return count


def test_mutt_opens_the_maildir_and_counts_the_messages(server, tmp_path):
    ids = [uuid.uuid4().hex for _ in range(3)]
    c = smtp(server)
    for tid in ids[:2]:
        c.sendmail(f"peer@{make_onion()}", [server.addr("alice")],
                   simple_message(server, subject=f"smtp {tid}", extra_headers=f"X-Test-Id: {tid}\r\n"))
    c.quit()
    r = server.sendmail(server.addr("alice"),
                        input=f"Subject: local {ids[2]}\nX-Test-Id: {ids[2]}\n\nfrom sendmail\n".encode())
    assert r.returncode == 0, r.stderr
    server.wait_for_messages("alice", 3)

    out = tmp_path / "piped"
    # mutt's own count, on its status line: "[Msgs:3 New:3 ...]".
    assert mutt_count_and_pipe(server.maildir_path("alice"), out) == 3
    # Every message came through mutt, once, exactly as it is on disk.
    # (mutt puts $pipe_sep between the messages; some versions after the last one too.)
    piped = out.read_bytes().split(f"\n{SEP}\n".encode())
    if piped[-1] == b"":
        piped.pop()
    assert len(piped) == 3, piped
    assert sorted(piped) == sorted(server.raw_files("alice"))
    got = sorted(re.search(rb"^X-Test-Id: (\w+)$", m, re.M).group(1).decode() for m in piped)
    assert got == sorted(ids)
