#!/usr/bin/env bash
# kfsec's metrics and alerts against Debian's promtool and a real Prometheus (both from the
# `prometheus` package, installed by scripts/install-test-deps.sh):
#   1. boots `kfsec serve` (temporary data dir, free ports) with a proxied route, drives a failed
#      and a successful login (password grant), a denied Kubernetes API call and a proxied
#      request with and without a token;
#   2. `promtool check metrics` on a scrape of the admin listener's /metrics: no warning allowed;
#   3. `promtool check rules` and `promtool test rules` on deploy/prometheus/;
#   4. every metric name the rules and deploy/grafana/kfsec-dashboard.json use is one kfsec
#      exposes (check_names.py);
#   5. starts prometheus on 127.0.0.1 (free port, temp dir, 1 s scrape interval, the alert rules
#      loaded) scraping kfsec, and queries its HTTP API until each documented series is there
#      with a sensible value (checks.py).
# Closes with `prometheus: N passed, M failed`; exits non-zero on failure.
#
#   bash tests/prometheus/run.sh     # env: KFSEC_BIN=/path/to/kfsec to skip the build, KEEP_TMP=1
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
log() { echo "prometheus-tests: $*"; }

for tool in promtool prometheus curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "prometheus-tests: $tool missing (run scripts/install-test-deps.sh)" >&2
    echo "prometheus: 0 passed, 1 failed"
    exit 1
  fi
done

if [ -z "${KFSEC_BIN:-}" ]; then
  (cd "$ROOT" && cargo build -q -p kfsec)
  KFSEC_BIN="$ROOT/target/debug/kfsec"
fi

TMP="$(mktemp -d /tmp/kfsec-prometheus.XXXXXX)"
DATA="$TMP/data"
PID=""
PROM_PID=""
cleanup() {
  if [ -n "$PROM_PID" ]; then kill "$PROM_PID" 2>/dev/null || true; wait "$PROM_PID" 2>/dev/null || true; fi
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

PASSED=0
FAILED=0
check() { # NAME CMD... : one counted check
  local name="$1"; shift
  if "$@"; then PASSED=$((PASSED + 1)); log "ok   $name"; else FAILED=$((FAILED + 1)); log "FAIL $name"; fi
}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- kfsec, and traffic for the counters ------------------------------------------------------
PORT="$(free_port)"
BASE="https://localhost:$PORT"
SECRET="prometheus-test-secret-$RANDOM$RANDOM"
cat >"$TMP/kfsec.yaml" <<YAML
apiVersion: kfsec/v1
bearerAudiences: [prometheus-test]
oauth2:
  passwordConnector: local
staticClients:
- id: prometheus-test
  name: Prometheus test
  secret: $SECRET
  redirectURIs: ["http://127.0.0.1:5555/cb"]
routes:
- prefix: /app/
  upstream: http://127.0.0.1:9
YAML
# shellcheck source=../lib/serve.sh
source "$ROOT/tests/lib/serve.sh"
start_kfsec prometheus-tests "$TMP/kfsec.yaml" "$DATA" "$PORT" "$TMP"
ADMIN="$(sed -n 's/.*admin http:\/\/\([0-9.:]*\)).*/\1/p' "$TMP/kfsec.out" | head -1)"
CA="$DATA/pki/ca.crt"
log "kfsec up on $BASE, admin listener $ADMIN"

USER_EMAIL=prometheus-user@example.org
USER_PW="prometheus password $RANDOM$RANDOM"
echo "$USER_PW" | "$KFSEC_BIN" user add "$USER_EMAIL" --data-dir "$DATA" >/dev/null
token() { # PASSWORD: the id_token of the password grant, or nothing
  curl -sS --cacert "$CA" -u "prometheus-test:$SECRET" "$BASE/dex/token" \
    --data-urlencode grant_type=password --data-urlencode "username=$USER_EMAIL" \
    --data-urlencode "password=$1" --data-urlencode "scope=openid email groups" |
    "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("id_token",""))'
}
check "a wrong password is refused" test -z "$(token "not the password")"
TOKEN="$(token "$USER_PW")"
check "the right password gets an ID token" test -n "$TOKEN"
code() { curl -sS -o /dev/null -w '%{http_code}' --cacert "$CA" "$@"; }
check "a user's kubectl-style read of secrets is denied (403)" \
  test "$(code -H "Authorization: Bearer $TOKEN" "$BASE/api/v1/namespaces/default/secrets")" = 403
anonymous_refused() { case "$(code "$BASE/app/x")" in 302 | 401) return 0 ;; *) return 1 ;; esac; }
check "a proxied route without a token is refused (login redirect)" anonymous_refused
# The upstream (port 9, discard) does not answer HTTP: 502, after the route allowed the caller.
check "a proxied route with a token is passed on" \
  test "$(code -H "Authorization: Bearer $TOKEN" "$BASE/app/x")" = 502

# --- promtool ------------------------------------------------------------------------------------
curl -sS "http://$ADMIN/metrics" >"$TMP/scrape.txt"
lint_ok() {
  local out rc=0
  out="$(promtool check metrics <"$TMP/scrape.txt" 2>&1)" || rc=$?
  [ -n "$out" ] && echo "$out"
  [ "$rc" -eq 0 ] && [ -z "$out" ]
}
check "promtool check metrics: no warning" lint_ok
check "promtool check rules" promtool check rules "$ROOT/deploy/prometheus/kfsec-alerts.yaml"
check "promtool test rules" promtool test rules "$ROOT/deploy/prometheus/kfsec-alerts.test.yaml"
check "the rules and the dashboard use only series kfsec exposes" \
  "$PY" "$HERE/check_names.py" "$TMP/scrape.txt" "$ROOT/deploy/prometheus/kfsec-alerts.yaml" \
  "$ROOT/deploy/grafana/kfsec-dashboard.json"

# --- a real Prometheus scraping kfsec ----------------------------------------------------------------
PROM_PORT="$(free_port)"
mkdir -p "$TMP/prom"
cp "$ROOT/deploy/prometheus/kfsec-alerts.yaml" "$TMP/prom/"
cat >"$TMP/prom/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - kfsec-alerts.yaml
scrape_configs:
  - job_name: kfsec
    static_configs:
      - targets: ["$ADMIN"]
YAML
prometheus --config.file="$TMP/prom/prometheus.yml" --storage.tsdb.path="$TMP/prom/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prom/prometheus.log" 2>&1 &
PROM_PID=$!
log "prometheus on 127.0.0.1:$PROM_PORT scraping $ADMIN"
rc=0
"$PY" "$HERE/checks.py" "http://127.0.0.1:$PROM_PORT" >"$TMP/checks.out" 2>&1 || rc=$?
cat "$TMP/checks.out"
p="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\1/p' "$TMP/checks.out" | tail -1)"
f="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\2/p' "$TMP/checks.out" | tail -1)"
if [ -z "$p" ]; then
  p=0; f=1
  echo "prometheus-tests: the queries did not finish (exit $rc)"; tail -n 20 "$TMP/prom/prometheus.log"
fi
PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
if ! kill -0 "$PID" 2>/dev/null; then echo "prometheus-tests: kfsec died during the tests" >&2; FAILED=$((FAILED + 1)); fi
if grep -q "panicked" "$TMP/kfsec.log"; then echo "prometheus-tests: kfsec panicked" >&2; FAILED=$((FAILED + 1)); fi
echo "prometheus: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
