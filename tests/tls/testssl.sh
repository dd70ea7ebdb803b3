#!/usr/bin/env bash
# TLS audit of kfsec's front door and webhook listener with Debian's testssl.sh: SSLv2/3 and
# TLS 1.0/1.1 must not be offered, no weak cipher class may be offered, and no vulnerability
# check may report a finding. Boots the real binary on loopback ports; prints
# `testssl: N passed, M failed` last and exits non-zero on any finding.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${KFSEC_BIN:-$ROOT/target/debug/kfsec}"
TMP="$(mktemp -d /tmp/kfsec-testssl.XXXXXX)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A setup failure is reported as one failed audit (with the server's log), never as a silent exit.
setup_failed() { echo "  FINDING setup: $1"; tail -30 "$TMP/kfsec.log" | sed 's/^/  | /'; echo "testssl: 0 passed, 1 failed"; exit 1; }
# Boots kfsec on free loopback ports and waits up to 60 s for /readyz. A port picked free can be
# taken by another process before kfsec binds it: a server that exits while starting is started
# again on new ports (three tries).
start() {
  local try
  for try in 1 2 3; do
    HTTPS=$(free_port); WEBHOOK=$(free_port); ADMIN=$(free_port)
    "$BIN" serve --data-dir "$TMP/data" --https-addr "127.0.0.1:$HTTPS" --admin-addr "127.0.0.1:$ADMIN" \
      --webhook-addr "127.0.0.1:$WEBHOOK" >"$TMP/kfsec.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 300); do
      curl -fsS -m 2 "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && return 0
      kill -0 "$PID" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$PID" 2>/dev/null; then setup_failed "kfsec did not answer /readyz within 60 s"; fi
    wait "$PID" 2>/dev/null || true
    PID=""
    echo "  kfsec exited while starting (try $try):"; tail -5 "$TMP/kfsec.log" | sed 's/^/  | /'
  done
  setup_failed "kfsec exited while starting, three times"
}
start

passed=0; failed=0
audit() { # NAME PORT
  local name="$1" port="$2" json="$TMP/$1.json"
  echo "==> testssl $name (127.0.0.1:$port): protocols, cipher classes, vulnerabilities"
  # testssl's own exit status counts findings of any severity; the JSON is judged below.
  testssl --quiet --color 0 --warnings off --ip one --fast -p -s -U --jsonfile "$json" \
    "127.0.0.1:$port" >"$TMP/$name.txt" 2>&1 || true
  if ! python3 - "$json" "$name" <<'PY'; then failed=$((failed + 1)); else passed=$((passed + 1)); fi
import json, sys
path, name = sys.argv[1], sys.argv[2]
items = json.load(open(path))
bad = []
must_be_off = {"SSLv2", "SSLv3", "TLS1", "TLS1_1"}
for it in items:
    i, sev, finding = it.get("id", ""), it.get("severity", ""), it.get("finding", "")
    if i in must_be_off and "not offered" not in finding:
        bad.append(f"{i}: {finding}")
    elif i.startswith("cipherlist_") and i not in ("cipherlist_STRONG", "cipherlist_AVERAGE") and "not offered" not in finding and "offered" in finding:
        bad.append(f"{i}: {finding}")
    elif sev in ("MEDIUM", "HIGH", "CRITICAL"):
        bad.append(f"{i} [{sev}]: {finding}")
offered = [it["id"] for it in items if it.get("id") in ("TLS1_2", "TLS1_3") and "offered" in it.get("finding", "") and "not" not in it.get("finding", "")]
if sorted(offered) != ["TLS1_2", "TLS1_3"]:
    bad.append(f"expected TLS 1.2 and 1.3 offered, got {offered}")
for b in bad:
    print(f"  FINDING {name}: {b}")
print(f"  {name}: {len(items)} checks, {len(bad)} findings")
sys.exit(1 if bad else 0)
PY
}
audit front-door "$HTTPS"
audit webhooks "$WEBHOOK"
echo "testssl: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
