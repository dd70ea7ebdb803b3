#!/usr/bin/env bash
# The kfp SDK with federated users' ID tokens: a kfsec whose users come from real upstreams
# (scripts/federation-fixtures.sh: slapd behind the ldap connector, a second kfsec behind the
# oidc connector, an Entra-shaped provider behind the microsoft connector). The LDAP user's token comes from the password grant (oauth2.passwordConnector:
# ldap, as Dex CLI users log in), the upstream user's from the code flow through the upstream's
# own login form (fed_login.py). Each owns a Profile; kfp_sdk_test.py's `federated` mode checks
# that each sees only their namespace and is refused the other's. Run by run.sh (which made the
# venvs); ends with `RESULT passed=N failed=M`.
#
#   KFSEC_BIN=target/debug/kfsec bash tests/kfp/federated.sh   # KFP_PIPELINE=<compiled package>
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
V2PY="$HERE/.venv2/bin/python"
KFSEC_BIN="${KFSEC_BIN:-$ROOT/target/debug/kfsec}"
FIXTURES="$ROOT/scripts/federation-fixtures.sh"
log() { echo "kfp-federated: $*"; }
[ -x "$V2PY" ] || { log "no $V2PY (run tests/kfp/run.sh)"; echo "RESULT passed=0 failed=1"; exit 1; }

TMP="$(mktemp -d /tmp/kfsec-kfp-fed.XXXXXX)"
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  bash "$FIXTURES" stop "$TMP/fixtures" || true
  if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(port)"
ADMIN="$(port)"
BASE="https://localhost:$PORT"
KFSEC_BIN="$KFSEC_BIN" bash "$FIXTURES" start "$TMP/fixtures" "$BASE/dex"
# shellcheck source=/dev/null
source "$TMP/fixtures/fixtures.env"

CLIENT=kfp-fed-cli
SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
{
  cat <<EOF
apiVersion: kfsec/v1
publicURL: $BASE
bearerAudiences: [$CLIENT]
staticClients:
- id: $CLIENT
  name: KFP federated test CLI
  secret: $SECRET
  redirectURIs: ["http://127.0.0.1:5555/cb"]
oauth2:
  passwordConnector: ldap
EOF
  cat "$CONNECTORS_YAML"
} >"$TMP/kfsec.yaml"
"$KFSEC_BIN" serve --config "$TMP/kfsec.yaml" --data-dir "$TMP/data" --https-addr "127.0.0.1:$PORT" \
  --admin-addr "127.0.0.1:$ADMIN" --webhook-addr 127.0.0.1:0 >"$TMP/kfsec.out" 2>"$TMP/kfsec.log" &
PID=$!
for _ in $(seq 1 300); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/readyz")" = 200 ]; then break; fi
  kill -0 "$PID" 2>/dev/null || { tail -20 "$TMP/kfsec.log" >&2; log "kfsec exited"; echo "RESULT passed=0 failed=1"; exit 1; }
  sleep 0.1
done
CA="$TMP/data/pki/ca.crt"
cat "$CA" "$UPSTREAM_CA" >"$TMP/cas.pem"
KC=(kubectl --kubeconfig "$TMP/data/admin.kubeconfig" --cache-dir "$TMP/kube-cache")
"${KC[@]}" apply -f - >/dev/null <<EOF
apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: fed-ldap
spec:
  owner:
    kind: User
    name: $LDAP_EMAIL
---
apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: fed-oidc
spec:
  owner:
    kind: User
    name: $UPSTREAM_EMAIL
---
apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: fed-ms
spec:
  owner:
    kind: User
    name: $MS_EMAIL
EOF
for _ in $(seq 1 100); do
  if "${KC[@]}" get rolebindings -n fed-ldap -o name 2>/dev/null | grep -q namespaceAdmin &&
    "${KC[@]}" get rolebindings -n fed-oidc -o name 2>/dev/null | grep -q namespaceAdmin &&
    "${KC[@]}" get rolebindings -n fed-ms -o name 2>/dev/null | grep -q namespaceAdmin; then break; fi
  sleep 0.1
done

unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE
token() { sed -n 's/^TOKEN=//p'; }
LDAP_TOKEN="$(printf '%s\n' "$LDAP_PASSWORD" | "$V2PY" "$HERE/fed_login.py" "$BASE" "$TMP/cas.pem" "$CLIENT" "$SECRET" password "$LDAP_USER" | token)"
OIDC_TOKEN="$(printf '%s\n' "$UPSTREAM_PASSWORD" | "$V2PY" "$HERE/fed_login.py" "$BASE" "$TMP/cas.pem" "$CLIENT" "$SECRET" browser upstream "$UPSTREAM_EMAIL" | token)"
# The fake Entra signs its users in without a form (as an existing Entra session does).
MS_TOKEN="$(printf '\n' | "$V2PY" "$HERE/fed_login.py" "$BASE" "$TMP/cas.pem" "$CLIENT" "$SECRET" browser microsoft "$MS_EMAIL" | token)"
if [ -z "${KFP_PIPELINE:-}" ]; then
  KFP_PIPELINE="$TMP/pipeline.yaml"
  "$V2PY" "$HERE/compile_pipeline.py" "$KFP_PIPELINE"
fi
log "kfsec on $BASE with the fixtures' connectors; tokens for $LDAP_EMAIL (password grant), $UPSTREAM_EMAIL (upstream oidc login) and $MS_EMAIL (microsoft login)"

export KFP_BASE="$BASE" KFP_CA="$CA" KFP_STATE="$TMP/state.json" KFP_PIPELINE
export KFP_FED_LDAP_TOKEN="$LDAP_TOKEN" KFP_FED_LDAP_EMAIL="$LDAP_EMAIL" KFP_FED_LDAP_GROUPS="$LDAP_GROUPS"
export KFP_FED_OIDC_TOKEN="$OIDC_TOKEN" KFP_FED_OIDC_EMAIL="$UPSTREAM_EMAIL" KFP_FED_OIDC_GROUPS="$UPSTREAM_GROUPS"
export KFP_FED_MS_TOKEN="$MS_TOKEN" KFP_FED_MS_EMAIL="$MS_EMAIL" KFP_FED_MS_GROUPS="$MS_GROUPS"
export HOME="$TMP/home" PYTHONWARNINGS=ignore
mkdir -p "$HOME"
rc=0
"$V2PY" "$HERE/kfp_sdk_test.py" federated || rc=$?
if ! kill -0 "$PID" 2>/dev/null; then log "kfsec died during the tests"; echo "RESULT passed=0 failed=1"; exit 1; fi
exit "$rc"
