#!/usr/bin/env bash
# The S3 gateway and KFP's artifact endpoint against real clients (issue 16):
#   boto3 and the minio Python SDK with a workspace's keys → kfsec's S3 gateway (TLS from kfsec's
#   CA, path style) → moto's S3 server (PyPI moto[server]) with signature checking ON.
#
# moto checks SigV4 only when INITIAL_NO_AUTH_ACTION_COUNT is set: its first actions are free,
# so moto_setup.py spends exactly them on an IAM user, its access key and a policy (kfsec's
# upstream credentials), and everything after is signed and checked. Then `kfsec serve` starts
# with an `s3:` block pointing at moto, the profiles team-a and team-b are created with kubectl,
# each namespace's Secret mlpipeline-minio-artifact is read, a user of team-a logs in (bearer
# ID token, as tests/kfp does), the persistence agent gets a token (KFP's report ClusterRole,
# for ReadArtifact's reported workflows), and s3_test.py runs the checks, one `PASS name` / `FAIL name:
# why` line each, closing with `s3: N passed, M failed`. Exits non-zero on any failure; the
# servers are always stopped.
#
#   bash tests/s3/run.sh     # env: KFSEC_BIN=/path/to/kfsec to skip the build, KEEP_TMP=1
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"

log() { echo "s3-tests: $*"; }

# --- venv (idempotent; pinned) ---------------------------------------------------------------
BOTO3=1.44.18
MINIO=7.2.20
MOTO=5.2.6
VENV="$HERE/.venv"
make_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$BOTO3" "$MINIO" "$MOTO" 2>/dev/null <<'EOF'; then
import sys
from importlib.metadata import version
want = dict(zip(["boto3", "minio", "moto"], sys.argv[1:]))
sys.exit(0 if all(version(p) == v for p, v in want.items()) else 1)
EOF
    log ".venv present (boto3 $BOTO3, minio $MINIO, moto $MOTO)"
    return
  fi
  log "creating .venv with boto3==$BOTO3 minio==$MINIO moto[server]==$MOTO"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "boto3==$BOTO3" "minio==$MINIO" "moto[server]==$MOTO" requests
}
make_venv
VPY="$VENV/bin/python"

# --- kfsec ------------------------------------------------------------------------------------
if [ -z "${KFSEC_BIN:-}" ]; then
  (cd "$ROOT" && cargo build -q -p kfsec)
  KFSEC_BIN="$ROOT/target/debug/kfsec"
fi
export KFSEC_BIN
command -v kubectl >/dev/null || { echo "s3-tests: kubectl is required" >&2; exit 1; }

TMP="$(mktemp -d /tmp/kfsec-s3.XXXXXX)"
DATA="$TMP/data"
PID=""
MOTO_PID=""
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
S3_PORT="$(free_port)"
MOTO_PORT="$(free_port)"

# --- moto, signatures on after the bootstrap ---------------------------------------------------
# moto_setup.py makes exactly 3 unauthenticated calls (CreateUser, CreateAccessKey,
# PutUserPolicy); from the 4th on, every request must carry a valid signature.
INITIAL_NO_AUTH_ACTION_COUNT=3 "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" \
  >"$TMP/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 1 100); do
  if "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1',$MOTO_PORT),0.2)" 2>/dev/null; then break; fi
  if ! kill -0 "$MOTO_PID" 2>/dev/null; then cat "$TMP/moto.log" >&2; echo "s3-tests: moto exited" >&2; exit 1; fi
  sleep 0.1
done
MOTO_URL="http://127.0.0.1:$MOTO_PORT"
"$VPY" "$HERE/moto_setup.py" "$MOTO_URL" "$TMP/upstream-access-key" "$TMP/upstream-secret-key" mlpipeline
log "moto up on $MOTO_URL (signatures checked), bucket mlpipeline"

# --- kfsec with the gateway ---------------------------------------------------------------------
cat >"$TMP/kfsec.yaml" <<EOF
apiVersion: kfsec/v1
bearerAudiences: [kfp-test-cli]
staticClients:
- id: kfp-test-cli
  name: KFP test CLI
  public: true
  redirectURIs: ["http://127.0.0.1:5555/cb"]
