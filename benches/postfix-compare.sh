#!/usr/bin/env bash
# End-to-end throughput: smtorp vs a throwaway local Postfix, both fed by Postfix's
# smtp-source over loopback and both delivering into a Maildir.
#
#   benches/postfix-compare.sh [N]          (or N=... benches/postfix-compare.sh)
#
# Environment: N (messages, default 5000), SESSIONS (default 20), SIZE (bytes per message,
# default 10240), TIMEOUT (seconds per MTA, default 600), SMTORP_BIN (skip the release build
# and use this binary), KEEP=1 (keep the temp dir).
#
# For each MTA: wall time from the start of smtp-source until N files are in alice's
# Maildir new/, hence msg/s end to end (accept + queue + local delivery). Also smtorp's peak
# RSS (VmHWM). Run by hand (needs root for the Postfix instance); not a CI pass/fail check.
set -euo pipefail

N="${1:-${N:-5000}}"
SESSIONS="${SESSIONS:-20}"
SIZE="${SIZE:-10240}"
TIMEOUT="${TIMEOUT:-600}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "postfix-compare: $*" >&2; exit 1; }
for tool in smtp-source postfix postconf python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[ "$(id -u)" = 0 ] || die "must run as root (throwaway Postfix instance)"

WORK="$(mktemp -d /tmp/smtorp-bench.XXXXXX)"
chmod 755 "$WORK"
SMTORP_PID=""
PF_DIR="$WORK/postfix"

cleanup() {
    set +e
    if [ -n "$SMTORP_PID" ] && kill -0 "$SMTORP_PID" 2>/dev/null; then
        kill -TERM "$SMTORP_PID"
        for _ in $(seq 50); do kill -0 "$SMTORP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SMTORP_PID" 2>/dev/null
    fi
    if [ -f "$PF_DIR/etc/main.cf" ]; then
        postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1
        # Wait (bounded) for the instance's master to go away.
        for _ in $(seq 50); do
            [ -f "$PF_DIR/spool/pid/master.pid" ] || break
            pid="$(tr -d ' ' < "$PF_DIR/spool/pid/master.pid" 2>/dev/null)"
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        pid="$(tr -d ' ' < "$PF_DIR/spool/pid/master.pid" 2>/dev/null)"
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && postfix -c "$PF_DIR/etc" abort >/dev/null 2>&1
    fi
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

count_new() { # number of files in a Maildir's new/
    if [ -d "$1" ]; then find "$1" -mindepth 1 -maxdepth 1 -type f | wc -l; else echo 0; fi
}

wait_port() { # port timeout
    local deadline=$((SECONDS + $2))
    while ! python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),timeout=1)" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.1
    done
}

now() { date +%s.%N; }

# Runs smtp-source against PORT, polls DIR until N files; prints the elapsed seconds.
run_load() { # name port maildir-new
    local name="$1" port="$2" newdir="$3"
    local t0 t1 n src_rc
    t0="$(now)"
    smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -M client.example \
        -f "sender@$SENDER_ONION" -t "alice@$ONION" "127.0.0.1:$port" \
        >"$WORK/$name-source.log" 2>&1 &
    local src_pid=$!
    local deadline=$((SECONDS + TIMEOUT))
    while :; do
        n="$(count_new "$newdir")"
        [ "$n" -ge "$N" ] && break
        if [ $SECONDS -ge $deadline ]; then
            kill "$src_pid" 2>/dev/null || true
            die "$name: only $n of $N messages delivered after ${TIMEOUT}s (see $WORK, KEEP=1)"
        fi
        sleep 0.05
    done
    t1="$(now)"
    wait "$src_pid" && src_rc=0 || src_rc=$?
    [ "$src_rc" = 0 ] || echo "warning: smtp-source for $name exited with $src_rc: $(tail -3 "$WORK/$name-source.log")" >&2
    python3 -c "print(f'{$t1 - $t0:.3f}')"
}

ONION="$(make_onion)"
SENDER_ONION="$(make_onion)"

# ---------------------------------------------------------------------------------------
# smtorp
# ---------------------------------------------------------------------------------------
if [ -n "${SMTORP_BIN:-}" ]; then
    BIN="$SMTORP_BIN"
else
    echo "== building smtorp (release)"
    (cd "$REPO" && cargo build --release -p smtorp) >&2
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/smtorp"
fi
[ -x "$BIN" ] || die "no smtorp binary at $BIN"

S_PORT="$(free_port)"
S_DIR="$WORK/smtorp"
mkdir -p "$S_DIR"
cat >"$S_DIR/smtorp.toml" <<EOF
data_dir = "$S_DIR/data"
[onion]
enabled = false
[smtp]
listen = ["127.0.0.1:$S_PORT"]
max_sessions = 200
[submission]
listen = []
[local]
domains = ["$ONION"]
users = ["alice"]
[log]
level = "warn"
EOF
"$BIN" --config "$S_DIR/smtorp.toml" init >/dev/null
"$BIN" --config "$S_DIR/smtorp.toml" run 2>"$S_DIR/smtorp.log" &
SMTORP_PID=$!
wait_port "$S_PORT" 20 || die "smtorp did not start: $(tail -5 "$S_DIR/smtorp.log")"

