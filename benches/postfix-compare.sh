#!/usr/bin/env bash
# End-to-end throughput: smtorp vs a throwaway local Postfix, both fed by Postfix's
# smtp-source over loopback and both delivering into a Maildir.
#
#   benches/postfix-compare.sh [N]          (or N=... benches/postfix-compare.sh)
#
# Two loads, RUNS runs each; every run starts both MTAs afresh (new data, queue and
# Maildir), the order of the two alternating from run to run:
#   single: one message per connection (smtp-source -s SESSIONS -m N), the worst case for
#           a group commit;
#   multi:  several messages per connection, the way a peer with connection caching sends
#           (smtorp's own client, Postfix's smtp): smtp-source -d -s SESSIONS -m N, each
#           session keeping its connection for its N / SESSIONS messages; with PER_CONN > 0,
#           SESSIONS parallel loops of smtp-source -d -s 1 -m PER_CONN instead (a new
#           smtp-source process per connection: its start costs CPU on a small machine).
#
# Environment: N (messages per run, default 5000), RUNS (default 5), LOADS (default
# "single multi"), SESSIONS (default 20), PER_CONN (default 0), SIZE (bytes per message,
# default 10240), TIMEOUT (seconds per load, default 600), SMTORP_BIN (skip the release
# build and use this binary), CONCURRENCY (smtorp's [delivery] concurrency; default: its
# own default), BENCH_DIR (where the work folder goes, default /var/tmp),
# KEEP=1 (keep the work folder). Runs are removed only at the end (deleting thousands of
# files between runs would slow the next run's file creations, see WORK below).
#
# For each MTA and run: wall time from the start of the load until N files are in alice's
# Maildir new/, hence msg/s end to end (accept + queue + local delivery). Memory: smtorp's
# VmHWM, and for Postfix (many processes) the largest sum over its processes of RSS and of
# PSS (shared pages divided among the processes sharing them), sampled every 0.2 s; smtorp's
# sampled sums are shown too. Run by hand (needs root for the Postfix instance); not a CI
# pass/fail check.
set -euo pipefail

N="${1:-${N:-5000}}"
RUNS="${RUNS:-5}"
LOADS="${LOADS:-single multi}"
SESSIONS="${SESSIONS:-20}"
PER_CONN="${PER_CONN:-0}"
SIZE="${SIZE:-10240}"
TIMEOUT="${TIMEOUT:-600}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "postfix-compare: $*" >&2; exit 1; }
for tool in smtp-source postfix postconf python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[ "$(id -u)" = 0 ] || die "must run as root (throwaway Postfix instance)"
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 50 ] || die "RUNS must be 1..50"
[ "$N" -ge 1 ] && [ "$N" -le 1000000 ] || die "N must be 1..1000000"

# Under /var/tmp rather than /tmp: the tests of other users create and delete many files in
# /tmp, and on an ext4 without a journal every file creation scans the inodes deleted in its
# block group within the last minutes (recently_deleted), which would slow both MTAs.
WORK="$(mktemp -d "${BENCH_DIR:-/var/tmp}/smtorp-bench.XXXXXX")"
chmod 755 "$WORK"
SMTORP_PID=""
PF_DIR=""
MEM_PID=""
LOAD_PIDS=""

stop_mem() {
    if [ -n "$MEM_PID" ]; then
        kill -TERM "$MEM_PID" 2>/dev/null || true
        wait "$MEM_PID" 2>/dev/null || true
        MEM_PID=""
    fi
}

stop_smtorp() {
    if [ -n "$SMTORP_PID" ] && kill -0 "$SMTORP_PID" 2>/dev/null; then
        kill -TERM "$SMTORP_PID"
        for _ in $(seq 100); do kill -0 "$SMTORP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SMTORP_PID" 2>/dev/null || true
        wait "$SMTORP_PID" 2>/dev/null || true
    fi
    SMTORP_PID=""
}

stop_postfix() {
    [ -n "$PF_DIR" ] && [ -f "$PF_DIR/etc/main.cf" ] || return 0
    postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1 || true
    local pid
    for _ in $(seq 50); do
        [ -f "$PF_DIR/spool/pid/master.pid" ] || break
        pid="$(tr -d ' ' < "$PF_DIR/spool/pid/master.pid" 2>/dev/null)"
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    pid="$(tr -d ' ' < "$PF_DIR/spool/pid/master.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        postfix -c "$PF_DIR/etc" abort >/dev/null 2>&1 || true
    fi
    PF_DIR=""
}

