#!/usr/bin/env bash
# kfsec scale-out on a real etcd cluster (issue 14): three Debian /usr/bin/etcd members on free
# 127.0.0.1 ports and two or three real `kfsec serve` replicas sharing one configuration (store
# etcd, one secretsEncryption key, one static user, a route to a small echo upstream). The
# scenarios (sessions, logout, a joining replica, the admin kubeconfig, shared lockout, refresh
# race, a dead etcd leader and follower under load, a dead kfsec leader, etcd fully down and back,
# an unreachable endpoint at startup) are in ha_test.py; each prints one PASS/FAILED line.
# Closes with `ha: N passed, M failed`; exits non-zero on failure. Every process it starts is
# stopped on any exit (the Python side records their ids in $TMP/pids; this trap kills them too).
#
#   bash tests/ha/run.sh      # env: KFSEC_BIN=/path/to/kfsec to skip the build, KEEP_TMP=1
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

for bin in /usr/bin/etcd /usr/bin/etcdctl kubectl python3; do
  if ! command -v "$bin" >/dev/null; then
    echo "ha-tests: $bin not found (scripts/install-test-deps.sh installs it)"
    echo "ha: 0 passed, 1 failed"
    exit 1
  fi
done

if [ -z "${KFSEC_BIN:-}" ]; then
  (cd "$ROOT" && cargo build -q -p kfsec) || { echo "ha: 0 passed, 1 failed"; exit 1; }
  KFSEC_BIN="$ROOT/target/debug/kfsec"
fi
export KFSEC_BIN

TMP="$(mktemp -d /tmp/kfsec-ha.XXXXXX)"
PY_PID=""
cleanup() {
  if [ -n "$PY_PID" ]; then kill "$PY_PID" 2>/dev/null || true; wait "$PY_PID" 2>/dev/null || true; fi
  # Whatever the test started and did not stop itself (it writes one process id per line).
  if [ -f "$TMP/pids" ]; then
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$TMP/pids"
  fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "ha-tests: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 "$HERE/ha_test.py" "$TMP" &
PY_PID=$!
wait "$PY_PID"
rc=$?
PY_PID=""
# The Python side prints the closing line; if it died before that, say so in the same format.
if [ ! -f "$TMP/result" ]; then
  echo "ha-tests: ha_test.py ended without a result (exit $rc)"
  echo "ha: 0 passed, 1 failed"
  [ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