echo "== smtorp: $N messages x $SIZE bytes, $SESSIONS sessions -> 127.0.0.1:$S_PORT"
S_TIME="$(run_load smtorp "$S_PORT" "$S_DIR/data/mail/alice/new")"
S_RSS="$(awk '/^VmHWM:/ {print $2, $3}' "/proc/$SMTORP_PID/status")"
kill -TERM "$SMTORP_PID"
S_RC=0
wait "$SMTORP_PID" || S_RC=$?
SMTORP_PID=""
[ "$S_RC" = 0 ] || echo "warning: smtorp exited with $S_RC after SIGTERM" >&2
S_COUNT="$(count_new "$S_DIR/data/mail/alice/new")"

# ---------------------------------------------------------------------------------------
# Postfix (its own config, queue and data directories)
# ---------------------------------------------------------------------------------------
P_PORT="$(free_port)"
mkdir -p "$PF_DIR/etc" "$PF_DIR/spool" "$PF_DIR/data" "$PF_DIR/vmail"
chown root:root "$PF_DIR/spool"
chown postfix:postfix "$PF_DIR/data"
chown 65534:65534 "$PF_DIR/vmail"
printf 'alice@%s alice/\n' "$ONION" >"$PF_DIR/etc/vmailbox"
cat >"$PF_DIR/etc/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $PF_DIR/etc
queue_directory = $PF_DIR/spool
data_directory = $PF_DIR/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file = $PF_DIR/maillog
maillog_file_prefixes = $PF_DIR
myhostname = bench.localdomain
mydomain = localdomain
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
relay_domains =
local_transport = error:no local delivery
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
biff = no
virtual_mailbox_domains = $ONION
virtual_mailbox_base = $PF_DIR/vmail
virtual_mailbox_maps = texthash:$PF_DIR/etc/vmailbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100
message_size_limit = 52428800
virtual_mailbox_limit = 0
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
EOF
# The services are shared with tests/test_postfix.py.
{
    echo "127.0.0.1:$P_PORT inet n - n - - smtpd"
    cat "$REPO/tests/data/postfix-master.cf"
} >"$PF_DIR/etc/master.cf"
# Creates the queue and data directories with their owners and modes.
postfix -c "$PF_DIR/etc" set-permissions >"$PF_DIR/setup.log" 2>&1 \
    || die "postfix set-permissions failed: $(tail -5 "$PF_DIR/setup.log")"
postfix -c "$PF_DIR/etc" check >>"$PF_DIR/setup.log" 2>&1 \
    || die "postfix check failed: $(tail -5 "$PF_DIR/setup.log")"
postfix -c "$PF_DIR/etc" start >>"$PF_DIR/setup.log" 2>&1 \
    || die "postfix start failed: $(tail -5 "$PF_DIR/setup.log") $(tail -5 "$PF_DIR/maillog" 2>/dev/null)"
wait_port "$P_PORT" 20 || die "postfix did not listen on $P_PORT: $(tail -5 "$PF_DIR/maillog" 2>/dev/null)"

echo "== postfix $(postconf -d -h mail_version): $N messages x $SIZE bytes, $SESSIONS sessions -> 127.0.0.1:$P_PORT"
P_TIME="$(run_load postfix "$P_PORT" "$PF_DIR/vmail/alice/new")"
P_COUNT="$(count_new "$PF_DIR/vmail/alice/new")"
postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1 || true

# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------
python3 - "$N" "$SIZE" "$SESSIONS" "$S_TIME" "$P_TIME" "$S_RSS" "$S_COUNT" "$P_COUNT" "$BIN" <<'EOF'
import sys
n, size, sessions = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s_t, p_t = float(sys.argv[4]), float(sys.argv[5])
rss, s_count, p_count, binary = sys.argv[6], sys.argv[7], sys.argv[8], sys.argv[9]
s_rate, p_rate = n / s_t, n / p_t
print()
print("=" * 64)
print(f" smtorp vs Postfix: {n} msgs x {size} B, {sessions} sessions, loopback")
print("-" * 64)
print(f" smtorp  : {s_t:8.2f} s  {s_rate:9.1f} msg/s  ({s_count} in Maildir)")
print(f" postfix : {p_t:8.2f} s  {p_rate:9.1f} msg/s  ({p_count} in Maildir)")
print(f" ratio smtorp/postfix (msg/s): {s_rate / p_rate:.2f}")
print(f" smtorp peak RSS (VmHWM): {rss}")
print(f" smtorp binary: {binary}")
print("=" * 64)
EOF
