#!/usr/bin/env bash
# Benchmark at scale, through the bridge into a local S3 server (s3s-fs, on disk):
#   many small files: FILES of SMALL_KIB KiB over FTP and over SFTP, 16 clients at once;
#   concurrency: UPLOADS uploads of BIG_MIB MiB all at once over FTP, then over SFTP, with
#   memory_limit = 512MiB.
# Every upload's SHA-256 (known to the load generator, bench/load.rs) is checked against its
# completion in the bridge's event log. Reports files/s, MiB/s, the bridge's CPU seconds, its
# peak RSS (VmHWM, reset before each run) and the machine's peak TCP socket memory (sampled
# from /proc/net/sockstat every second: the buffers of clients and bridge alike).
# Usage: bench/scale.sh [FILES] [UPLOADS] [BIG_MIB] (defaults 10000 1000 20; SMALL_KIB=64;
# KEEP_WORK=1 keeps the logs; RECEIVE_BUFFER sets ftp.data_receive_buffer, default auto;
# ONLY="concurrent-sftp ..." runs only the named runs; POLL_ADMIN=1 polls the admin API every
# second during each run with bench/admin_poll.py (the full transfer list and what the status
# page asks) and reports its latencies and answer sizes; ADMIN_PORT, default 19293).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-10000}
UPLOADS=${2:-1000}
BIG_MIB=${3:-20}
SMALL_KIB=${SMALL_KIB:-64}
STORE_PORT=${STORE_PORT:-19200}
FTP_PORT=${FTP_PORT:-19221}
SFTP_PORT=${SFTP_PORT:-19222}
METRICS_PORT=${METRICS_PORT:-19290}
ADMIN_PORT=${ADMIN_PORT:-19293}
ADMIN_TOKEN=${ADMIN_TOKEN:-bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')}
cargo build --release --quiet --bin ingest-bridge --example load
BIN=${CARGO_TARGET_DIR:-target}/release/ingest-bridge
LOAD=${CARGO_TARGET_DIR:-target}/release/examples/load
# 1,000 uploads hold a control and a data connection each, on both sides.
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}")
STORE="$WORK/store"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; [ "${KEEP_WORK:-}" = 1 ] && echo "work dir kept: $WORK" || rm -rf "$WORK"' EXIT
mkdir -p "$STORE"
"$BIN" embedded-store --root "$STORE" --listen "127.0.0.1:$STORE_PORT" >"$WORK/store.log" 2>&1 &
PIDS+=($!)

HASH=$(printf 'bench' | "$BIN" hash-password)
cat >"$WORK/config.toml" <<TOML
[server]
data_dir = "$WORK/data"
max_connections = 5000
max_connections_per_ip = 5000
[ftp]
listen = "127.0.0.1:$FTP_PORT"
passive_ports = "44000-47999"
data_receive_buffer = "${RECEIVE_BUFFER:-auto}"
[sftp]
listen = "127.0.0.1:$SFTP_PORT"
host_keys = ["$WORK/data/host_key"]
[storage]
endpoint = "http://127.0.0.1:$STORE_PORT"
access_key_id = "ingest-bridge"
secret_access_key = "ingest-bridge-secret"
memory_limit = "512MiB"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token = "$ADMIN_TOKEN"
[[users]]
username = "bench"
password_hash = "$HASH"
permissions = ["upload", "list", "mkdir"]
TOML
# shellcheck source=bench/proc.sh
source bench/proc.sh
start_bridge


# verify MANIFEST: every "PATH SHA256" line has a completion with that SHA-256; prints the
# number that do not.
verify() {
  python3 - "$WORK/data/events.jsonl" "$1" <<'PY'
import json, sys
events, manifest = sys.argv[1:3]
seen = {}
try:
    lines = open(events).readlines()
except FileNotFoundError:
    lines = []
for line in lines:
    e = json.loads(line)
    seen[e["path"]] = e["sha256"]
bad = 0
for line in open(manifest):
    if line.strip():
        path, sha = line.split()
        bad += seen.get(path) != sha
print(bad)
PY
}

