#!/usr/bin/env bash
# Benchmark: one large upload with curl over FTP through the bridge into a local S3 server,
# beside the same file uploaded straight into that server by a direct multipart client
# (aws-sdk-s3, same part size and concurrency). Reports throughput, their ratio, and the
# bridge's peak RSS and CPU seconds. Usage: bench/run.sh [SIZE_MIB] (default 1024).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
ROUNDS=${ROUNDS:-2}
STORE_PORT=${STORE_PORT:-19000}
FTP_PORT=${FTP_PORT:-19021}
METRICS_PORT=${METRICS_PORT:-19100}
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
cargo build --release --quiet --bin ingest-bridge --example direct-upload
BIN=target/release/ingest-bridge
DIRECT=target/release/examples/direct-upload

WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}")
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK"' EXIT

"$BIN" embedded-store --root "$WORK/store" --listen "127.0.0.1:$STORE_PORT" >"$WORK/store.log" 2>&1 &
PIDS+=($!)
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/file"

HASH=$(printf 'bench' | "$BIN" hash-password)
cat >"$WORK/config.toml" <<TOML
[server]
data_dir = "$WORK/data"
[ftp]
listen = "127.0.0.1:$FTP_PORT"
passive_ports = "42000-42100"
[sftp]
enabled = false
[storage]
endpoint = "http://127.0.0.1:$STORE_PORT"
access_key_id = "ingest-bridge"
secret_access_key = "ingest-bridge-secret"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[[users]]
username = "bench"
password_hash = "$HASH"
permissions = ["upload", "list", "delete"]
TOML
"$BIN" serve --config "$WORK/config.toml" >"$WORK/bridge.out" 2>"$WORK/bridge.err" &
BRIDGE=$!
PIDS+=($BRIDGE)
for _ in $(seq 1 100); do grep -q "ftp listening" "$WORK/bridge.out" 2>/dev/null && break; sleep 0.1; done

cpu_seconds() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
best_direct=0
best_bridge=0
for round in $(seq 1 "$ROUNDS"); do
  d=$("$DIRECT" "http://127.0.0.1:$STORE_PORT" ingest "direct/$round" "$WORK/file" 16 4 | sed -n 's/.*mib_per_s=//p')
  rm -f "$WORK/store/ingest/direct/$round"
  cpu0=$(cpu_seconds "$BRIDGE")
  t0=$(date +%s.%N)
  curl -sS -T "$WORK/file" "ftp://bench:bench@127.0.0.1:$FTP_PORT/bridge-$round"
  t1=$(date +%s.%N)
  cpu1=$(cpu_seconds "$BRIDGE")
  rm -f "$WORK/store/ingest/bridge-$round"
  b=$(awk -v s="$SIZE_MIB" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.1f", s / (z - a) }')
  cpu=$(awk -v a="$cpu0" -v z="$cpu1" 'BEGIN { printf "%.2f", z - a }')
  echo "round $round: direct $d MiB/s, bridge $b MiB/s, bridge CPU ${cpu}s"
  best_direct=$(awk -v x="$best_direct" -v y="$d" 'BEGIN { print (y > x) ? y : x }')
  if awk -v x="$best_bridge" -v y="$b" 'BEGIN { exit !(y > x) }'; then best_bridge=$b; best_cpu=$cpu; fi
done
rss=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$BRIDGE/status")
ratio=$(awk -v b="$best_bridge" -v d="$best_direct" 'BEGIN { printf "%.2f", b / d }')
cpu_per_gib=$(awk -v c="$best_cpu" -v s="$SIZE_MIB" 'BEGIN { printf "%.2f", c * 1024 / s }')

cat <<MD

Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); file: ${SIZE_MIB} MiB; best of $ROUNDS rounds.
Command: \`bench/run.sh $SIZE_MIB\`

| path | throughput | ratio |
|---|---|---|
| direct multipart (aws-sdk-s3, 16 MiB parts × 4) | ${best_direct} MiB/s | 1.00 |
| curl → FTP → ingest-bridge → S3 | ${best_bridge} MiB/s | ${ratio} |

Bridge peak RSS: ${rss} MiB · bridge CPU: ${best_cpu} s for the upload (${cpu_per_gib} s/GiB)
MD
