#!/usr/bin/env bash
# Validates docker-compose.yml's "postgres" profile offline (no Docker engine runs in CI):
# the file parses and the profile is complete (PostgreSQL 15, bridge-a and bridge-b reading
# config/docker-compose-postgres.toml with [state] url on that database, HAProxy with
# deploy/haproxy/haproxy.cfg); `docker compose config` where the compose plugin exists;
# each replica's config through `ingest-bridge check-config` with the variables compose sets
# for it; `haproxy -c` on the HAProxy config (Debian's haproxy, installed if missing); and
# their consistency: each replica's passive range is bound by HAProxy, published 1:1 and
# forwarded to that replica only, the ranges do not overlap, the FTP control backend balances
# by source over both replicas with a PROXY header, SFTP over both, and the config trusts
# HAProxy's fixed address. Ends with "compose: N passed, N failed".
# Usage: deploy/validate-compose.sh [PATH_TO_INGEST_BRIDGE_BINARY]
set -uo pipefail
BIN=$(realpath -m "${1:-$(dirname "$0")/../target/release/ingest-bridge}")
cd "$(dirname "$0")/.."

python3 -c 'import yaml' 2>/dev/null ||
  pip install --quiet --disable-pip-version-check pyyaml >/dev/null 2>&1 ||
  pip install --quiet --disable-pip-version-check --break-system-packages pyyaml >/dev/null
if ! command -v haproxy >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  policy_added=""
  # Install without starting Debian's haproxy service.
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy_added=1; fi
  { apt-get install -y -qq haproxy || { apt-get update -qq && apt-get install -y -qq haproxy; }; } >/dev/null 2>&1
  [ -n "$policy_added" ] && rm -f /usr/sbin/policy-rc.d
fi

# shellcheck source=checks.sh
source deploy/checks.sh

check "docker-compose.yml: the postgres profile is complete and consistent with haproxy.cfg" python3 - <<'PY'
import re, sys, tomllib, yaml

problems = []
def need(ok, what):
    if not ok:
        problems.append(what)

compose = yaml.safe_load(open("docker-compose.yml"))
services = compose["services"]
profile = {n: s for n, s in services.items() if "postgres" in s.get("profiles", [])}
need(set(profile) == {"postgres", "bridge-a", "bridge-b", "haproxy"},
     f"profile postgres has {sorted(profile)}, not postgres, bridge-a, bridge-b, haproxy")
need(services["postgres"]["image"] == "postgres:15", "the database is not postgres:15")
need(services["haproxy"]["image"].startswith("haproxy:2.9"), "HAProxy is not haproxy:2.9")
need("./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["haproxy"]["volumes"],
     "HAProxy does not mount deploy/haproxy/haproxy.cfg")

config = tomllib.loads(open("config/docker-compose-postgres.toml").read())
url = config["state"]["url"]
need(re.fullmatch(r"postgres://ingest:\$\{PGPASSWORD:-[^}]+\}@postgres:5432/ingest", url) is not None,
     f"state.url {url} does not name the compose database (user and database ingest)")
