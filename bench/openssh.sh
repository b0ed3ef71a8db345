#!/usr/bin/env bash
# Many OpenSSH `sftp` uploads at once into a bridge with a small memory budget: the bridge's
# peak RSS shows whether SFTP clients are held back by the SSH window (bounded) or can queue
# data in the bridge outside the budget. OpenSSH keeps 64 writes of 255 KiB in flight.
# Usage: bench/openssh.sh [CLIENTS] [FILE_MIB] [MEMORY_LIMIT] (defaults 50 200 64MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-50}
FILE_MIB=${2:-200}
LIMIT=${3:-64MiB}
STORE_PORT=${STORE_PORT:-19300}
SFTP_PORT=${SFTP_PORT:-19322}
command -v sftp >/dev/null || { apt-get update -qq && apt-get install -y -qq openssh-client >/dev/null; }
cargo build --release --quiet --bin ingest-bridge
BIN=${CARGO_TARGET_DIR:-target}/release/ingest-bridge
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}")
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/store"
"$BIN" embedded-store --root "$WORK/store" --listen "127.0.0.1:$STORE_PORT" >"$WORK/store.log" 2>&1 &
PIDS+=($!)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/id"
cat >"$WORK/config.toml" <<TOML
[server]
data_dir = "$WORK/data"
max_connections = 5000
max_connections_per_ip = 5000
[ftp]
enabled = false
[sftp]
listen = "127.0.0.1:$SFTP_PORT"
host_keys = ["$WORK/data/host_key"]
[storage]
endpoint = "http://127.0.0.1:$STORE_PORT"
access_key_id = "ingest-bridge"
secret_access_key = "ingest-bridge-secret"
memory_limit = "$LIMIT"
[[users]]
username = "bench"
public_keys = ["$(cat "$WORK/id.pub")"]
permissions = ["upload", "list", "mkdir"]
TOML
# shellcheck source=bench/proc.sh
source bench/proc.sh
start_bridge

head -c "$((FILE_MIB * 1048576))" /dev/urandom >"$WORK/file.bin"
SHA=$(sha256sum "$WORK/file.bin" | cut -d' ' -f1)
echo 5 >"/proc/$BRIDGE/clear_refs"
start=$(date +%s.%N)
CLIENT_PIDS=()
for i in $(seq 1 "$CLIENTS"); do
  sftp -q -i "$WORK/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -P "$SFTP_PORT" \
    -b - bench@127.0.0.1 <<<"put $WORK/file.bin /f$i.bin" >/dev/null 2>"$WORK/client$i.err" &
  CLIENT_PIDS+=($!)
done
failed=0
for p in "${CLIENT_PIDS[@]}"; do wait "$p" || failed=$((failed + 1)); done
seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
rss=$(peak_rss_mib "$BRIDGE")
sleep 2
whole=$(grep -c "\"sha256\":\"$SHA\"" "$WORK/data/events.jsonl" || true)

cat <<MD
Machine: $(nproc) cores; S3 server: \`ingest-bridge embedded-store\` (s3s-fs) on loopback; bridge \`memory_limit = "$LIMIT"\`.
Command: \`bench/openssh.sh $CLIENTS $FILE_MIB $LIMIT\`

| clients | file | completed whole | failed | wall time | MiB/s | bridge peak RSS |
|---|---|---|---|---|---|---|
| $CLIENTS OpenSSH sftp | $FILE_MIB MiB | $whole | $failed | $seconds s | $(awk -v n="$CLIENTS" -v m="$FILE_MIB" -v s="$seconds" 'BEGIN { printf "%.1f", n * m / s }') | $rss MiB |
MD
[ "$failed" = 0 ] && [ "$whole" = "$CLIENTS" ] || { echo "openssh: uploads failed"; exit 1; }
