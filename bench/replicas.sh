#!/usr/bin/env bash
# The cost of shared state: one replica on SQLite against two replicas on one PostgreSQL
# database (uploads spread across both), on this machine, with a platform API stand-in
# (bench/api.rs) receiving every completion through the outbox:
#   small:   FILES files of 64 KiB over FTP, 16 clients (split 8 + 8 across the replicas);
#   big:     one BIG_MIB MiB upload over FTP (the part marks and hash states go to the state
#            store at every 16 MiB part);
#   backlog: BACKLOG completions made dead by an API answering 400, then `ingest-bridge outbox
#            retry --all-dead` with the API answering 200 after 20 ms: the time until the API
#            has every one (the API's pace is notify.concurrency / 20 ms per replica);
#   round trips: 200 small uploads through one replica whose PostgreSQL connection passes a
#            counting proxy (bench/pg_round_trips.py), minus what the replica does idle for
#            as long; and pg_stat_statements' calls per statement during those uploads.
# Every run checks that the API received one distinct id per upload.
# Usage: bench/replicas.sh [FILES] [BIG_MIB] [BACKLOG] (defaults 10000 1024 10000).
# Needs PostgreSQL 15 binaries (/usr/lib/postgresql/15/bin; apt-get install postgresql-15).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-10000}
BIG_MIB=${2:-1024}
BACKLOG=${3:-10000}
PORT_BASE=${PORT_BASE:-19400}
STORE_PORT=$PORT_BASE
API_PORT=$((PORT_BASE + 1))
PG_PORT=$((PORT_BASE + 2))
PROXY_PORT=$((PORT_BASE + 3))
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$PG_BIN/initdb" ] || { echo "replicas: no PostgreSQL at $PG_BIN (apt-get install postgresql-15)"; exit 1; }
cargo build --release --quiet --bin ingest-bridge --example load --example api
BIN=$PWD/${CARGO_TARGET_DIR:-target}/release/ingest-bridge
LOAD=$PWD/${CARGO_TARGET_DIR:-target}/release/examples/load
APIBIN=$PWD/${CARGO_TARGET_DIR:-target}/release/examples/api
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}")
chmod 755 "$WORK"
PIDS=()
PGDATA="$WORK/pg"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# Under `set -e` a failing command would end the trap early (a process already gone): none may.
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$PGDATA/postmaster.pid" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  wait 2>/dev/null || true
  if [ "${KEEP_WORK:-}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

mkdir -p "$WORK/store"
"$BIN" embedded-store --root "$WORK/store" --listen "127.0.0.1:$STORE_PORT" >"$WORK/store.log" 2>&1 &
PIDS+=($!)
"$APIBIN" "127.0.0.1:$API_PORT" >"$WORK/api.log" 2>&1 &
PIDS+=($!)

# PostgreSQL 15 with its defaults (fsync and synchronous_commit on: each commit is durable)
# plus pg_stat_statements.
mkdir -p "$PGDATA"
[ "$(id -u)" = 0 ] && chown postgres "$PGDATA"
as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A trust >"$WORK/initdb.log" 2>&1
as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w start -o \
  "-p $PG_PORT -k $PGDATA -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements" >/dev/null
psql() { "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -X -q -t -A "$@"; }
psql -c "CREATE DATABASE bench" postgres
psql -c "CREATE EXTENSION pg_stat_statements" bench

api() { curl -fsS -X "$1" "http://127.0.0.1:$API_PORT$2"; }
api_stat() { api GET /stats | python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }
for _ in $(seq 1 50); do api GET /stats >/dev/null 2>&1 && break; sleep 0.1; done

HASH=$(printf 'bench' | "$BIN" hash-password)
# config NAME FTP_PORT SFTP_PORT METRICS_PORT STATE_URL PASSIVE: writes $WORK/NAME.toml.
config() {
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1.toml" <<TOML
[server]
data_dir = "$WORK/$1"
max_connections = 5000
max_connections_per_ip = 5000
[ftp]
listen = "127.0.0.1:$2"
passive_ports = "$6"
[sftp]
listen = "127.0.0.1:$3"
host_keys = ["$WORK/$1/host_key"]
[storage]
endpoint = "http://127.0.0.1:$STORE_PORT"
access_key_id = "ingest-bridge"
secret_access_key = "ingest-bridge-secret"
memory_limit = "512MiB"
[notify]
url = "http://127.0.0.1:$API_PORT/complete"
[state]
url = "$5"
[metrics]
listen = "127.0.0.1:$4"
[[users]]
username = "bench"
password_hash = "$HASH"
permissions = ["upload", "list", "mkdir"]
TOML
}
# start NAME: runs serve on $WORK/NAME.toml; waits until it listens.
declare -A PID_OF=()
start() {
  "$BIN" serve --config "$WORK/$1.toml" >"$WORK/$1.out" 2>"$WORK/$1.err" &
  PID_OF[$1]=$!
  PIDS+=($!)
  for _ in $(seq 1 100); do grep -q "sftp listening" "$WORK/$1.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "sftp listening" "$WORK/$1.out" || { echo "replicas: $1 did not start"; cat "$WORK/$1.err"; exit 1; }
}
stop() { kill "${PID_OF[$1]}"; wait "${PID_OF[$1]}" 2>/dev/null || true; }
cpu_seconds() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
# pg_cpu: CPU seconds of the PostgreSQL processes running now (its backends live as long as
# the bridges' pooled connections); machine_busy: busy CPU seconds of the whole machine.
pg_cpu() {
  local t; t=$(getconf CLK_TCK)
  for p in $(pgrep -u postgres); do cat "/proc/$p/stat" 2>/dev/null; done |
    awk -v t="$t" '{ s += $14 + $15 } END { printf "%.1f", s / t }'
}
machine_busy() { awk -v t="$(getconf CLK_TCK)" '/^cpu / { printf "%.1f", ($2 + $3 + $4 + $7 + $8) / t }' /proc/stat; }
field() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" <<<"$1"; }

# wait_delivered N: until the API has N distinct ids (at most 300 s); prints the seconds
# from now until its last answer.
wait_delivered() {
  local t0 unique
  t0=$(date +%s%3N)
  for _ in $(seq 1 3000); do
    unique=$(api_stat unique)
    [ "$unique" -ge "$1" ] && break
    sleep 0.1
  done
  [ "$unique" -ge "$1" ] || { echo "replicas: the API got $unique of $1 completions"; exit 1; }
  awk -v a="$t0" -v b="$(api_stat last_ms)" 'BEGIN { printf "%.2f", (b - a) / 1000 }'
}

# load_on "PORTS" NAME FILES SIZE CLIENTS: FILES uploads split across the FTP ports (CLIENTS
# split too), all at once; prints "files=N failed=N seconds=S files_per_s=F mib_per_s=M"
# for the whole.
load_on() {
  local ports=($1) name=$2 files=$3 size=$4 clients=$5 i=0 t0 t1 pids=() failed=0 n
  n=${#ports[@]}
  t0=$(date +%s%N)
  for port in "${ports[@]}"; do
    "$LOAD" ftp "127.0.0.1:$port" bench bench $((files / n)) "$size" $((clients / n)) "/$name-$i" \
      "$WORK/$name-$i.manifest" >"$WORK/$name-$i.load" &
    pids+=($!)
    i=$((i + 1))
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  t1=$(date +%s%N)
  local done=0 bad=0 bytes
  for ((i = 0; i < n; i++)); do
    done=$((done + $(field "$(cat "$WORK/$name-$i.load")" files)))
    bad=$((bad + $(field "$(cat "$WORK/$name-$i.load")" failed)))
  done
  bytes=$(numfmt --from=iec "${size}")
  awk -v f="$done" -v b="$bad" -v s="$(((t1 - t0) / 1000000))" -v by="$bytes" \
    'BEGIN { printf "files=%d failed=%d seconds=%.2f files_per_s=%.1f mib_per_s=%.1f\n", f, b, s / 1000, f / (s / 1000), f * by / 1048576 / (s / 1000) }'
  [ "$failed" = 0 ]
}

declare -A R=()
# measure SETUP "PORTS" "PIDS": the three runs on the bridges listening on PORTS.
measure() {
  local setup=$1 ports=$2 pids=($3) cpu0 cpu1 out
  api PUT "/mode?status=200&latency_ms=0" >/dev/null
  api PUT /reset >/dev/null
  cpu0=0; for p in "${pids[@]}"; do cpu0=$(awk -v a="$cpu0" -v b="$(cpu_seconds "$p")" 'BEGIN { print a + b }'); done
  local pg0 busy0 pg1 busy1
  pg0=$(pg_cpu); busy0=$(machine_busy)
  out=$(load_on "$ports" "small-$setup" "$FILES" 64K 16)
  pg1=$(pg_cpu); busy1=$(machine_busy)
  cpu1=0; for p in "${pids[@]}"; do cpu1=$(awk -v a="$cpu1" -v b="$(cpu_seconds "$p")" 'BEGIN { print a + b }'); done
  out="$out pg=$(awk -v a="$pg0" -v b="$pg1" 'BEGIN { printf "%.1f", b - a }') busy=$(awk -v a="$busy0" -v b="$busy1" 'BEGIN { printf "%.1f", b - a }')"
  wait_delivered "$FILES" >/dev/null
  R[$setup-small]="$out cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.1f", b - a }')"
  echo "$setup small: ${R[$setup-small]}"

  api PUT /reset >/dev/null
  out=$(load_on "${ports%% *}" "big-$setup" 1 "${BIG_MIB}M" 1)
  wait_delivered 1 >/dev/null
  R[$setup-big]=$out
  echo "$setup big: $out"

  api PUT "/mode?status=400" >/dev/null
  api PUT /reset >/dev/null
  load_on "$ports" "backlog-$setup" "$BACKLOG" 1K 16 >/dev/null
  for _ in $(seq 1 3000); do [ "$(api_stat requests)" -ge "$BACKLOG" ] && break; sleep 0.1; done
  sleep 2
  api PUT "/mode?status=200&latency_ms=20" >/dev/null
  api PUT /reset >/dev/null
  "$BIN" outbox --config "$WORK/${setup}-a.toml" retry --all-dead >/dev/null 2>&1 ||
    "$BIN" outbox --config "$WORK/${setup}-a.toml" retry --all-dead
  R[$setup-backlog]=$(wait_delivered "$BACKLOG")
  echo "$setup backlog: ${R[$setup-backlog]} s"
}

# One replica on SQLite.
config sqlite-a 19431 19432 19433 sqlite 44000-44999
start sqlite-a
measure sqlite "19431" "${PID_OF[sqlite-a]}"
stop sqlite-a

# Two replicas on PostgreSQL.
PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/bench"
config postgres-a 19441 19442 19443 "$PG_URL" 45000-45999
config postgres-b 19451 19452 19453 "$PG_URL" 46000-46999
start postgres-a
start postgres-b
measure postgres "19441 19451" "${PID_OF[postgres-a]} ${PID_OF[postgres-b]}"
stop postgres-a
stop postgres-b

# Round trips: one replica through the counting proxy.
python3 bench/pg_round_trips.py "$PROXY_PORT" "$PG_PORT" "$WORK/round_trips" >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do grep -q listening "$WORK/proxy.log" 2>/dev/null && break; sleep 0.1; done
config counted 19461 19462 19463 "postgres://postgres@127.0.0.1:$PROXY_PORT/bench" 47000-47999
start counted
api PUT "/mode?status=200&latency_ms=0" >/dev/null
api PUT /reset >/dev/null
sleep 3
trips() { field "$(cat "$WORK/round_trips")" round_trips; }
ROUNDS=200
t0=$(date +%s%N); idle0=$(trips)
sleep 10
idle1=$(trips); t1=$(date +%s%N)
idle_per_s=$(awk -v a="$idle0" -v b="$idle1" -v s="$(((t1 - t0) / 1000000))" 'BEGIN { printf "%.2f", (b - a) / (s / 1000) }')
psql -c "SELECT pg_stat_statements_reset()" bench >/dev/null
load_on 19461 warm 20 64K 1 >/dev/null
wait_delivered 20 >/dev/null
api PUT /reset >/dev/null
psql -c "SELECT pg_stat_statements_reset()" bench >/dev/null
t0=$(date +%s%N); busy0=$(trips)
load_on 19461 counted "$ROUNDS" 64K 1 >/dev/null
wait_delivered "$ROUNDS" >/dev/null
busy1=$(trips); t1=$(date +%s%N)
per_upload=$(awk -v a="$busy0" -v b="$busy1" -v i="$idle_per_s" -v s="$(((t1 - t0) / 1000000))" -v n="$ROUNDS" \
  'BEGIN { printf "%.1f", (b - a - i * s / 1000) / n }')
statements=$(psql -F ' | ' -c "SELECT round(calls::numeric / $ROUNDS, 2), regexp_replace(left(query, 90), '\s+', ' ', 'g')
  FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')
  AND calls >= $ROUNDS / 2 ORDER BY calls DESC" bench)
stop counted

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'; }
cat <<MD

Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), shared by the S3 server (\`ingest-bridge embedded-store\`), PostgreSQL 15 (defaults: fsync, synchronous commit), the API stand-in, the load generators and the bridges.
Command: \`bench/replicas.sh $FILES $BIG_MIB $BACKLOG\`

| run | 1 replica, SQLite | 2 replicas, PostgreSQL | ratio |
|---|---|---|---|
| $FILES × 64 KiB over FTP, 16 clients | $(field "${R[sqlite-small]}" files_per_s) files/s | $(field "${R[postgres-small]}" files_per_s) files/s | $(ratio "$(field "${R[sqlite-small]}" files_per_s)" "$(field "${R[postgres-small]}" files_per_s)") |
| … CPU seconds: bridges / PostgreSQL / whole machine (of $(nproc) × wall time) | $(field "${R[sqlite-small]}" cpu) / — / $(field "${R[sqlite-small]}" busy) (of $(awk -v n="$(nproc)" -v s="$(field "${R[sqlite-small]}" seconds)" 'BEGIN { printf "%.1f", n * s }')) | $(field "${R[postgres-small]}" cpu) / $(field "${R[postgres-small]}" pg) / $(field "${R[postgres-small]}" busy) (of $(awk -v n="$(nproc)" -v s="$(field "${R[postgres-small]}" seconds)" 'BEGIN { printf "%.1f", n * s }')) | |
| one $BIG_MIB MiB upload over FTP | $(field "${R[sqlite-big]}" mib_per_s) MiB/s | $(field "${R[postgres-big]}" mib_per_s) MiB/s | $(ratio "$(field "${R[sqlite-big]}" mib_per_s)" "$(field "${R[postgres-big]}" mib_per_s)") |
| $BACKLOG dead completions retried, API answering in 20 ms | drained in ${R[sqlite-backlog]} s ($(awk -v n="$BACKLOG" -v s="${R[sqlite-backlog]}" 'BEGIN { printf "%.0f", n / s }')/s) | drained in ${R[postgres-backlog]} s ($(awk -v n="$BACKLOG" -v s="${R[postgres-backlog]}" 'BEGIN { printf "%.0f", n / s }')/s) | $(ratio "${R[postgres-backlog]}" "${R[sqlite-backlog]}") |

PostgreSQL round trips per 64 KiB upload over FTP (upload and its delivery, one client, $ROUNDS uploads, less $idle_per_s/s idle): **$per_upload**.
Statements per upload (pg_stat_statements, calls ÷ $ROUNDS):

\`\`\`
$statements
\`\`\`
MD
