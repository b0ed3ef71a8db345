#!/usr/bin/env bash
# Validates deploy/kubernetes offline: every manifest against the Kubernetes API schemas
# (kubernetes-validate, strict: unknown fields are errors), the base's own consistency (ports,
# probes, selectors, grace period, one FTP Service per replica with its passive range), and
# the ConfigMap's config with `ingest-bridge check-config`, with the variables the
# StatefulSet's start command sets for a replica. The postgres overlay likewise: built with
# `kubectl kustomize` (or `kustomize build`), every resource it renders against the schemas,
# its own consistency (a Deployment instead of the StatefulSet, no per-replica volume,
# data_dir on an emptyDir, the HPA on the Deployment, one FTP Service with client affinity
# carrying the passive range, the config equal to the base's but for [state]) and its config
# through check-config with the Secret's variables. Ends with "k8s: N passed, N failed".
# Usage: deploy/kubernetes/validate.sh [PATH_TO_INGEST_BRIDGE_BINARY]
set -uo pipefail
BIN=$(realpath -m "${1:-$(dirname "$0")/../../target/release/ingest-bridge}")
cd "$(dirname "$0")"
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.33.0}

python3 -c 'import yaml, kubernetes_validate' 2>/dev/null ||
  pip install --quiet --disable-pip-version-check kubernetes-validate pyyaml >/dev/null 2>&1 ||
  pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate pyyaml >/dev/null

# shellcheck source=../checks.sh
source ../checks.sh

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

# The postgres overlay (overlays/postgres): built, then checked like the base.
for file in overlays/postgres/deployment.yaml overlays/postgres/ftp-service.yaml \
  overlays/postgres/horizontal-pod-autoscaler.yaml overlays/postgres/secret.example.yaml; do
  check "schema: $file" python3 -m kubernetes_validate --strict --quiet \
    -k "$KUBERNETES_VERSION" "$file"
done
check "overlays/postgres/ftp-service.yaml is what services.py generates" \
  bash -c 'diff <(python3 services.py shared) overlays/postgres/ftp-service.yaml'

overlay_dir=$(mktemp -d)
if command -v kubectl >/dev/null; then
  KUSTOMIZE=(kubectl kustomize overlays/postgres)
elif command -v kustomize >/dev/null; then
  KUSTOMIZE=(kustomize build overlays/postgres)
else
  KUSTOMIZE=()