s3:
  addr: 127.0.0.1:$S3_PORT
  region: us-east-1
  bucket: mlpipeline
  upstream:
    endpoint: $MOTO_URL
    region: us-east-1
    accessKeyFile: $TMP/upstream-access-key
    secretKeyFile: $TMP/upstream-secret-key
EOF
# shellcheck source=../lib/serve.sh
source "$ROOT/tests/lib/serve.sh"
start_kfsec s3-tests "$TMP/kfsec.yaml" "$DATA" "$PORT" "$TMP"
CA="$DATA/pki/ca.crt"
KC=(kubectl --kubeconfig "$DATA/admin.kubeconfig" --cache-dir "$TMP/kube-cache")
log "kfsec up on https://localhost:$PORT, S3 gateway on https://127.0.0.1:$S3_PORT"

# --- workspaces -------------------------------------------------------------------------------
UA=s3-alice@example.org
UB=s3-bob@example.org
PA="alice password $RANDOM$RANDOM"
PB="bob password $RANDOM$RANDOM"
echo "$PA" | "$KFSEC_BIN" user add "$UA" --data-dir "$DATA" >/dev/null
echo "$PB" | "$KFSEC_BIN" user add "$UB" --data-dir "$DATA" >/dev/null
"${KC[@]}" apply -f - >/dev/null <<EOF
apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: team-a
spec:
  owner:
    kind: User
    name: $UA
---
apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: team-b
spec:
  owner:
    kind: User
    name: $UB
EOF
# The persistence agent's right to report workflows (KFP's ClusterRole), for ReadArtifact.
"${KC[@]}" apply -f - >/dev/null <<EOF
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
AGENT_TOKEN="$("$KFSEC_BIN" token create ml-pipeline-persistenceagent -n kubeflow --audience pipelines.kubeflow.org --data-dir "$DATA")"
secret_field() { # NS FIELD
  "${KC[@]}" get secret mlpipeline-minio-artifact -n "$1" -o "jsonpath={.data.$2}" 2>/dev/null | base64 -d 2>/dev/null
}
for ns in team-a team-b; do
  for _ in $(seq 1 100); do
    if [ -n "$(secret_field "$ns" secretkey)" ]; then break; fi
    sleep 0.1
  done
done
# Empty when the profile hook did not write the Secret: the checks that need it then FAIL.
A_AK="$(secret_field team-a accesskey || true)"; A_SK="$(secret_field team-a secretkey || true)"
B_AK="$(secret_field team-b accesskey || true)"; B_SK="$(secret_field team-b secretkey || true)"
for _ in $(seq 1 100); do
  if "${KC[@]}" get rolebindings -n team-a -o name 2>/dev/null | grep -q namespaceAdmin; then break; fi
  sleep 0.1
done

unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
export HOME="$TMP/home" PYTHONWARNINGS=ignore AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
login() { # EMAIL PASSWORD → the ID token (empty if the login failed)
  echo "$2" | "$VPY" "$ROOT/tests/kfp/login.py" "https://localhost:$PORT" "$CA" "$1" 2>"$TMP/login.err" |
    sed -n 's/^TOKEN=//p' || true
}
A_TOKEN="$(login "$UA" "$PA")"

export S3T_GATEWAY="https://127.0.0.1:$S3_PORT" S3T_CA="$CA" S3T_MOTO="$MOTO_URL" S3T_BUCKET=mlpipeline
export S3T_UPSTREAM_AK="$(cat "$TMP/upstream-access-key")" S3T_UPSTREAM_SK="$(cat "$TMP/upstream-secret-key")"
export S3T_A_AK="$A_AK" S3T_A_SK="$A_SK" S3T_B_AK="$B_AK" S3T_B_SK="$B_SK"
export S3T_KFP="https://localhost:$PORT" S3T_A_TOKEN="$A_TOKEN" S3T_AGENT_TOKEN="$AGENT_TOKEN"
export S3T_DATA="$DATA" S3T_KUBECONFIG="$DATA/admin.kubeconfig" S3T_TMP="$TMP"
log "workspaces team-a and team-b ready; running the checks"
set +e
"$VPY" "$HERE/s3_test.py"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  log "kfsec's log (last 40 lines):"
  tail -40 "$TMP/kfsec.log" >&2 || true
fi
exit "$rc"
