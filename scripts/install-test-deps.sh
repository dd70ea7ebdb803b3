#!/usr/bin/env bash
# Installs what the tests and benches need. Idempotent, and quick when everything is
# already there: apt is only touched when a package is missing, npm only when
# tests/browser/node_modules does not match package-lock.json.
#
#   bash scripts/install-test-deps.sh          # system packages + browser-test node deps
#   bash scripts/install-test-deps.sh --bench  # also the python venv used by bench/login.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WITH_BENCH=0
for a in "$@"; do
  case "$a" in
    --bench) WITH_BENCH=1 ;;
    *) echo "install-test-deps: unknown argument $a" >&2; exit 2 ;;
  esac
done

log() { echo "install-test-deps: $*"; }

# --- Debian packages ---------------------------------------------------------------
# chromium: the browser test drives /usr/bin/chromium through playwright-core.
# fonts-dejavu-core: so screenshots show text (chromium only recommends fonts).
# nginx, wrk: bench/proxy.sh; nginx is also the shared upstream of it::sec_paths.
# python3: the WSGI upstream (wsgiref) of it::sec_headers. python3-venv: bench/login.sh (bcrypt baseline).
# testssl.sh: the TLS audit of the front door and the webhook listener (tests/tls/testssl.sh).
# slapd, ldap-utils: the private OpenLDAP directory of it::fed_ldap and of
# scripts/federation-fixtures.sh (tests/browser/federated.mjs, tests/kfp/federated.sh,
# bench/login.sh) — its own slapd.conf in a tempdir; the Debian default instance that slapd's
# postinst sets up is never started or used.
# jq, curl, openssl: the README's commands (tests/readme/readme_test.py runs them).
# protobuf-compiler, libprotobuf-dev: the etcd-client crate compiles etcd's .proto files (protoc +
# google/protobuf/*.proto). etcd-server, etcd-client: the etcd store's tests start their own
# /usr/bin/etcd members on free 127.0.0.1 ports (the packaged etcd.service is not used).
# prometheus: promtool (check metrics, check/test rules) and a prometheus server of its own on a
# free 127.0.0.1 port (tests/prometheus/run.sh; the packaged prometheus.service is not used).
APT_PKGS=(ca-certificates openssl curl jq nginx python3 python3-venv wrk chromium fonts-dejavu-core procps testssl.sh slapd ldap-utils protobuf-compiler libprotobuf-dev etcd-server etcd-client prometheus)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  APT_PKGS+=(nodejs npm)
fi
# --bench: haproxy is a peer of bench/proxy.sh; valgrind (callgrind) runs bench/proxy-instr.sh.
if [ "$WITH_BENCH" = 1 ]; then
  APT_PKGS+=(haproxy valgrind)
fi

missing=()
for p in "${APT_PKGS[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  # Do not let package installation start daemons (nginx would grab port 80).
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/tmp/kfsec-apt-install.log 2>&1 || { tail -n 40 /tmp/kfsec-apt-install.log >&2; exit 1; }
  if [ "$created_policy" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
else
  log "system packages present"
fi

# --- node deps for tests/browser ---------------------------------------------------
# playwright-core never downloads a browser; we use Debian's /usr/bin/chromium.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
BROWSER_DIR="$ROOT/tests/browser"
stamp="$BROWSER_DIR/node_modules/.kfsec-lock-sha256"
want="$(sha256sum "$BROWSER_DIR/package-lock.json" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
  log "node modules present"
else
  log "npm ci in tests/browser"
  (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
fi

# --- python venv for bench/login.sh --------------------------------------------------
if [ "$WITH_BENCH" = 1 ]; then
  VENV="$ROOT/bench/.venv"
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import bcrypt' 2>/dev/null; then
    log "bench venv present"
  else
    log "creating bench venv with bcrypt"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q bcrypt
  fi
fi
log "ok"