declare -A result=()
# run NAME PROTOCOL FILES SIZE CLIENTS: one load run; stores "line|cpu|rss|unverified".
run() {
  local name=$1 protocol=$2 files=$3 size=$4 clients=$5 port
  port=$([ "$protocol" = ftp ] && echo "$FTP_PORT" || echo "$SFTP_PORT")
  echo 5 >"/proc/$BRIDGE/clear_refs"
  local cpu0 out cpu1 sampler poller=
  (peak=0; while :; do m=$(tcp_memory_mib); [ "$m" -gt "$peak" ] && peak=$m && echo "$peak" >"$WORK/$name.tcpmem"; sleep 1; done) &
  sampler=$!
  if [ "${POLL_ADMIN:-}" = 1 ]; then
    ADMIN_TOKEN=$ADMIN_TOKEN python3 bench/admin_poll.py "127.0.0.1:$ADMIN_PORT" "$WORK/$name.poll.jsonl" >"$WORK/$name.poll" 2>&1 &
    poller=$!
    PIDS+=("$poller")
  fi
  cpu0=$(cpu_seconds "$BRIDGE")
  out=$("$LOAD" "$protocol" "127.0.0.1:$port" bench bench "$files" "$size" "$clients" "/$name" "$WORK/$name.manifest")
  cpu1=$(cpu_seconds "$BRIDGE")
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  if [ -n "$poller" ]; then
    kill -TERM "$poller"; wait "$poller" || true
    # Reaped: out of the EXIT trap's list (it was added last), whose kill would fail under set -e.
    unset 'PIDS[-1]'
    sed "s/^/$name: /" "$WORK/$name.poll"
  fi
  local rss unverified
  rss=$(peak_rss_mib "$BRIDGE")
  # The event log is written as completions are delivered: give the last ones 30 s.
  for _ in $(seq 1 30); do
    unverified=$(verify "$WORK/$name.manifest")
    [ "$unverified" = 0 ] && break
    sleep 1
  done
  result[$name]="$out|$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.1f", b - a }')|$rss|$unverified|$(cat "$WORK/$name.tcpmem" 2>/dev/null || echo 0)"
  echo "$name: ${result[$name]}"
  rm -rf "${STORE:?}/ingest/$name"
}

ONLY_SET=${ONLY:+1}
ONLY=${ONLY:-small-ftp small-sftp concurrent-ftp concurrent-sftp}
wanted() { [[ " $ONLY " == *" $1 "* ]]; }
wanted small-ftp && run small-ftp ftp "$FILES" "${SMALL_KIB}K" 16
wanted small-sftp && run small-sftp sftp "$FILES" "${SMALL_KIB}K" 16
wanted concurrent-ftp && run concurrent-ftp ftp "$UPLOADS" "${BIG_MIB}M" "$UPLOADS"
wanted concurrent-sftp && run concurrent-sftp sftp "$UPLOADS" "${BIG_MIB}M" "$UPLOADS"

field() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" <<<"${result[$1]%%|*}"; }
part() { cut -d'|' -f"$2" <<<"${result[$1]}"; }
row() {
  printf '| %s | %s of %s | %s | %s files/s | %s MiB/s | %s s | %s MiB | %s MiB | %s |\n' "$2" "$(field "$1" files)" "$3" \
    "$(field "$1" seconds) s" "$(field "$1" files_per_s)" "$(field "$1" mib_per_s)" "$(part "$1" 2)" "$(part "$1" 3)" "$(part "$1" 5)" "$(part "$1" 4)"
}
cat <<MD

Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); S3 server: \`ingest-bridge embedded-store\` (s3s-fs) on loopback, files on disk; bridge \`memory_limit = "512MiB"\`.
Command: \`${RECEIVE_BUFFER:+RECEIVE_BUFFER=$RECEIVE_BUFFER }${POLL_ADMIN:+POLL_ADMIN=$POLL_ADMIN }${ONLY_SET:+ONLY=\"$ONLY\" }bench/scale.sh $FILES $UPLOADS $BIG_MIB\`

| run | completed | wall time | files/s | MiB/s | bridge CPU | bridge peak RSS | peak TCP memory | SHA-256 mismatches |
|---|---|---|---|---|---|---|---|---|
$(
  wanted small-ftp && row small-ftp "${SMALL_KIB} KiB files, FTP, 16 clients" "$FILES"
  wanted small-sftp && row small-sftp "${SMALL_KIB} KiB files, SFTP, 16 clients" "$FILES"
  wanted concurrent-ftp && row concurrent-ftp "${BIG_MIB} MiB files, FTP, all at once" "$UPLOADS"
  wanted concurrent-sftp && row concurrent-sftp "${BIG_MIB} MiB files, SFTP, all at once" "$UPLOADS"
  true
)
MD
if [ "${POLL_ADMIN:-}" = 1 ]; then
  for name in $ONLY; do
    [ -f "$WORK/$name.poll" ] || continue
    printf '\nAdmin API during %s, polled every second (bench/admin_poll.py; latency in ms, sizes in bytes):\n\n' "$name"
    sed 's/^/    /' "$WORK/$name.poll"
  done
fi

# Any failed upload or unconfirmed SHA-256 fails the run (the CI smoke run relies on it).
for name in $ONLY; do
  [ "$(field "$name" failed)" = 0 ] && [ "$(part "$name" 4)" = 0 ] || { echo "scale: $name had failures"; exit 1; }
done
