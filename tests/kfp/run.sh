#!/usr/bin/env bash
# KFP API tests against the real kfsec binary with the real kfp SDKs:
#   kfp==1.8.22 (v1beta1) in tests/kfp/.venv18, kfp==2.14.* (v2beta1) in tests/kfp/.venv2
# (both created here, idempotently, from PyPI), plus plain-HTTP checks (the issue's curl
# lines, the persistence agent's report endpoint, bad input).
#
# Boots `kfsec serve` on a free port with a temporary data dir, creates the profiles user1 and
# user2 with kubectl (admin kubeconfig), adds two users, a KFP admin (pipelines in kubeflow), a
# public OAuth2 client for the ID-token flow, and a persistence-agent service account with KFP's
# report ClusterRole, then runs
# kfp_sdk_test.py in each mode, client_manager.py (the Kubeflow docs' KFPClientManager login
# recipe) and tests/browser/pipeline.mjs (a logged-out Chromium opens the run the recipe's SDK
# created from the SDK's link and lands on it after kfsec's login); then federated.sh (federated
# users' ID tokens against a kfsec with the ldap and oidc connectors, ~8 s). Closes with `kfp: N passed, M failed`; exits
# non-zero on failure.
#
#   bash tests/kfp/run.sh        # env: KFSEC_BIN=/path/to/kfsec to skip the build, KEEP_TMP=1
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"

log() { echo "kfp-tests: $*"; }

# --- venvs ---------------------------------------------------------------------------------
make_venv() { # DIR SPEC WANT_PREFIX
  local dir="$1" spec="$2" want="$3"
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import kfp,sys; sys.exit(0 if kfp.__version__.startswith('$want') else 1)" 2>/dev/null; then
    log "$(basename "$dir") present ($spec)"
    return
  fi
  log "creating $(basename "$dir") with $spec"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$spec" requests
}
make_venv "$HERE/.venv18" "kfp==1.8.22" "1.8.22"
make_venv "$HERE/.venv2" "kfp==2.14.*" "2.14."

# --- kfsec ------------------------------------------------------------------------------------
if [ -z "${KFSEC_BIN:-}" ]; then
  (cd "$ROOT" && cargo build -q -p kfsec)
  KFSEC_BIN="$ROOT/target/debug/kfsec"
fi
command -v kubectl >/dev/null || { echo "kfp-tests: kubectl is required" >&2; exit 1; }

TMP="$(mktemp -d /tmp/kfsec-kfp.XXXXXX)"
DATA="$TMP/data"
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
BASE="https://localhost:$PORT"
# login.py's ID tokens are minted for the public client kfp-test-cli: list it as a bearer audience
# (kfsec accepts bearer ID tokens only of kfsec-gatekeeper, kfsec-cli and `bearerAudiences`,
# which must name registered clients when kfsec starts — a static client here, since admin
# commands do not create a data directory before `kfsec serve` has).
cat >"$TMP/kfsec.yaml" <<'EOF'
apiVersion: kfsec/v1
bearerAudiences: [kfp-test-cli]
staticClients:
- id: kfp-test-cli
  name: KFP test CLI
  public: true
  redirectURIs: ["http://127.0.0.1:5555/cb"]
EOF
# shellcheck source=../lib/serve.sh
source "$ROOT/tests/lib/serve.sh"
start_kfsec kfp-tests "$TMP/kfsec.yaml" "$DATA" "$PORT" "$TMP"
CA="$DATA/pki/ca.crt"
KC=(kubectl --kubeconfig "$DATA/admin.kubeconfig" --cache-dir "$TMP/kube-cache")
log "kfsec up on $BASE"

# --- workspace setup ------------------------------------------------------------------------
U1=kfp-user1@example.org
U2=kfp-user2@example.org
# A KFP admin: the right on pipelines in the KFP system namespace (kubeflow), which KFP asks of
# whoever changes a shared pipeline they did not create.
U3=kfp-pipelines-admin@example.org
P3="admin password $RANDOM$RANDOM"
P1="user1 password $RANDOM$RANDOM"
P2="user2 password $RANDOM$RANDOM"
echo "$P1" | "$KFSEC_BIN" user add "$U1" --data-dir "$DATA" >/dev/null
echo "$P2" | "$KFSEC_BIN" user add "$U2" --data-dir "$DATA" >/dev/null
echo "$P3" | "$KFSEC_BIN" user add "$U3" --data-dir "$DATA" >/dev/null
"${KC[@]}" apply -f - >/dev/null <<EOF
apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: user1
spec:
  owner:
    kind: User
    name: $U1
---
apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: user2
spec:
  owner:
    kind: User
    name: $U2
---
apiVersion: v1
kind: Namespace
metadata:
  name: kubeflow
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: ml-pipeline-persistenceagent
  namespace: kubeflow
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: ml-pipeline-persistenceagent-role
rules:
- apiGroups: [pipelines.kubeflow.org]
  resources: [scheduledworkflows, workflows]
  verbs: [report]
- apiGroups: [pipelines.kubeflow.org]
  resources: [runs]
  verbs: [reportMetrics, readArtifact]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: shared-pipelines-admin
  namespace: kubeflow