cleanup() {
    set +e
    for pid in $LOAD_PIDS; do kill "$pid" 2>/dev/null; done
    stop_mem
    stop_smtorp
    stop_postfix
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

make_onion() {
    python3 - <<'EOF'
import base64, hashlib, os
pub = os.urandom(32)
chk = hashlib.sha3_256(b".onion checksum" + pub + b"\x03").digest()[:2]
print(base64.b32encode(pub + chk + b"\x03").decode().lower() + ".onion")
EOF
}

wait_port() { # port timeout
    local deadline=$((SECONDS + $2))
    while ! python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),timeout=1)" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.1
    done
}

# Memory of a process tree, sampled every 0.2 s until SIGTERM; then prints
# "max_sum_rss_kb max_sum_pss_kb" (sums over the root and its descendants).
cat >"$WORK/memwatch.py" <<'EOF'
import os, signal, sys, time
root = int(sys.argv[1]); out = sys.argv[2]
best = [0, 0]
def tree():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    todo, seen = [root], []
    while todo:
        p = todo.pop(); seen.append(p); todo += kids.get(p, [])
    return seen
def field(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
def done(*_):
    with open(out, "w") as f:
        f.write(f"{best[0]} {best[1]}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    pids = tree()
    rss = sum(field(f"/proc/{p}/status", "VmRSS:") for p in pids)
    pss = sum(field(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    best[0] = max(best[0], rss); best[1] = max(best[1], pss)
    time.sleep(0.2)
EOF

# Waits until a folder holds N entries; prints the seconds since T0 (a time.time() value).
cat >"$WORK/waitn.py" <<'EOF'
import os, sys, time
folder, n, t0, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
def count():
    try:
        return sum(1 for _ in os.scandir(folder))
    except FileNotFoundError:
        return 0
while True:
    c = count()
    if c >= n:
        print(f"{time.time() - t0:.3f}"); sys.exit(0)
    if time.time() - t0 > timeout:
        print(f"only {c} of {n}", file=sys.stderr); sys.exit(1)
    time.sleep(0.02 if c >= 0.9 * n else 0.1)
EOF

# Starts the load in the background (sets LOAD_PIDS): load port
start_load() {
    local load="$1" port="$2" log="$3"
    local common=(-l "$SIZE" -M client.example -f "sender@$SENDER_ONION" -t "alice@$ONION")
    LOAD_PIDS=""
    if [ "$load" = single ]; then
        smtp-source -s "$SESSIONS" -m "$N" "${common[@]}" "127.0.0.1:$port" >>"$log" 2>&1 &
        LOAD_PIDS="$!"
    elif [ "$PER_CONN" = 0 ]; then
        # Each session keeps its connection for all its messages (N / SESSIONS).
        smtp-source -d -s "$SESSIONS" -m "$N" "${common[@]}" "127.0.0.1:$port" >>"$log" 2>&1 &
        LOAD_PIDS="$!"
    else
        local w share left k
        for w in $(seq "$SESSIONS"); do
            # N split over the workers; each sends its share PER_CONN per connection.
            share=$(( N / SESSIONS + (w <= N % SESSIONS ? 1 : 0) ))
            (
                left=$share
                while [ "$left" -gt 0 ]; do
                    k=$(( left < PER_CONN ? left : PER_CONN ))
                    smtp-source -d -s 1 -m "$k" "${common[@]}" "127.0.0.1:$port" >>"$log.$w" 2>&1 || exit 1
                    left=$(( left - k ))
                done
            ) &
            LOAD_PIDS="$LOAD_PIDS $!"
        done
    fi
}

# Runs one load against port, waits for N files in newdir; sets ELAPSED (seconds).
run_load() { # load port maildir-new log
    local load="$1" port="$2" newdir="$3" log="$4"
    local t0 rc=0 pid
    t0="$(python3 -c 'import time; print(time.time())')"
    start_load "$load" "$port" "$log"
    ELAPSED="$(python3 "$WORK/waitn.py" "$newdir" "$N" "$t0" "$TIMEOUT")" || rc=$?
    for pid in $LOAD_PIDS; do
        wait "$pid" || echo "warning: a load process exited with an error: $(tail -2 "$log"* 2>/dev/null | tail -2)" >&2
    done
    LOAD_PIDS=""
    [ "$rc" = 0 ] || die "$load: not all $N messages delivered within ${TIMEOUT}s (KEEP=1 keeps $WORK)"
}

ONION="$(make_onion)"
SENDER_ONION="$(make_onion)"

if [ -n "${SMTORP_BIN:-}" ]; then
    BIN="$SMTORP_BIN"
else
    echo "== building smtorp (release)"
    command -v cargo >/dev/null || die "cargo not found (or set SMTORP_BIN)"
    (cd "$REPO" && cargo build --release -p smtorp) >&2
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/smtorp"
fi
[ -x "$BIN" ] || die "no smtorp binary at $BIN"

# One smtorp run (in this shell, so that the EXIT trap knows its processes): sets RESULT
# to "seconds vmhwm_kb max_rss_kb max_pss_kb".
smtorp_run() { # load dir
    local load="$1" dir="$2" port hwm mem
    port="$(free_port)"
    mkdir -p "$dir"
    cat >"$dir/smtorp.toml" <<EOF
data_dir = "$dir/data"
[onion]
enabled = false
[smtp]
listen = ["127.0.0.1:$port"]
max_sessions = 200
[submission]
listen = []
[local]
domains = ["$ONION"]
users = ["alice"]
[log]
level = "warn"
EOF
    if [ -n "${CONCURRENCY:-}" ]; then
        printf '[delivery]\nconcurrency = %s\n' "$CONCURRENCY" >>"$dir/smtorp.toml"
    fi
    "$BIN" --config "$dir/smtorp.toml" init >/dev/null
    "$BIN" --config "$dir/smtorp.toml" run >"$dir/smtorp.log" 2>&1 &
    SMTORP_PID=$!
    wait_port "$port" 20 || die "smtorp did not start: $(tail -5 "$dir/smtorp.log")"
    python3 "$WORK/memwatch.py" "$SMTORP_PID" "$dir/mem" </dev/null >/dev/null 2>&1 & MEM_PID=$!
    run_load "$load" "$port" "$dir/data/mail/alice/new" "$dir/source.log"
    hwm="$(awk '/^VmHWM:/ {print $2}' "/proc/$SMTORP_PID/status")"
    stop_mem
    mem="$(cat "$dir/mem")"
    stop_smtorp
    RESULT="$ELAPSED $hwm $mem"
}

# One Postfix run (its own config, queue and data directories): sets RESULT to
# "seconds max_rss_kb max_pss_kb".
postfix_run() { # load dir
    local load="$1" port mem master
    PF_DIR="$2"
    port="$(free_port)"
    mkdir -p "$PF_DIR/etc" "$PF_DIR/spool" "$PF_DIR/data" "$PF_DIR/vmail"
    chown root:root "$PF_DIR/spool"
    chown postfix:postfix "$PF_DIR/data"
    chown 65534:65534 "$PF_DIR/vmail"
    printf 'alice@%s alice/\n' "$ONION" >"$PF_DIR/etc/vmailbox"
    # This instance's own settings, then the ones shared with tests/test_postfix.py.
    {
        cat <<EOF
config_directory = $PF_DIR/etc
queue_directory = $PF_DIR/spool
data_directory = $PF_DIR/data
syslog_name = postfix-bench
maillog_file = $PF_DIR/maillog
maillog_file_prefixes = $PF_DIR
myhostname = bench.localdomain
myorigin = \$myhostname
relay_domains =
virtual_mailbox_domains = $ONION
virtual_mailbox_base = $PF_DIR/vmail
virtual_mailbox_maps = texthash:$PF_DIR/etc/vmailbox
message_size_limit = 52428800
virtual_mailbox_limit = 0
EOF
        cat "$REPO/tests/data/postfix-main.cf"
    } >"$PF_DIR/etc/main.cf"
    # The services are shared with tests/test_postfix.py.
    {
        echo "127.0.0.1:$port inet n - n - - smtpd"
        cat "$REPO/tests/data/postfix-master.cf"
    } >"$PF_DIR/etc/master.cf"
    postfix -c "$PF_DIR/etc" set-permissions >"$PF_DIR/setup.log" 2>&1 \
        || die "postfix set-permissions failed: $(tail -5 "$PF_DIR/setup.log")"
    postfix -c "$PF_DIR/etc" check >>"$PF_DIR/setup.log" 2>&1 \
        || die "postfix check failed: $(tail -5 "$PF_DIR/setup.log")"
    postfix -c "$PF_DIR/etc" start >>"$PF_DIR/setup.log" 2>&1 \
        || die "postfix start failed: $(tail -5 "$PF_DIR/setup.log") $(tail -5 "$PF_DIR/maillog" 2>/dev/null)"
    wait_port "$port" 20 || die "postfix did not listen on $port: $(tail -5 "$PF_DIR/maillog" 2>/dev/null)"
    master="$(tr -d ' ' < "$PF_DIR/spool/pid/master.pid")"
    python3 "$WORK/memwatch.py" "$master" "$PF_DIR/mem" </dev/null >/dev/null 2>&1 & MEM_PID=$!
    run_load "$load" "$port" "$PF_DIR/vmail/alice/new" "$PF_DIR/source.log"
    stop_mem
    mem="$(cat "$PF_DIR/mem")"
    stop_postfix
    RESULT="$ELAPSED $mem"
}

echo "== smtorp $BIN vs postfix $(postconf -d -h mail_version): N=$N x $SIZE B, $SESSIONS sessions, $RUNS runs, loads: $LOADS (multi: $([ "$PER_CONN" = 0 ] && echo "$((N / SESSIONS))" || echo "$PER_CONN") per connection)"
[ -z "${CONCURRENCY:-}" ] || echo "== smtorp [delivery] concurrency = $CONCURRENCY"
echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
RESULTS="$WORK/results"
: >"$RESULTS"
for load in $LOADS; do
    for run in $(seq "$RUNS"); do
        dir="$WORK/$load-$run"
        if [ $((run % 2)) = 1 ]; then
            smtorp_run "$load" "$dir/smtorp"; s="$RESULT"
            postfix_run "$load" "$dir/postfix"; p="$RESULT"
        else
            postfix_run "$load" "$dir/postfix"; p="$RESULT"
            smtorp_run "$load" "$dir/smtorp"; s="$RESULT"
        fi
        echo "$load $run $s $p $(cut -d' ' -f1 /proc/loadavg)" >>"$RESULTS"
        read -r st shwm _ _ <<<"$s"
        read -r pt _ _ <<<"$p"
        python3 -c "n=$N; print(f'   {\"$load\":6} run $run: smtorp {$st:7.2f} s {n/$st:7.1f} msg/s  postfix {$pt:7.2f} s {n/$pt:7.1f} msg/s  ratio {$pt/$st:.2f}  (smtorp VmHWM {$shwm/1024:.0f} MB)')"
    done
done
echo "== load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$N" "$RESULTS" <<'EOF'
import statistics, sys
n = int(sys.argv[1])
rows = [l.split() for l in open(sys.argv[2]) if l.strip()]
print()
print("| load | run | smtorp msg/s | Postfix msg/s | smtorp / Postfix | smtorp VmHWM | smtorp RSS / PSS (sampled) | Postfix RSS / PSS (sum over processes, sampled) | load avg |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
by_load = {}
for load, run, st, hwm, srss, spss, pt, prss, ppss, la in rows:
    st, pt = float(st), float(pt)
    ratio = pt / st
    by_load.setdefault(load, []).append((n / st, n / pt, ratio, int(hwm), int(srss), int(spss), int(prss), int(ppss)))
    mb = lambda kb: f"{int(kb) / 1024:.0f} MB"
    print(f"| {load} | {run} | {n / st:.0f} | {n / pt:.0f} | {ratio:.2f} | {mb(hwm)} | {mb(srss)} / {mb(spss)} | {mb(prss)} / {mb(ppss)} | {la} |")
print()
for load, r in by_load.items():
    med = statistics.median(x[2] for x in r)
    print(f"{load}: median smtorp/Postfix {med:.2f} (runs: {', '.join(f'{x[2]:.2f}' for x in r)}); "
          f"median msg/s smtorp {statistics.median(x[0] for x in r):.0f}, Postfix {statistics.median(x[1] for x in r):.0f}; "
          f"peak smtorp VmHWM {max(x[3] for x in r) / 1024:.0f} MB, PSS {max(x[5] for x in r) / 1024:.0f} MB; "
          f"Postfix peak summed RSS {max(x[6] for x in r) / 1024:.0f} MB, PSS {max(x[7] for x in r) / 1024:.0f} MB")
EOF
