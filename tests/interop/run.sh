#!/usr/bin/env bash
# Interop with third-party clients: curl, lftp, Python's ftplib and rclone over FTP; curl,
# lftp and ftplib over explicit FTPS; OpenSSH sftp, curl, paramiko and rclone over SFTP; FTP
# and SFTP behind HAProxy with the PROXY protocol; the admin API with curl and its status page
# in headless Chromium. Each uploads through the release binary into its embedded S3 store; each object's bytes and its completion call (to a
# stand-in API) are checked. Installs what it needs. Ends with "N passed, N failed".
set -uo pipefail

BIN=${1:-target/release/ingest-bridge}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
FTP_PORT=${INTEROP_FTP_PORT:-22121}
SFTP_PORT=${INTEROP_SFTP_PORT:-22222}
API_PORT=${INTEROP_API_PORT:-28080}
METRICS_PORT=${INTEROP_METRICS_PORT:-29100}
ADMIN_PORT=${INTEROP_ADMIN_PORT:-29200}
ADMIN_TOKEN="interop-admin-token-$RANDOM$RANDOM$RANDOM"
PASS=0
FAIL=0
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  [ "${KEEP_WORK:-}" = 1 ] && echo "work dir kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

ok() { echo "PASS: $1"; PASS=$((PASS + 1)); }
ko() { echo "FAIL: $1"; FAIL=$((FAIL + 1)); }