rules:
- apiGroups: [pipelines.kubeflow.org]
  resources: [pipelines]
  verbs: [get, list, create, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: shared-pipelines-admin
  namespace: kubeflow
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: shared-pipelines-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: $U3
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ml-pipeline-persistenceagent-binding
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: ml-pipeline-persistenceagent-role
subjects:
- kind: ServiceAccount
  name: ml-pipeline-persistenceagent
  namespace: kubeflow
EOF
for _ in $(seq 1 100); do
  if "${KC[@]}" get rolebindings -n user2 -o name 2>/dev/null | grep -q namespaceAdmin &&
    "${KC[@]}" get rolebindings -n user1 -o name 2>/dev/null | grep -q namespaceAdmin; then break; fi
  sleep 0.1
done

AGENT_TOKEN="$("$KFSEC_BIN" token create ml-pipeline-persistenceagent -n kubeflow --audience pipelines.kubeflow.org --data-dir "$DATA")"
# kfsec's default audience (accepted on every path, including the Kubernetes-family /apis/…).
AGENT_DEFAULT_TOKEN="$("$KFSEC_BIN" token create ml-pipeline-persistenceagent -n kubeflow --data-dir "$DATA")"
OTHER_AUD_TOKEN="$("$KFSEC_BIN" token create ml-pipeline-persistenceagent -n kubeflow --audience some-other-service --data-dir "$DATA")"

# The SDKs get the CA explicitly; a system bundle from the environment must not override it.
unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE
V2PY="$HERE/.venv2/bin/python"
read_login() { # EMAIL PASSWORD -> sets COOKIE TOKEN
  local out
  out="$(echo "$2" | "$V2PY" "$HERE/login.py" "$BASE" "$CA" "$1")"
  COOKIE="$(sed -n 's/^COOKIE=//p' <<<"$out")"
  TOKEN="$(sed -n 's/^TOKEN=//p' <<<"$out")"
}
read_login "$U1" "$P1"; U1_COOKIE="$COOKIE"; U1_TOKEN="$TOKEN"
read_login "$U2" "$P2"; U2_COOKIE="$COOKIE"; U2_TOKEN="$TOKEN"
read_login "$U3" "$P3"; U3_TOKEN="$TOKEN"
"$V2PY" "$HERE/compile_pipeline.py" "$TMP/pipeline.yaml"
log "users, profiles, tokens and the compiled pipeline are ready"

export KFP_BASE="$BASE" KFP_CA="$CA" KFP_STATE="$TMP/state.json" KFP_PIPELINE="$TMP/pipeline.yaml"
export KFP_USER1_COOKIE="$U1_COOKIE" KFP_USER2_COOKIE="$U2_COOKIE" KFP_USER1_TOKEN="$U1_TOKEN" KFP_USER2_TOKEN="$U2_TOKEN"
export KFP_ADMIN_TOKEN="$U3_TOKEN"
export KFP_AGENT_TOKEN="$AGENT_TOKEN" KFP_AGENT_DEFAULT_TOKEN="$AGENT_DEFAULT_TOKEN" KFP_OTHER_AUD_TOKEN="$OTHER_AUD_TOKEN"
export HOME="$TMP/home" PYTHONWARNINGS=ignore
mkdir -p "$HOME"

PASSED=0
FAILED=0
run_mode() { # PYTHON MODE
  run_counted "$2" "$1" "$HERE/kfp_sdk_test.py" "$2"
}
run_counted() { # NAME CMD...: runs CMD, adds the counts of its `RESULT passed=N failed=M` line
  local name="$1" out rc=0
  shift
  echo "== $name"
  out="$("$@" 2>&1)" || rc=$?
  # The SDKs print links and warnings; keep our lines and failures' tracebacks.
  grep -v -E '^(Experiment|Run|Pipeline) details: ' <<<"$out" || true
  local p f
  p="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\1/p' <<<"$out" | tail -1)"
  f="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\2/p' <<<"$out" | tail -1)"
  if [ -z "$p" ]; then p=0; f=1; echo "  FAIL $name did not finish (exit $rc)"; fi
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
}
run_mode "$V2PY" http
run_mode "$HERE/.venv18/bin/python" v1
run_mode "$V2PY" v2
run_mode "$V2PY" report
# The Kubeflow docs' KFPClientManager login recipe (GET /pipeline → Dex form → back on /pipeline),
# then the SDK with its cookies and the run page the SDK's link leads to.
run_counted client-manager env KFP_CM_USER="$U1" KFP_CM_PASSWORD="$P1" KFP_CM_NAMESPACE=user1 \
  KFP_CM_RUN_OUT="$TMP/cm-run.json" "$V2PY" "$HERE/client_manager.py"
# Chromium, logged out, opens that run from the link the SDK printed: kfsec's login page, then
# the run's page (tests/browser/pipeline.mjs).
if [ -s "$TMP/cm-run.json" ]; then
  mapfile -t CM_RUN < <("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["run_id"]); print(r["name"]); print(r["link"])' "$TMP/cm-run.json")
  run_counted pipeline-browser env KFSEC_PASSWORD="$P1" \
    node "$ROOT/tests/browser/pipeline.mjs" "$BASE" "$U1" "${CM_RUN[0]}" "${CM_RUN[1]}" "${CM_RUN[2]}"
else
  echo "== pipeline-browser"; echo "  FAIL no run from client-manager to open"; FAILED=$((FAILED + 1))
fi
# Federated users (ldap connector via the password grant, oidc connector via the upstream's
# login form) against their own kfsec with slapd and an upstream kfsec: federated.sh.
run_counted federated env KFSEC_BIN="$KFSEC_BIN" KFP_PIPELINE="$TMP/pipeline.yaml" bash "$HERE/federated.sh"

if ! kill -0 "$PID" 2>/dev/null; then echo "kfp-tests: kfsec died during the tests" >&2; FAILED=$((FAILED + 1)); fi
if grep -q "panicked" "$TMP/kfsec.log"; then echo "kfp-tests: kfsec panicked" >&2; FAILED=$((FAILED + 1)); fi
echo "kfp: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
