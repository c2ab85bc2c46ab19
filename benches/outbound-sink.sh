#!/usr/bin/env bash
# Outbound throughput: smtorp delivers N messages of SIZE bytes to Postfix's smtp-sink (a
# peer that accepts and discards) over a static route on 127.0.0.1, and we measure the
# time from daemon start until the queue is empty, plus the connections it used.
#
# The messages are queued first (written into the maildrop while the daemon is stopped,
# in the maildrop file format of crates/smtorp/src/maildrop.rs), so the figure is the
# delivery side: pickup + queue + scheduler + remote SMTP client.
#
# Usage: benches/outbound-sink.sh [N]      (N defaults to 2000; SIZE=10240 by default)
# SMTORP_BIN=PATH measures that binary instead of building the release one (e.g. an older
# build, for a before/after); BENCH_DIR sets where the work folder goes (default /tmp).
# Run by hand; not part of CI's pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-${N:-2000}}"
SIZE="${SIZE:-10240}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
for tool in smtp-sink python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (scripts/setup-debian installs it)" >&2; exit 1; }
done
if [ -n "${SMTORP_BIN:-}" ]; then
    BIN="$SMTORP_BIN"
else
    command -v cargo >/dev/null || { echo "missing cargo (or set SMTORP_BIN)" >&2; exit 1; }
    cargo build --release -p smtorp >/dev/null
    BIN="$TARGET_DIR/release/smtorp"
fi
[ -x "$BIN" ] || { echo "no smtorp binary at $BIN" >&2; exit 1; }
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/smtorp-outbound-XXXXXX")"
SINK_PID=""; SMTORP_PID=""
cleanup() {
    [ -n "$SMTORP_PID" ] && kill -TERM "$SMTORP_PID" 2>/dev/null && wait "$SMTORP_PID" 2>/dev/null || true
    [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

read -r PORT LOCAL PEER < <(python3 - <<'PY'
import base64, hashlib, os, socket
def onion():
    k = os.urandom(32)
    c = hashlib.sha3_256(b".onion checksum" + k + b"\x03").digest()[:2]
    return base64.b32encode(k + c + b"\x03").decode().lower() + ".onion"
s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
print(p, onion(), onion())
PY
)

smtp-sink -u nobody 127.0.0.1:"$PORT" 256 &
SINK_PID=$!

cat >"$WORK/smtorp.toml" <<TOML
data_dir = "$WORK/data"
[onion]
enabled = false
[submission]
listen = []
[local]
domains = ["$LOCAL"]
users = ["alice"]
[delivery]
routes = { "$PEER" = "127.0.0.1:$PORT" }
retry_after = ["1s"]
TOML
"$BIN" --config "$WORK/smtorp.toml" init >/dev/null

python3 - "$WORK/data/maildrop" "$N" "$SIZE" "$LOCAL" "$PEER" <<'PY'
import json, os, sys
drop, n, size, local, peer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
line = ("x" * 76 + "\r\n").encode()
body = line * (size // len(line))
env = json.dumps({"sender": f"alice@{local}", "recipients": [f"bob@{peer}"]}).encode()
for i in range(n):
    msg = f"From: alice@{local}\r\nTo: bob@{peer}\r\nSubject: bench {i}\r\n\r\n".encode() + body
    name = f"1000000000.{i:09d}.0.bench"
    with open(os.path.join(drop, "." + name), "wb") as f:
        f.write(b"SMTORP-MAILDROP 1\n" + env + b"\n" + msg)
    os.rename(os.path.join(drop, "." + name), os.path.join(drop, name))
PY

START="$(date +%s.%N)"
"$BIN" --config "$WORK/smtorp.toml" run 2>"$WORK/smtorp.log" &
SMTORP_PID=$!
DEADLINE=$(( $(date +%s) + 600 ))
while :; do
    sleep 0.2
    LEFT="$(ls "$WORK/data/maildrop" | wc -l)"
    if [ "$LEFT" = 0 ] && "$BIN" --config "$WORK/smtorp.toml" queue list 2>/dev/null | grep -q "^-- 0 message"; then
        break
    fi
    [ "$(date +%s)" -lt "$DEADLINE" ] || { echo "timed out; see $WORK/smtorp.log" >&2; exit 1; }
done
END="$(date +%s.%N)"
STATUS="$("$BIN" --config "$WORK/smtorp.toml" status)"
RSS="$(awk '/^VmHWM:/ {print $2, $3}' "/proc/$SMTORP_PID/status")"
DELIVERED="$(echo "$STATUS" | sed -n 's/^since start: *\([0-9]*\) delivered.*/\1/p')"
CONNS="$(echo "$STATUS" | sed -n 's/^outbound: *\([0-9]*\) connections.*/\1/p')"
python3 - "$N" "$SIZE" "$START" "$END" "$DELIVERED" "$CONNS" "$RSS" <<'PY'
import sys
n, size, start, end, delivered, conns, rss = sys.argv[1:]
t = float(end) - float(start)
print("=" * 64)
print(f" smtorp -> smtp-sink: {n} msgs x {size} B over a static route (127.0.0.1)")
print(f" time {t:.2f} s, {int(n) / t:.1f} msg/s, delivered {delivered}, connections {conns}")
print(f" smtorp peak RSS {rss}")
print("=" * 64)
PY