pg_env = services["postgres"]["environment"]
need((pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"]) == ("ingest", "ingest"), "the database's user or name")

cfg = open("deploy/haproxy/haproxy.cfg").read()
sections = {}
for block in re.split(r"\n(?=\S)", cfg):
    head = block.split("\n", 1)[0].split()
    if len(head) >= 2:
        sections[(head[0], head[1])] = block
def bind_range(frontend):
    m = re.search(r"^\s*bind :(\d+)(?:-(\d+))?\s*$", sections.get(("frontend", frontend), ""), re.M)
    return (int(m.group(1)), int(m.group(2) or m.group(1))) if m else None
def servers(backend):
    return re.findall(r"^\s*server (\S+) (\S+)(.*)$", sections.get(("backend", backend), ""), re.M)

ha = services["haproxy"]
published = []
for p in ha["ports"]:
    host, container = p.split(":")
    h = tuple(int(x) for x in host.split("-")) ; c = tuple(int(x) for x in container.split("-"))
    published.append((h + h)[:2] if len(h) == 1 else h)
    published[-1] = (published[-1], (c + c)[:2] if len(c) == 1 else c)
def is_published(lo, hi, same=True):
    return any(c[0] <= lo and hi <= c[1] and (not same or h == c) for h, c in published)

ranges = []
for name, frontend, backend in [("bridge-a", "ftp_passive_a", "ftp_passive_a"), ("bridge-b", "ftp_passive_b", "ftp_passive_b")]:
    s = services[name]
    env = s["environment"]
    need(env["INGEST_BRIDGE_CONFIG"] == "/etc/ingest-bridge/docker-compose-postgres.toml", f"{name} reads another config")
    need(env.get("INGEST_BRIDGE__SERVER__DATA_DIR", "").endswith("/" + name), f"{name} has no data_dir of its own")
    lo, hi = (int(x) for x in env["INGEST_BRIDGE__FTP__PASSIVE_PORTS"].split("-"))
    ranges.append((lo, hi))
    need(bind_range(frontend) == (lo, hi), f"HAProxy frontend {frontend} does not bind {name}'s passive range {lo}-{hi}")
    need([(n, addr) for n, addr, _ in servers(backend)] == [(name, name)],
         f"HAProxy backend {backend} does not forward to {name} alone on the same ports")
    need(is_published(lo, hi), f"{name}'s passive range {lo}-{hi} is not published 1:1 by HAProxy")
    need("postgres" in s.get("depends_on", {}) or "bridge-a" in s.get("depends_on", {}), f"{name} does not wait for the database")
    need(any(v.endswith(":/var/lib/ingest-bridge") for v in s["volumes"]), f"{name} does not mount the shared volume")
need(ranges[0][1] < ranges[1][0] or ranges[1][1] < ranges[0][0], "the replicas' passive ranges overlap")
need(config["ftp"]["passive_host"] == "127.0.0.1", "passive_host is not the published HAProxy address")
need(services["bridge-a"]["volumes"] == services["bridge-b"]["volumes"], "the replicas do not share the host key volume")
need(all(k.startswith("/var/lib/ingest-bridge/") for k in config["sftp"]["host_keys"]), "the host key is not in the shared volume")

ftp_port = int(config["ftp"]["listen"].rsplit(":", 1)[1])
sftp_port = int(config["sftp"]["listen"].rsplit(":", 1)[1])
need(bind_range("ftp_control") == (ftp_port, ftp_port) and bind_range("sftp") == (sftp_port, sftp_port),
     "HAProxy's control and SFTP frontends do not bind the bridge's ports")
need(re.search(r"^\s*balance source", sections.get(("backend", "ftp_control"), ""), re.M) is not None,
     "the FTP control backend does not balance by source")
for backend, port, proxy in [("ftp_control", ftp_port, "send-proxy-v2"), ("sftp", sftp_port, "send-proxy")]:
    got = servers(backend)
    need(sorted(n for n, _, _ in got) == ["bridge-a", "bridge-b"], f"backend {backend} does not have both replicas")
    for n, addr, opts in got:
        need(addr == f"{n}:{port}", f"backend {backend}: {n} is not {n}:{port}")
        need(proxy in opts.split(), f"backend {backend}: {n} gets no {proxy} header")
        need("check" in opts.split(), f"backend {backend}: {n} is not health-checked")
    need(is_published(port, port, same=False), f"HAProxy does not publish its port {port}")
need("uri /readyz" in cfg, "HAProxy's health check is not /readyz")
haproxy_ip = ha["networks"]["ingest-pg"]["ipv4_address"]
need(haproxy_ip in config["server"]["trusted_proxies"], f"server.trusted_proxies does not name HAProxy ({haproxy_ip})")
subnet = compose["networks"]["ingest-pg"]["ipam"]["config"][0]["subnet"]
import ipaddress
need(ipaddress.ip_address(haproxy_ip) in ipaddress.ip_network(subnet), "HAProxy's address is outside its network")

if problems:
    print("\n".join(problems))
    sys.exit(1)
PY

if docker compose version >/dev/null 2>&1; then
  check "docker compose --profile postgres config" docker compose --profile postgres config --quiet
else
  echo "skip docker compose config (no compose plugin here)"
fi

if [ -x "$BIN" ]; then
  for replica in bridge-a bridge-b; do
    check "config/docker-compose-postgres.toml passes check-config ($replica's environment)" bash -c '
      cd "$(mktemp -d)" && env $(python3 -c "import sys, yaml
env = yaml.safe_load(open(sys.argv[1]))[\"services\"][sys.argv[2]][\"environment\"]
print(\" \".join(f\"{k}={v}\" for k, v in env.items() if k.startswith(\"INGEST_BRIDGE__\")))" "$1/docker-compose.yml" "$2") \
        "$0" check-config --config "$1/config/docker-compose-postgres.toml"' "$BIN" "$PWD" "$replica"
  done
else
  failed=$((failed + 1))
  echo "FAIL no ingest-bridge binary at $BIN (build it first)"
fi

if command -v haproxy >/dev/null; then
  # The replicas' names resolve only inside compose: haproxy -c warns about them and goes on
  # (init-addr none); any other warning or error fails.
  check "haproxy -c deploy/haproxy/haproxy.cfg" bash -c '
    out=$(haproxy -c -f deploy/haproxy/haproxy.cfg 2>&1) || { echo "$out"; exit 1; }
    echo "$out" | grep -E "^\[(WARNING|ALERT)\]" | grep -v "could not resolve address .bridge-[ab]." && { echo "$out"; exit 1; }
    exit 0'
else
  failed=$((failed + 1))
  echo "FAIL haproxy is not installed and could not be"
fi

echo "compose: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
