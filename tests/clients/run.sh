#!/usr/bin/env bash
# The official Python Kubernetes client (PyPI `kubernetes`, in tests/clients/.venv, created here
# idempotently) against the real kfsec binary: k8s_client_test.py uses it as users do
# (load_kube_config on the admin kubeconfig, VersionApi, CoreV1Api CRUD and watch,
# CustomObjectsApi on Profiles, TokenRequest, SelfSubjectReview, a user's 403).
#
# Boots `kfsec serve` on a free port with a temporary data dir, adds one local user and gets its
# ID token with the password grant of a static client listed in bearerAudiences. Closes with
# `clients: N passed, M failed`; exits non-zero on failure.
#
#   bash tests/clients/run.sh     # env: KFSEC_BIN=/path/to/kfsec to skip the build, KEEP_TMP=1
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"

log() { echo "clients-tests: $*"; }

# --- venv ----------------------------------------------------------------------------------
VENV="$HERE/.venv"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import kubernetes" 2>/dev/null; then
  log ".venv present (kubernetes $("$VENV/bin/python" -c 'import kubernetes; print(kubernetes.__version__)'))"
else
  log "creating .venv with the kubernetes client"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check kubernetes
fi

# --- kfsec ------------------------------------------------------------------------------------
if [ -z "${KFSEC_BIN:-}" ]; then
  (cd "$ROOT" && cargo build -q -p kfsec)
  KFSEC_BIN="$ROOT/target/debug/kfsec"
fi

TMP="$(mktemp -d /tmp/kfsec-clients.XXXXXX)"
DATA="$TMP/data"
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
BASE="https://localhost:$PORT"
SECRET="clients-test-secret-$RANDOM$RANDOM"
cat >"$TMP/kfsec.yaml" <<EOF
apiVersion: kfsec/v1
bearerAudiences: [clients-test]
oauth2:
  passwordConnector: local
staticClients:
- id: clients-test
  name: Clients test
  secret: $SECRET
  redirectURIs: ["http://127.0.0.1:5555/cb"]
EOF
# shellcheck source=../lib/serve.sh
source "$ROOT/tests/lib/serve.sh"
start_kfsec clients-tests "$TMP/kfsec.yaml" "$DATA" "$PORT" "$TMP"
CA="$DATA/pki/ca.crt"
log "kfsec up on $BASE"

USER_EMAIL=clients-user@example.org
USER_PW="clients password $RANDOM$RANDOM"
echo "$USER_PW" | "$KFSEC_BIN" user add "$USER_EMAIL" --data-dir "$DATA" >/dev/null
USER_TOKEN="$(USER_PW="$USER_PW" "$VENV/bin/python" - "$BASE" "$CA" "$USER_EMAIL" "$SECRET" <<'EOF'
import os, sys, requests
base, ca, user, secret = sys.argv[1:5]
r = requests.post(f"{base}/dex/token", verify=ca, auth=("clients-test", secret),
                  data={"grant_type": "password", "username": user, "password": os.environ["USER_PW"], "scope": "openid email groups"})
r.raise_for_status()
print(r.json()["id_token"])
EOF
)"

export K8S_KUBECONFIG="$DATA/admin.kubeconfig" K8S_BASE="$BASE" K8S_CA="$CA" K8S_USER="$USER_EMAIL" K8S_USER_TOKEN="$USER_TOKEN"
export HOME="$TMP/home" PYTHONWARNINGS=ignore
unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE
mkdir -p "$HOME"

rc=0
out="$("$VENV/bin/python" "$HERE/k8s_client_test.py" 2>&1)" || rc=$?
echo "$out"
PASSED="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\1/p' <<<"$out" | tail -1)"
FAILED="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\2/p' <<<"$out" | tail -1)"
if [ -z "$PASSED" ]; then PASSED=0; FAILED=1; echo "clients-tests: the test script did not finish (exit $rc)"; fi
if ! kill -0 "$PID" 2>/dev/null; then echo "clients-tests: kfsec died during the tests" >&2; FAILED=$((FAILED + 1)); fi
if grep -q "panicked" "$TMP/kfsec.log"; then echo "clients-tests: kfsec panicked" >&2; FAILED=$((FAILED + 1)); fi
echo "clients: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