fi
if [ ${#KUSTOMIZE[@]} -gt 0 ] && "${KUSTOMIZE[@]}" >"$overlay_dir/rendered.yaml" 2>"$overlay_dir/err"; then
  passed=$((passed + 1))
  echo "ok   overlays/postgres builds (${KUSTOMIZE[*]})"
  # One file per rendered resource, the built-in kinds against their schemas.
  python3 - "$overlay_dir" <<'PY'
import sys, yaml
out = sys.argv[1]
for i, doc in enumerate(d for d in yaml.safe_load_all(open(f"{out}/rendered.yaml")) if d):
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        continue
    with open(f"{out}/{i:03d}-{doc['kind']}-{doc['metadata']['name']}.yaml", "w") as f:
        yaml.safe_dump(doc, f)
PY
  check "schema: overlays/postgres, every rendered resource" python3 -m kubernetes_validate --strict \
    --quiet -k "$KUBERNETES_VERSION" "$overlay_dir"/[0-9]*.yaml
  check "overlays/postgres is consistent" python3 - "$overlay_dir/rendered.yaml" <<'PY'
import re, sys, tomllib, yaml

problems = []
def need(ok, what):
    if not ok:
        problems.append(what)

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
base_config = tomllib.loads(yaml.safe_load(open("base/configmap.yaml"))["data"]["ingest-bridge.toml"])
config = tomllib.loads(by_kind["ConfigMap"][0]["data"]["ingest-bridge.toml"])
state = config.pop("state", {})
need(config == base_config, "the overlay's config differs from the base's outside [state]")
url = state.get("url", "")
need(url.startswith("postgres://"), "state.url is not a postgres:// URL")
need("${PGPASSWORD}" in url, "state.url does not take the password from ${PGPASSWORD}")

need("StatefulSet" not in by_kind, "the base's StatefulSet is still rendered")
deployments = by_kind.get("Deployment", [])
need(len(deployments) == 1, "the overlay does not render exactly one Deployment")
if problems:
    print("\n".join(problems))
    sys.exit(1)
deploy = deployments[0]
need("replicas" not in deploy["spec"], "the Deployment fixes replicas (the HPA sets them)")
template = deploy["spec"]["template"]
labels = template["metadata"]["labels"]
need(deploy["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the Deployment's selector does not match its pods")
rolling = deploy["spec"].get("strategy", {}).get("rollingUpdate", {})
need(rolling.get("maxUnavailable") == 0, "a rolling update may stop a replica before its successor is ready")
pod = template["spec"]
container = pod["containers"][0]
need(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe is not /readyz")
need(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe is not /healthz")
drain = config["server"]["drain_timeout"]
units = {"s": 1, "m": 60, "h": 3600}
need(pod["terminationGracePeriodSeconds"] >= int(drain[:-1]) * units[drain[-1]] + 10 + 5,
     f"terminationGracePeriodSeconds must cover drain_timeout ({drain}) + 10 s outbox + preStop")
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
port = lambda listen: int(listen.rsplit(":", 1)[1])
need(ports.get("ftp") == port(config["ftp"]["listen"]), "container port ftp != ftp.listen")
need(ports.get("sftp") == port(config["sftp"]["listen"]), "container port sftp != sftp.listen")
volumes = {v["name"]: v for v in pod["volumes"]}
need(all("persistentVolumeClaim" not in v for v in volumes.values()), "a replica has a volume of its own")
mount = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
data = mount.get(config["server"]["data_dir"])
need(data is not None and "emptyDir" in volumes.get(data, {}), "server.data_dir is not on an emptyDir")
for key in config["sftp"]["host_keys"]:
    need(any(key.startswith(m + "/") for m in mount), f"host key {key} is not on a mounted volume")

secret = yaml.safe_load(open("overlays/postgres/secret.example.yaml"))
secret_refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
need(secret["metadata"]["name"] in secret_refs, "the container does not read the postgres Secret")
env = {e["name"] for e in container.get("env", [])} | set(secret["stringData"])
for name, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}", url):
    need(name in env or default, f"state.url needs ${{{name}}}, which neither the pod nor the Secret sets")
need("INGEST_BRIDGE__FTP__PASSIVE_HOST" in env or "passive_host" in config["ftp"],
     "no replica announces a public passive address (ftp.passive_host)")

hpa = by_kind["HorizontalPodAutoscaler"][0]["spec"]
target = hpa["scaleTargetRef"]
need((target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", deploy["metadata"]["name"]),
     "the HPA does not scale the Deployment")
need(hpa["minReplicas"] >= 2, "the HPA's minReplicas is below 2")
need(any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"]), "the HPA is not on CPU")
need("cpu" in container["resources"]["requests"], "no CPU request: the HPA's utilization has no base")

services = by_kind["Service"]
for svc in services:
    selector = svc["spec"]["selector"]
    need("statefulset.kubernetes.io/pod-name" not in selector,
         f"Service {svc['metadata']['name']} selects one StatefulSet pod, which a Deployment does not have")
    need(selector.items() <= labels.items(), f"Service {svc['metadata']['name']} selects no bridge pod")
ftp = [s for s in services if any(p["name"] == "ftp" for p in s["spec"]["ports"])]
need(len(ftp) == 1, "not exactly one FTP Service")
if ftp:
    svc = ftp[0]["spec"]
    need(svc.get("sessionAffinity") == "ClientIP", "the FTP Service does not keep a client on one replica")
    need(svc.get("externalTrafficPolicy") == "Local", "the FTP Service hides the client's address")
    first, last = (int(x) for x in config["ftp"]["passive_ports"].split("-"))
    passive = sorted(p["port"] for p in svc["ports"] if p["name"].startswith("passive-"))
    need(passive == list(range(first, last + 1)), f"the FTP Service does not carry ftp.passive_ports {first}-{last}")
    need(any(p["name"] == "ftp" and p["targetPort"] == ports.get("ftp") for p in svc["ports"]),
         "the FTP Service does not forward to the FTP port")
need(any(any(p["name"] == "sftp" for p in s["spec"]["ports"]) for s in services), "no SFTP Service")
pdb = by_kind["PodDisruptionBudget"][0]["spec"]
need(pdb.get("maxUnavailable") == 1, "the PodDisruptionBudget does not allow one replica at a time")

if problems:
    print("\n".join(problems))
    sys.exit(1)
PY
  python3 -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap": print(d["data"]["ingest-bridge.toml"])' \
    "$overlay_dir/rendered.yaml" >"$overlay_dir/ingest-bridge.toml"
  if [ -x "$BIN" ]; then
    # The Secret's variables as the pod gets them (envFrom), and the Deployment's.
    # check-config parses the URL but does not connect.
    check "overlays/postgres config passes check-config (the Secret's and the pod's variables)" env \
      $(python3 -c 'import yaml; print(" ".join(f"{k}={v}" for k, v in yaml.safe_load(open("overlays/postgres/secret.example.yaml"))["stringData"].items()))') \
      INGEST_BRIDGE__FTP__PASSIVE_HOST=ftp.example.com \
      PLATFORM_API_KEY=test "$BIN" check-config --config "$overlay_dir/ingest-bridge.toml"
    check "overlays/postgres config without PGPASSWORD is refused" bash -c \
      '! env -u PGPASSWORD PGHOST=db PGUSER=u PGDATABASE=d PLATFORM_API_KEY=t "$0" check-config --config "$1"' \
      "$BIN" "$overlay_dir/ingest-bridge.toml"
  fi
else
  failed=$((failed + 1))
  echo "FAIL overlays/postgres does not build (needs kubectl or kustomize)"
  sed 's/^/     /' "$overlay_dir/err" 2>/dev/null
fi
rm -rf "$overlay_dir"

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