install_clients() {
  local missing=()
  for tool in curl lftp rclone python3 openssl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  command -v sftp >/dev/null || missing+=(openssh-client)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Installs a Debian package that ships a service without starting that service.
install_quietly() {
  export DEBIAN_FRONTEND=noninteractive
  local policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy_added=1; fi
  apt-get install -y -qq "$@" >/dev/null 2>&1 || (apt-get update -qq >/dev/null && apt-get install -y -qq "$@" >/dev/null 2>&1)
  [ -n "$policy_added" ] && rm -f /usr/sbin/policy-rc.d
}

install_clients
command -v haproxy >/dev/null || install_quietly haproxy
python3 -c "import paramiko" 2>/dev/null || pip install -q paramiko >/dev/null 2>&1 || echo "paramiko could not be installed"
[ -x "$BIN" ] || { echo "no binary at $BIN (build with cargo build --release)"; echo "0 passed, 1 failed"; exit 1; }

PASSWORD="interop-password"
HASH=$(printf '%s' "$PASSWORD" | "$BIN" hash-password)
ssh-keygen -q -t ed25519 -N "" -C "interop" -f "$WORK/id"
ssh-keygen -q -t ed25519 -N "" -C "stranger" -f "$WORK/other"
# A self-signed certificate for explicit FTPS (TLS optional here, so plain FTP works too).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/tls.key" -out "$WORK/tls.pem" 2>/dev/null
cat > "$WORK/config.toml" <<TOML
[server]
data_dir = "$WORK/data"
drain_timeout = "30s"
# HAProxy below connects from 127.0.0.2 and names the client with a PROXY header.
trusted_proxies = ["127.0.0.2/32"]
[ftp]
listen = "127.0.0.1:$FTP_PORT"
passive_ports = "41000-41999"
passive_host = "127.0.0.1"
[ftp.tls]
cert = "$WORK/tls.pem"
key = "$WORK/tls.key"
[sftp]
listen = "127.0.0.1:$SFTP_PORT"
host_keys = ["$WORK/data/ssh_host_ed25519_key"]
[storage]
endpoint = "embedded"
bucket = "ingest"
part_size = "5MiB"
memory_limit = "64MiB"
[notify]
url = "http://127.0.0.1:$API_PORT/complete"
headers = { "X-Api-Key" = "interop" }
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token = "$ADMIN_TOKEN"
[[users]]
username = "ci"
password_hash = "$HASH"
home = "ci/"
public_keys = ["$(cat "$WORK/id.pub")"]
permissions = ["upload", "list", "download", "delete", "rename", "mkdir"]
metadata = { channel_id = "interop" }
TOML

python3 "$HERE/fake_api.py" "$API_PORT" "$WORK/api.jsonl" >/dev/null &
PIDS+=($!)
"$BIN" serve --config "$WORK/config.toml" >"$WORK/serve.out" 2>"$WORK/serve.err" &
BRIDGE=$!
PIDS+=($BRIDGE)
for _ in $(seq 1 100); do
  grep -q "sftp listening" "$WORK/serve.out" 2>/dev/null && break
  sleep 0.1
done
if grep -q "ftp listening on 127.0.0.1:$FTP_PORT" "$WORK/serve.out" && grep -q "sftp listening on 127.0.0.1:$SFTP_PORT (host key SHA256:" "$WORK/serve.out"; then
  ok "serve prints its listeners and the host key fingerprint"
else
  ko "serve did not start"; cat "$WORK/serve.out" "$WORK/serve.err"
fi

STORE="$WORK/data/store/ingest"
URL="ftp://ci:$PASSWORD@127.0.0.1:$FTP_PORT"

# check NAME KEY LOCALFILE [PROTOCOL]: object bytes in the store and exactly one completion
# for KEY (saying PROTOCOL, when given).
check() {
  local name=$1 key=$2 file=$3 protocol=${4:-}
  local want got
  want=$(sha256sum "$file" | cut -d' ' -f1)
  got=$(sha256sum "$STORE/$key" 2>/dev/null | cut -d' ' -f1)
  if [ "$want" != "$got" ]; then ko "$name: object $key bytes (want $want, got ${got:-missing})"; return; fi
  local n=0
  for _ in $(seq 1 50); do
    n=$(python3 - "$WORK/api.jsonl" "$key" "$want" "$protocol" <<'PY'
import json, sys
path, key, sha, protocol = sys.argv[1:5]
try:
    lines = [json.loads(l) for l in open(path)]
except FileNotFoundError:
    lines = []
hits = [l for l in lines if l["body"]["key"] == key and l["body"]["sha256"] == sha
        and l["headers"].get("idempotency-key") == l["body"]["id"]
        and l["headers"].get("webhook-signature", "").startswith("v1,")
        and l["headers"].get("x-api-key") == "interop"
        and (not protocol or l["body"]["protocol"] == protocol)]
print(len(hits))
PY
)
    [ "$n" -ge 1 ] && break
    sleep 0.1
  done
  if [ "$n" = "1" ]; then ok "$name"; else ko "$name: $n completions for $key"; fi
}

head -c 3000 /dev/urandom >"$WORK/small.bin"
head -c $((23 * 1024 * 1024 + 77)) /dev/urandom >"$WORK/big.bin"
: >"$WORK/empty.bin"

curl -sS -T "$WORK/small.bin" "$URL/curl/small.bin" --ftp-create-dirs && check "curl -T small file" "ci/curl/small.bin" "$WORK/small.bin" || ko "curl small upload"
curl -sS -T "$WORK/big.bin" "$URL/curl/deep/er/big.bin" --ftp-create-dirs && check "curl -T multipart file into new dirs" "ci/curl/deep/er/big.bin" "$WORK/big.bin" || ko "curl big upload"
curl -sS -T "$WORK/empty.bin" "$URL/curl/empty.bin" && check "curl -T empty file" "ci/curl/empty.bin" "$WORK/empty.bin" || ko "curl empty upload"
if curl -sS "$URL/curl/deep/er/big.bin" -o "$WORK/back.bin" && cmp -s "$WORK/back.bin" "$WORK/big.bin"; then ok "curl download matches"; else ko "curl download"; fi
if curl -sS "$URL/curl/" | grep -q "small.bin"; then ok "curl directory listing"; else ko "curl listing"; fi

lftp -c "set net:max-retries 1; set net:timeout 20; set ftp:ssl-allow false; open -u ci,$PASSWORD -p $FTP_PORT 127.0.0.1; mkdir -p lftp; cd lftp; put $WORK/big.bin -o big.bin; put $WORK/small.bin -o small.bin; ls" >"$WORK/lftp.out" 2>&1 \
  && check "lftp put multipart file" "ci/lftp/big.bin" "$WORK/big.bin" && check "lftp put small file" "ci/lftp/small.bin" "$WORK/small.bin" \
  || { ko "lftp upload"; cat "$WORK/lftp.out"; }

if python3 "$HERE/ftplib_upload.py" 127.0.0.1 "$FTP_PORT" ci "$PASSWORD" "$WORK/big.bin" /ftplib.bin >"$WORK/ftplib.out" 2>&1; then
  check "python ftplib storbinary" "ci/ftplib.bin" "$WORK/big.bin"
  grep -q "size=$((23 * 1024 * 1024 + 77))" "$WORK/ftplib.out" && ok "ftplib SIZE after upload" || ko "ftplib SIZE: $(cat "$WORK/ftplib.out")"
else
  ko "python ftplib upload: $(cat "$WORK/ftplib.out")"
fi

# Explicit FTPS: TLS on the control and the data connections, completions say "ftps".
if curl -sS --ssl-reqd --cacert "$WORK/tls.pem" -T "$WORK/big.bin" "$URL/ftps/curl.bin" --ftp-create-dirs 2>"$WORK/curl-ftps.err"; then
  check "curl --ssl-reqd (explicit FTPS)" "ci/ftps/curl.bin" "$WORK/big.bin" ftps
else
  ko "curl --ssl-reqd: $(cat "$WORK/curl-ftps.err")"
fi
if lftp -c "set net:max-retries 1; set net:timeout 20; set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file $WORK/tls.pem; open -u ci,$PASSWORD -p $FTP_PORT localhost; mkdir -p ftps; put $WORK/big.bin -o ftps/lftp.bin" >"$WORK/lftp-ftps.out" 2>&1; then
  check "lftp ftp:ssl-force (explicit FTPS)" "ci/ftps/lftp.bin" "$WORK/big.bin" ftps
else
  ko "lftp ftp:ssl-force: $(cat "$WORK/lftp-ftps.out")"
fi
if python3 "$HERE/ftplib_upload.py" 127.0.0.1 "$FTP_PORT" ci "$PASSWORD" "$WORK/big.bin" /ftps/ftplib.bin "$WORK/tls.pem" >"$WORK/ftplib-tls.out" 2>&1; then
  check "python ftplib.FTP_TLS prot_p()" "ci/ftps/ftplib.bin" "$WORK/big.bin" ftps
else
  ko "python FTP_TLS: $(tail -3 "$WORK/ftplib-tls.out")"
fi
if curl -sS --ssl-reqd --cacert "$WORK/tls.pem" "$URL/ftps/" 2>/dev/null | grep -q "curl.bin"; then ok "FTPS directory listing"; else ko "FTPS listing"; fi

OBSCURED=$(rclone obscure "$PASSWORD")
REMOTE=":ftp,host=127.0.0.1,port=$FTP_PORT,user=ci,pass=$OBSCURED:"
if rclone copyto "$WORK/big.bin" "${REMOTE}rclone/big.bin" --retries 1 --low-level-retries 1 >"$WORK/rclone.out" 2>&1; then
  check "rclone copyto (:ftp remote)" "ci/rclone/big.bin" "$WORK/big.bin"
  rclone lsl "${REMOTE}rclone" 2>/dev/null | grep -q "big.bin" && ok "rclone lsl sees the file" || ko "rclone lsl"
else
  ko "rclone upload: $(tail -5 "$WORK/rclone.out")"
fi

# SFTP: OpenSSH with a key, curl with a password, paramiko, rclone.
SSH_OPTS=(-i "$WORK/id" -P "$SFTP_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR)
cat >"$WORK/batch" <<BATCH
mkdir openssh
put $WORK/big.bin openssh/big.bin
put $WORK/small.bin openssh/small.bin
ls -l openssh
rename openssh/small.bin openssh/renamed.bin
ls -l openssh
BATCH
if sftp "${SSH_OPTS[@]}" -b "$WORK/batch" ci@127.0.0.1 >"$WORK/openssh.out" 2>&1; then
  check "OpenSSH sftp put (key login)" "ci/openssh/big.bin" "$WORK/big.bin"
  grep -q "renamed.bin" "$WORK/openssh.out" && cmp -s "$STORE/ci/openssh/renamed.bin" "$WORK/small.bin" && ok "OpenSSH sftp mkdir, ls, rename" || ko "OpenSSH ls/rename: $(cat "$WORK/openssh.out")"
else
  ko "OpenSSH sftp: $(cat "$WORK/openssh.out")"
fi
if sftp "${SSH_OPTS[@]}" ci@127.0.0.1:openssh/big.bin "$WORK/openssh-back.bin" >/dev/null 2>&1 && cmp -s "$WORK/openssh-back.bin" "$WORK/big.bin"; then ok "OpenSSH sftp get matches"; else ko "OpenSSH sftp get"; fi
if sftp -i "$WORK/other" -P "$SFTP_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes ci@127.0.0.1 <<<"ls" >/dev/null 2>&1; then ko "unknown key accepted"; else ok "unknown SSH key refused"; fi

if curl -sS -k -T "$WORK/big.bin" "sftp://ci:$PASSWORD@127.0.0.1:$SFTP_PORT/curl-sftp.bin" 2>"$WORK/curl-sftp.err"; then
  check "curl sftp:// upload (password)" "ci/curl-sftp.bin" "$WORK/big.bin"
else
  ko "curl sftp: $(cat "$WORK/curl-sftp.err")"
fi

if python3 "$HERE/paramiko_upload.py" 127.0.0.1 "$SFTP_PORT" ci "$PASSWORD" "$WORK/big.bin" /paramiko.bin >"$WORK/paramiko.out" 2>&1; then
  check "paramiko put" "ci/paramiko.bin" "$WORK/big.bin"
  grep -q "size=$((23 * 1024 * 1024 + 77))" "$WORK/paramiko.out" && grep -q "paramiko.bin" "$WORK/paramiko.out" && ok "paramiko stat and listdir" || ko "paramiko stat/listdir: $(cat "$WORK/paramiko.out")"
else
  ko "paramiko: $(tail -3 "$WORK/paramiko.out")"
fi

SREMOTE=":sftp,host=127.0.0.1,port=$SFTP_PORT,user=ci,pass=$OBSCURED,disable_hashcheck=true:"
if rclone copyto "$WORK/big.bin" "${SREMOTE}rclone-sftp/big.bin" --retries 1 --low-level-retries 1 >"$WORK/rclone-sftp.out" 2>&1; then
  check "rclone copyto (:sftp remote)" "ci/rclone-sftp/big.bin" "$WORK/big.bin"
else
  ko "rclone sftp: $(tail -5 "$WORK/rclone-sftp.out")"
fi

# Resuming: each client is killed mid-upload (rate-limited so that whole 5 MiB parts are in
# S3), then resumes; the object must be whole, with one completion, and the server must have
# continued the kept upload rather than taken the file again.
# resumed PATH: the server continued PATH's kept upload; prints the byte it continued at.
resumed() {
  local at
  at=$(cat "$WORK/serve.err" "$WORK/serve.out" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' \
    | grep "resuming an interrupted upload.*$1" | grep -o 'offset=[0-9]*' | tail -1)
  [ -n "$at" ] && echo "  (continued at ${at#offset=} of $(stat -c %s "$WORK/big.bin") bytes)"
}
# kept KEY: waits (up to 15 s) until the server has kept KEY's cut upload for a resume — a
# loaded machine takes longer than a fixed pause to let the last parts land.
kept() {
  for _ in $(seq 1 150); do
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/serve.err" 2>/dev/null | grep "cut upload kept for a resume" | grep -q "key=\"$1\"" && return 0
    sleep 0.1
  done
  echo "  (no kept upload for $1 after 15 s)"
}
timeout -s KILL 4 curl -sS --limit-rate 4M -T "$WORK/big.bin" "$URL/resume/curl.bin" --ftp-create-dirs >/dev/null 2>&1
kept ci/resume/curl.bin
if curl -sS -C - -T "$WORK/big.bin" "$URL/resume/curl.bin" 2>"$WORK/curl-resume.err"; then
  check "curl -C - -T resumes a killed upload" "ci/resume/curl.bin" "$WORK/big.bin"
  resumed "/resume/curl.bin" && ok "curl -C - continued the kept parts" || ko "curl -C - re-sent the whole file"
else
  ko "curl -C -: $(cat "$WORK/curl-resume.err")"
fi

LFTP_OPEN="set net:max-retries 1; set net:timeout 20; set ftp:ssl-allow false; open -u ci,$PASSWORD -p $FTP_PORT 127.0.0.1"
timeout -s KILL 4 lftp -c "$LFTP_OPEN; set net:limit-rate 4000000; mkdir -p resume; put $WORK/big.bin -o resume/lftp.bin" >/dev/null 2>&1
kept ci/resume/lftp.bin
if lftp -c "$LFTP_OPEN; put -c $WORK/big.bin -o resume/lftp.bin" >"$WORK/lftp-resume.out" 2>&1; then
  check "lftp put -c resumes a killed upload" "ci/resume/lftp.bin" "$WORK/big.bin"
  resumed "/resume/lftp.bin" && ok "lftp put -c continued the kept parts" || ko "lftp put -c re-sent the whole file"
else
  ko "lftp put -c: $(cat "$WORK/lftp-resume.out")"; sed 's/\x1b\[[0-9;]*m//g' "$WORK/serve.err" | tail -15
fi

printf 'put %s resume/reput.bin\n' "$WORK/big.bin" >"$WORK/batch-put"
printf 'reput %s resume/reput.bin\n' "$WORK/big.bin" >"$WORK/batch-reput"
timeout -s KILL 4 sftp "${SSH_OPTS[@]}" -l 32000 -b "$WORK/batch-put" ci@127.0.0.1 >/dev/null 2>&1
kept ci/resume/reput.bin
if sftp "${SSH_OPTS[@]}" -b "$WORK/batch-reput" ci@127.0.0.1 >"$WORK/reput.out" 2>&1; then
  check "OpenSSH sftp reput resumes a killed upload" "ci/resume/reput.bin" "$WORK/big.bin"
  resumed "/resume/reput.bin" && ok "OpenSSH reput continued the kept parts" || ko "OpenSSH reput re-sent the whole file"
else
  ko "OpenSSH reput: $(cat "$WORK/reput.out")"
fi

if python3 "$HERE/paramiko_filepart.py" 127.0.0.1 "$SFTP_PORT" ci "$PASSWORD" "$WORK/big.bin" /resume/winscp.mov >"$WORK/filepart.out" 2>&1; then
  check "paramiko .filepart then rename: one completion for the final name" "ci/resume/winscp.mov" "$WORK/big.bin"
  grep -q "temp_gone=True" "$WORK/filepart.out" && [ ! -e "$STORE/ci/resume/winscp.mov.filepart" ] && ok "no .filepart object left" || ko "temp object left: $(cat "$WORK/filepart.out")"
  if grep -q '"key": "ci/resume/winscp.mov.filepart"\|"key":"ci/resume/winscp.mov.filepart"' "$WORK/api.jsonl"; then ko "completion sent for the .filepart name"; else ok "no completion for the .filepart name"; fi
else
  ko "paramiko .filepart: $(tail -3 "$WORK/filepart.out")"
fi

# paramiko's default get asks for the whole file before it reads a reply (one READ per
# 32 KiB in flight: 32,768 for 1 GiB); its default put pipelines its WRITEs.
head -c $((1024 * 1024 * 1024)) /dev/urandom >"$WORK/gib.bin"
GIB_SHA=$(sha256sum <"$WORK/gib.bin")
if timeout 900 python3 "$HERE/paramiko_big.py" 127.0.0.1 "$SFTP_PORT" ci "$PASSWORD" "$WORK/gib.bin" /paramiko-gib.bin "$WORK/gib-back.bin" >"$WORK/paramiko-gib.out" 2>&1; then
  check "paramiko put of 1 GiB" "ci/paramiko-gib.bin" "$WORK/gib.bin"
  if [ "$(sha256sum <"$WORK/gib-back.bin")" = "$GIB_SHA" ]; then ok "paramiko get of 1 GiB matches ($(cat "$WORK/paramiko-gib.out"))"; else ko "paramiko get of 1 GiB: the bytes differ"; fi
else
  ko "paramiko put/get of 1 GiB: $(tail -3 "$WORK/paramiko-gib.out")"
fi
rm -f "$WORK/gib.bin" "$WORK/gib-back.bin"

# Behind HAProxy (on 127.0.0.3, connecting from 127.0.0.2): the control and SFTP ports carry
# a PROXY header, the passive range is forwarded as is. Clients connect from 127.0.0.4, and
# the completion must name that address, not the balancer's.
# from_client KEY: the completion for KEY names a client at 127.0.0.4.
from_client() {
  python3 - "$WORK/api.jsonl" "$1" <<'PY'
import json, sys
path, key = sys.argv[1:3]
hits = [json.loads(l)["body"] for l in open(path)]
hits = [b for b in hits if b["key"] == key]
sys.exit(0 if hits and all(b["remote_addr"].startswith("127.0.0.4:") for b in hits) else 1)
PY
}
if command -v haproxy >/dev/null; then
  cat >"$WORK/haproxy.cfg" <<CFG
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend ftp_control
  bind 127.0.0.3:$FTP_PORT
  default_backend ftp_control
backend ftp_control
  server bridge 127.0.0.1:$FTP_PORT send-proxy-v2 source 127.0.0.2
frontend ftp_passive
  bind 127.0.0.3:41000-41999
  default_backend ftp_passive
backend ftp_passive
  server bridge 127.0.0.1 source 127.0.0.2
frontend sftp
  bind 127.0.0.3:$SFTP_PORT
  default_backend sftp
backend sftp
  server bridge 127.0.0.1:$SFTP_PORT send-proxy source 127.0.0.2
CFG
  haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do (echo >/dev/tcp/127.0.0.3/"$FTP_PORT") 2>/dev/null && break; sleep 0.1; done
  if curl -sS --interface 127.0.0.4 -T "$WORK/big.bin" "ftp://ci:$PASSWORD@127.0.0.3:$FTP_PORT/haproxy/curl.bin" --ftp-create-dirs 2>"$WORK/haproxy-curl.err"; then
    check "curl through HAProxy (PROXY v2 on FTP, passive range forwarded)" "ci/haproxy/curl.bin" "$WORK/big.bin"
    from_client "ci/haproxy/curl.bin" && ok "FTP completion names the client behind HAProxy" || ko "FTP completion names the balancer"
  else
    ko "curl through HAProxy: $(cat "$WORK/haproxy-curl.err") $(tail -5 "$WORK/haproxy.out")"
  fi
  printf 'put %s haproxy-sftp.bin\n' "$WORK/big.bin" >"$WORK/batch-haproxy"
  if sftp -i "$WORK/id" -P "$SFTP_PORT" -o BindAddress=127.0.0.4 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR \
      -b "$WORK/batch-haproxy" ci@127.0.0.3 >"$WORK/haproxy-sftp.out" 2>&1; then
    check "OpenSSH sftp through HAProxy (PROXY v1)" "ci/haproxy-sftp.bin" "$WORK/big.bin"
    from_client "ci/haproxy-sftp.bin" && ok "SFTP completion names the client behind HAProxy" || ko "SFTP completion names the balancer"
  else
    ko "sftp through HAProxy: $(cat "$WORK/haproxy-sftp.out")"
  fi
else
  ko "haproxy could not be installed"
fi

# A refused login and a path that escapes home.
if curl -sS -T "$WORK/small.bin" "ftp://ci:wrong@127.0.0.1:$FTP_PORT/x.bin" 2>/dev/null; then ko "wrong password accepted"; else ok "wrong password refused"; fi
curl -sS -T "$WORK/small.bin" "$URL/%2E%2E/escape.bin" 2>/dev/null
if [ ! -e "$WORK/data/store/ingest/escape.bin" ]; then ok "path escaping home refused"; else ko "escape landed"; fi

METRICS=$(curl -sS "http://127.0.0.1:$METRICS_PORT/metrics")
if grep -q 'ingest_bridge_uploads_total{outcome="completed",protocol="ftp"}' <<<"$METRICS" && grep -q 'ingest_bridge_uploads_total{outcome="completed",protocol="sftp"}' <<<"$METRICS"; then ok "metrics endpoint"; else ko "metrics endpoint"; fi

# The admin API with curl, and the status page in headless Chromium while an upload runs: the
# rendered page must show the upload's file and user (data the page fetched from the API).
ADMIN="http://127.0.0.1:$ADMIN_PORT"
code=$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/api/v1/transfers")
[ "$code" = 401 ] && ok "admin API refuses a call without the token" || ko "admin API without token: $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN/api/v1/transfers")
[ "$code" = 200 ] && ok "admin API answers with the token" || ko "admin API with token: $code"
# shellcheck source=tests/interop/status_page.sh
source "$HERE/status_page.sh"
status_page_install_chromium
head -c $((24 * 1024 * 1024)) /dev/urandom >"$WORK/camera-a.mxf"
curl -sS --limit-rate 2M -T "$WORK/camera-a.mxf" "$URL/camera-a.mxf" 2>"$WORK/slow-curl.err" &
SLOW=$!
listed=""
for _ in $(seq 1 50); do
  if curl -sS -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN/api/v1/transfers" | grep -q '"/camera-a.mxf"'; then listed=1; break; fi
  sleep 0.1
done
[ -n "$listed" ] && ok "a running curl upload is listed in /api/v1/transfers" || ko "running upload not listed"
mkdir -p "$HERE/../../target"
if command -v chromium >/dev/null; then
  status_page_check "$ADMIN" "$ADMIN_TOKEN" "/camera-a.mxf" "ci" "$HERE/../../target/status-page.png"
else
  ko "chromium could not be installed"
fi
wait "$SLOW" && check "curl upload watched by the status page" "ci/camera-a.mxf" "$WORK/camera-a.mxf" ftp

# promtool (Debian's prometheus package) lints the exposition and checks the alert rules.
command -v promtool >/dev/null || install_quietly prometheus
if command -v promtool >/dev/null; then
  if LINT=$(promtool check metrics <<<"$METRICS" 2>&1); then ok "promtool check metrics"; else ko "promtool check metrics"; echo "$LINT"; fi
  if RULES=$(promtool check rules "$HERE/../../deploy/prometheus/alerts.yml" 2>&1); then ok "promtool check rules (alerts)"; else ko "promtool check rules"; echo "$RULES"; fi
else
  ko "promtool could not be installed"
fi

kill -TERM "$BRIDGE"
for _ in $(seq 1 100); do kill -0 "$BRIDGE" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$BRIDGE" 2>/dev/null; then ko "SIGTERM stops the bridge"; else wait "$BRIDGE"; rc=$?; [ $rc -eq 0 ] && ok "SIGTERM stops the bridge cleanly" || ko "exit code $rc after SIGTERM"; fi
if grep -q "panicked" "$WORK/serve.err"; then ko "bridge panicked"; grep -B2 -A5 panicked "$WORK/serve.err"; fi

echo "interop: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
