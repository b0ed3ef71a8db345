#!/usr/bin/env bash
# Validates deploy/kubernetes offline: every manifest against the Kubernetes API schemas
# (kubernetes-validate, strict: unknown fields are errors), the base's own consistency (ports,
# probes, selectors, grace period, one FTP Service per replica with its passive range), and
# the ConfigMap's config with `ingest-bridge check-config`, with the variables the
# StatefulSet's start command sets for a replica. Ends with "k8s: N passed, N failed".
# Usage: deploy/kubernetes/validate.sh [PATH_TO_INGEST_BRIDGE_BINARY]
set -uo pipefail
BIN=$(realpath -m "${1:-$(dirname "$0")/../../target/release/ingest-bridge}")
cd "$(dirname "$0")"
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.33.0}

python3 -c 'import yaml, kubernetes_validate' 2>/dev/null ||
  pip install --quiet --disable-pip-version-check kubernetes-validate pyyaml >/dev/null 2>&1 ||
  pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate pyyaml >/dev/null

passed=0
failed=0
check() {
  local name=$1
  shift
  if out=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    echo "$out" | sed 's/^/     /'
  fi
}

# Built-in kinds against their schemas; the ServiceMonitor (a CRD) is checked below.
for file in base/configmap.yaml base/statefulset.yaml base/services.yaml \
  base/pod-disruption-budget.yaml secret.example.yaml; do
  check "schema: $file" python3 -m kubernetes_validate --strict --quiet \
    -k "$KUBERNETES_VERSION" "$file"
done

check "services.yaml is what services.py generates" \
  bash -c 'diff <(python3 services.py 3) base/services.yaml'

check "base is consistent" python3 - <<'PY'
import re, sys, yaml

def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]

problems = []
def need(ok, what):
    if not ok:
        problems.append(what)

kustomization = load("base/kustomization.yaml")[0]
for resource in kustomization["resources"]:
    need(load(f"base/{resource}"), f"kustomization lists {resource}, which is empty or missing")

config = load("base/configmap.yaml")[0]["data"]["ingest-bridge.toml"]
import tomllib
toml = tomllib.loads(config)
port = lambda listen: int(listen.rsplit(":", 1)[1])

sts = load("base/statefulset.yaml")[0]
spec = sts["spec"]
pod = spec["template"]
labels = pod["metadata"]["labels"]
need(spec["selector"]["matchLabels"].items() <= labels.items(), "StatefulSet selector does not match its pods")
container = pod["spec"]["containers"][0]
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
need(ports.get("ftp") == port(toml["ftp"]["listen"]), "container port ftp != ftp.listen")
need(ports.get("sftp") == port(toml["sftp"]["listen"]), "container port sftp != sftp.listen")
need(ports.get("metrics") == port(toml["metrics"]["listen"]), "container port metrics != metrics.listen")
need(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe is not /readyz")
need(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe is not /healthz")
drain = toml["server"]["drain_timeout"]
units = {"s": 1, "m": 60, "h": 3600}
drain_s = int(drain[:-1]) * units[drain[-1]]
need(pod["spec"]["terminationGracePeriodSeconds"] >= drain_s + 10 + 5,
     f"terminationGracePeriodSeconds must cover drain_timeout ({drain}) + 10 s outbox + preStop")
mounts = {m["mountPath"] for m in container["volumeMounts"]}
need(toml["server"]["data_dir"] in mounts, "server.data_dir is not a mounted volume")
for key in toml["sftp"]["host_keys"]:
    need(any(key.startswith(m + "/") for m in mounts), f"host key {key} is not on a mounted volume")
need(container["securityContext"]["readOnlyRootFilesystem"] is True, "root filesystem is writable")
script = " ".join(container["command"])
match = re.search(r"first=\$\(\((\d+) \+ (\d+) \* ordinal\)\)", script)
need(match is not None, "start command does not compute the passive range from the ordinal")

services = load("base/services.yaml")
by_name = {s["metadata"]["name"]: s for s in services}
for n in range(spec["replicas"]):
    svc = by_name.get(f"ingest-bridge-{n}")
    need(svc is not None, f"no FTP Service for replica {n}")
    if svc is None or match is None:
        continue
    need(svc["spec"]["selector"].get("statefulset.kubernetes.io/pod-name") == f"ingest-bridge-{n}",
         f"Service ingest-bridge-{n} does not select pod ingest-bridge-{n}")
    first = int(match.group(1)) + int(match.group(2)) * n
    passive = sorted(p["port"] for p in svc["spec"]["ports"] if p["name"].startswith("passive-"))
    need(passive == list(range(first, first + 100)), f"Service ingest-bridge-{n} does not carry ports {first}-{first + 99}")
    need(any(p["name"] == "ftp" and p["targetPort"] == ports["ftp"] for p in svc["spec"]["ports"]),
         f"Service ingest-bridge-{n} does not forward to the FTP port")
for svc in services:
    selector = svc["spec"]["selector"]
    need(selector.get("app.kubernetes.io/name") == labels["app.kubernetes.io/name"],
         f"Service {svc['metadata']['name']} does not select the bridge's pods")

pdb = load("base/pod-disruption-budget.yaml")[0]
need(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PodDisruptionBudget selects no bridge pod")

monitor = load("base/service-monitor.yaml")[0]
need(monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor", "ServiceMonitor kind")
metrics_svc = by_name["ingest-bridge-metrics"]
need(monitor["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items(),
     "ServiceMonitor does not select the metrics Service")
need(monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in metrics_svc["spec"]["ports"]},
     "ServiceMonitor endpoint port is not a port of the metrics Service")

if problems:
    print("\n".join(problems))
    sys.exit(1)
PY

# The ConfigMap's config as replica 1 reads it.
config_dir=$(mktemp -d)
python3 -c 'import sys, yaml; print(yaml.safe_load(open("base/configmap.yaml"))["data"]["ingest-bridge.toml"])' \
  >"$config_dir/ingest-bridge.toml"
if [ -x "$BIN" ]; then
  check "ConfigMap config passes check-config (replica 1)" env \
    INGEST_BRIDGE__FTP__PASSIVE_PORTS=50100-50199 \
    INGEST_BRIDGE__FTP__PASSIVE_HOST=ingest-bridge-1.ftp.example.com \
    PLATFORM_API_KEY=test "$BIN" check-config --config "$config_dir/ingest-bridge.toml"
else
  failed=$((failed + 1))
  echo "FAIL no ingest-bridge binary at $BIN (build it first)"
fi
rm -rf "$config_dir"

echo "k8s: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
