#!/usr/bin/env bash
# Benchmark: one large upload into a local S3 server, four ways, same file, same server:
#   a direct multipart client (aws-sdk-s3, the bridge's part size and concurrency),
#   curl over FTP through the bridge, OpenSSH sftp through the bridge (with the cipher it
#   picks by default, aes128-ctr, and with aes128-gcm@openssh.com),
#   OpenSSH sftp through `rclone serve sftp --vfs-cache-mode off` (the peer).
# Reports throughput, ratio to direct, server CPU seconds per GiB and each server's peak RSS
# during one upload (VmHWM, reset before every upload).
# Usage: bench/run.sh [SIZE_MIB] (default 1024). The S3 server's files live on tmpfs
# (/dev/shm) when there is one, so disk writeback does not add noise; BENCH_STORE_DIR moves it.
# PROFILE=1 adds one more upload per path under `perf record -a` and prints where the
# machine's CPU went: per process, then the bridge's and the S3 server's hottest functions.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
ROUNDS=${ROUNDS:-3}
STORE_PORT=${STORE_PORT:-19000}
FTP_PORT=${FTP_PORT:-19021}
METRICS_PORT=${METRICS_PORT:-19100}
SFTP_PORT=${SFTP_PORT:-19022}
RCLONE_PORT=${RCLONE_PORT:-19023}
missing=()
for tool in curl rclone sftp; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ "${PROFILE:-}" != 1 ] || command -v perf >/dev/null || missing+=(perf)
[ ${#missing[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq curl rclone openssh-client $([ "${PROFILE:-}" = 1 ] && echo linux-perf) >/dev/null; }
cargo build --release --quiet --bin ingest-bridge --example direct-upload
BIN=target/release/ingest-bridge
DIRECT=target/release/examples/direct-upload

WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}")
PIDS=()
STORE_BASE=${BENCH_STORE_DIR:-$([ -d /dev/shm ] && echo /dev/shm || echo "$WORK")}
STORE=$(mktemp -d -p "$STORE_BASE")
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK" "$STORE"' EXIT

"$BIN" embedded-store --root "$STORE" --listen "127.0.0.1:$STORE_PORT" >"$WORK/store.log" 2>&1 &
STORE_PID=$!
PIDS+=($STORE_PID)
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/file"

HASH=$(printf 'bench' | "$BIN" hash-password)
ssh-keygen -q -t ed25519 -N "" -f "$WORK/id"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/rclone_host_key"
cat >"$WORK/config.toml" <<TOML
[server]
data_dir = "$WORK/data"
[ftp]
listen = "127.0.0.1:$FTP_PORT"
passive_ports = "42000-42100"
[sftp]
listen = "127.0.0.1:$SFTP_PORT"
host_keys = ["$WORK/data/host_key"]
[storage]
endpoint = "http://127.0.0.1:$STORE_PORT"
access_key_id = "ingest-bridge"
secret_access_key = "ingest-bridge-secret"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[[users]]
username = "bench"
password_hash = "$HASH"
public_keys = ["$(cat "$WORK/id.pub")"]
permissions = ["upload", "list", "delete"]
TOML
# shellcheck source=bench/proc.sh
source bench/proc.sh
start_bridge
S3_REMOTE=":s3,provider=Other,endpoint='http://127.0.0.1:$STORE_PORT',access_key_id=ingest-bridge,secret_access_key=ingest-bridge-secret,force_path_style=true:ingest"
env -u AWS_CA_BUNDLE rclone serve sftp "$S3_REMOTE" --addr "127.0.0.1:$RCLONE_PORT" --user bench --authorized-keys "$WORK/id.pub" \
  --vfs-cache-mode off --key "$WORK/rclone_host_key" >"$WORK/rclone.log" 2>&1 &
RCLONE=$!
PIDS+=($RCLONE)
sleep 2
SSH_OPTS=(-i "$WORK/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR)

max() { awk -v x="$1" -v y="$2" 'BEGIN { print (y > x) ? y : x }'; }

# time_upload PID COMMAND...: runs the upload, prints "MiB/s CPU-seconds-of-PID peak-RSS-MiB".
time_upload() {
  local pid=$1
  shift
  local cpu0 t0 t1 cpu1
  echo 5 >"/proc/$pid/clear_refs" # resets VmHWM: the peak of this upload alone
  cpu0=$(cpu_seconds "$pid")
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  cpu1=$(cpu_seconds "$pid")
  awk -v s="$SIZE_MIB" -v a="$t0" -v z="$t1" -v c0="$cpu0" -v c1="$cpu1" -v r="$(peak_rss_mib "$pid")" \
    'BEGIN { printf "%.1f %.2f %s", s / (z - a), c1 - c0, r }'
}

best_direct=0
declare -A best=() cpu=() rss=()
record() { # record NAME "MiB/s CPU RSS": keeps the fastest round, and the highest RSS of all
  local speed seconds peak
  read -r speed seconds peak <<<"$2"
  if awk -v x="${best[$1]:-0}" -v y="$speed" 'BEGIN { exit !(y > x) }'; then best[$1]=$speed; cpu[$1]=$seconds; fi
  rss[$1]=$(max "${rss[$1]:-0}" "$peak")
}
for round in $(seq 1 "$ROUNDS"); do
  d=$("$DIRECT" "http://127.0.0.1:$STORE_PORT" ingest "direct-$round" "$WORK/file" 16 4 | sed -n 's/.*mib_per_s=//p')
  best_direct=$(max "$best_direct" "$d")
  f=$(time_upload "$BRIDGE" curl -sS -T "$WORK/file" "ftp://bench:bench@127.0.0.1:$FTP_PORT/ftp-$round")
  record ftp "$f"
  s=$(time_upload "$BRIDGE" sftp "${SSH_OPTS[@]}" -P "$SFTP_PORT" -b - bench@127.0.0.1 <<<"put $WORK/file sftp-$round")
  record sftp "$s"
  g=$(time_upload "$BRIDGE" sftp -c aes128-gcm@openssh.com "${SSH_OPTS[@]}" -P "$SFTP_PORT" -b - bench@127.0.0.1 <<<"put $WORK/file gcm-$round")
  record gcm "$g"
  r=$(time_upload "$RCLONE" sftp "${SSH_OPTS[@]}" -P "$RCLONE_PORT" -b - bench@127.0.0.1 <<<"put $WORK/file rclone-$round")
  record rclone "$r"
  echo "round $round: direct $d MiB/s; ftp ${f%% *} MiB/s; sftp ${s%% *} MiB/s; sftp-gcm ${g%% *} MiB/s; rclone serve sftp ${r%% *} MiB/s"
  rm -f "$STORE/ingest/"*-"$round"
done
ratio() { awk -v b="$1" -v d="$best_direct" 'BEGIN { printf "%.2f", b / d }'; }
per_gib() { awk -v c="$1" -v s="$SIZE_MIB" 'BEGIN { printf "%.2f", c * 1024 / s }'; }

cat <<MD

Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); file: ${SIZE_MIB} MiB; best of $ROUNDS rounds; S3 server: \`ingest-bridge embedded-store\` (s3s-fs) on loopback, files in $STORE_BASE.
Command: \`bench/run.sh $SIZE_MIB\`

| path | throughput | vs direct | server CPU per GiB | server peak RSS, one upload |
|---|---|---|---|---|
| direct multipart (aws-sdk-s3, 16 MiB parts × 4) | ${best_direct} MiB/s | 1.00 | — | — |
| curl → FTP → ingest-bridge → S3 | ${best[ftp]} MiB/s | $(ratio "${best[ftp]}") | $(per_gib "${cpu[ftp]}") s | ${rss[ftp]} MiB |
| OpenSSH sftp (aes128-ctr) → ingest-bridge → S3 | ${best[sftp]} MiB/s | $(ratio "${best[sftp]}") | $(per_gib "${cpu[sftp]}") s | ${rss[sftp]} MiB |
| OpenSSH sftp (aes128-gcm) → ingest-bridge → S3 | ${best[gcm]} MiB/s | $(ratio "${best[gcm]}") | $(per_gib "${cpu[gcm]}") s | ${rss[gcm]} MiB |
| OpenSSH sftp (chacha20) → rclone serve sftp (vfs-cache-mode off) → S3 | ${best[rclone]} MiB/s | $(ratio "${best[rclone]}") | $(per_gib "${cpu[rclone]}") s | ${rss[rclone]} MiB |
MD

[ "${PROFILE:-}" = 1 ] || exit 0
# profile NAME COMMAND...: one upload under a system-wide perf record; prints each party's
# share of the machine's CPU time (idle included), then the hottest functions of the bridge
# and of the S3 server.
profile() {
  local name=$1 data="$WORK/$1.perf"
  shift
  perf record -q -a -F 499 -g -o "$data" -- "$@" >/dev/null 2>"$WORK/$name.perf.log"
  share() { # share FILTER...: percent of all samples that pass the filter
    perf report -q -i "$data" --no-children "$@" --sort pid -g none --stdio 2>/dev/null |
      awk '{ gsub("%", "", $1); s += $1 } END { printf "%.1f %%", s }'
  }
  echo
  echo "#### $name: share of the machine's CPU time (2 cores × wall time = 100 %)"
  echo "bridge $(share --pid "$BRIDGE"); S3 server $(share --pid "$STORE_PID");" \
    "client $(share --comm curl,ssh,sftp,direct-upload); idle $(share --comm swapper)"
  for who in "bridge:$BRIDGE" "S3 server:$STORE_PID"; do
    echo "#### $name: the ${who%%:*}'s hottest functions (percent of all samples)"
    perf report -q -i "$data" --no-children --pid "${who##*:}" --sort dso,symbol -g none --stdio \
      >"$WORK/$name.top" 2>/dev/null || true
    awk 'NF && n++ < 12' "$WORK/$name.top" | cut -c1-110
  done
}
profile direct "$DIRECT" "http://127.0.0.1:$STORE_PORT" ingest direct-profile "$WORK/file" 16 4
profile ftp curl -sS -T "$WORK/file" "ftp://bench:bench@127.0.0.1:$FTP_PORT/ftp-profile"
profile sftp-gcm sftp -c aes128-gcm@openssh.com "${SSH_OPTS[@]}" -P "$SFTP_PORT" -b - bench@127.0.0.1 <<<"put $WORK/file gcm-profile"
