#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run):
#   install test deps → cargo fmt --check → clippy -D warnings → no OpenSSL/native-tls/ring in
#   the normal dependency tree → cargo test --workspace
#   (compiled first, then run under TEST_TIMEOUT seconds, default 1200)
#   → browser test (headless Chromium against the real target/debug/kfsec) → federated
#   (tests/browser/federated.mjs: slapd and a second kfsec as upstreams, kubectl via kfsec login).
# Every step runs even if an earlier one failed (except the browser test, which needs the
# build); a summary is printed at the end and the exit status is non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START=$(date +%s)
declare -a SUMMARY=()
FAILED=0
LOGDIR="$(mktemp -d /tmp/kfsec-test.XXXXXX)"
trap 'rm -rf "$LOGDIR"' EXIT
STEP_FAILURES=0 # failed steps whose failure is not counted as failed tests

step() {
  # step NAME CMD... : run CMD, record its result and duration.
  local name="$1"; shift
  local t0 t1 rc
  echo
  if [ "$1" = logged ]; then echo "==> [$name] ${*:3}"; else echo "==> [$name] $*"; fi
  t0=$(date +%s)
  if "$@"; then rc=0; else rc=$?; fi
  t1=$(date +%s)
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("$(printf 'PASS  %-11s %5ss' "$name" "$((t1 - t0))")")
  else
    SUMMARY+=("$(printf 'FAIL  %-11s %5ss  (exit %s)' "$name" "$((t1 - t0))" "$rc")")
    FAILED=1
    STEP_FAILURES=$((STEP_FAILURES + 1))
  fi
  return "$rc"
}

skip() {
  SUMMARY+=("$(printf 'SKIP  %-11s        (%s)' "$1" "$2")")
  FAILED=1
  STEP_FAILURES=$((STEP_FAILURES + 1))
}

# Output of a step is also kept in $LOGDIR/NAME.log, to count tests at the end.
logged() { # NAME CMD...
  local name="$1"; shift
  "$@" 2>&1 | tee "$LOGDIR/$name.log"
  return "${PIPESTATUS[0]}"
}

summary() {
  local passed=0 failed=0 p f
  # cargo: "test result: ok. 12 passed; 0 failed; ..." per test binary.
  if [ -f "$LOGDIR/test.log" ]; then
    read -r p f < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$LOGDIR/test.log" |
      awk '{ p += $1; f += $2 } END { print p + 0, f + 0 }')
    passed=$((passed + p)); failed=$((failed + f))
  fi
  # browser: "browser: 1 passed, 0 failed"; federated, kfp: "kfp: 20 passed, 0 failed".
  for n in browser federated kfp clients readme testssl ha prometheus s3; do
    [ -f "$LOGDIR/$n.log" ] || continue
    read -r p f < <(sed -n "s/^$n: \([0-9]*\) passed, \([0-9]*\) failed\$/\1 \2/p" "$LOGDIR/$n.log" | tail -1 |
      awk '{ p += $1; f += $2 } END { print p + 0, f + 0 }')
    passed=$((passed + p)); failed=$((failed + f))
  done
  echo
  echo "==> summary ($(($(date +%s) - START))s total)"
  for l in "${SUMMARY[@]}"; do echo "  $l"; done
  # A full disk fails builds in ways that look like code faults; say how much was left.
  echo "  disk: $(df -h --output=avail "$ROOT" | tail -1 | tr -d ' ') free where the build ran"
  if [ "$FAILED" -eq 0 ]; then
    echo "test.sh: all steps passed"
  else
    echo "test.sh: FAILED"
    # A failed step (fmt, clippy, build, a test binary that did not compile) counts as one
    # failure so that the closing line never reads "0 failed" on a failing run.
    if [ "$failed" -eq 0 ]; then failed=$STEP_FAILURES; fi
    if [ "$failed" -eq 0 ]; then failed=1; fi
  fi
  echo "tests: $passed passed, $failed failed"
}

if ! step deps bash scripts/install-test-deps.sh; then
  summary
  exit 1
fi

step fmt cargo fmt --all -- --check || true
step clippy cargo clippy --workspace --all-targets -- -D warnings || true
# aws-lc-rs is the only crypto: fails if openssl, openssl-sys, native-tls or ring become a
# normal dependency (cargo tree, under a second).
step banned-deps bash scripts/check-banned-deps.sh || true
# Compile the tests first (no time limit), then run them under a time limit so that a hung
# test cannot eat CI's 90 minutes. cargo test's own "test result:" lines go straight to the
# output (CI reads them).
TEST_TIMEOUT="${TEST_TIMEOUT:-1200}"
TEST_BUILD_OK=0
if step test-build cargo test --workspace --no-run; then
  TEST_BUILD_OK=1
  # KFSEC_REQUIRE_ETCD: the etcd store's tests fail (instead of skipping) without /usr/bin/etcd.
  step test logged test env KFSEC_REQUIRE_ETCD=1 timeout --kill-after=30 "$TEST_TIMEOUT" cargo test --workspace || {
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "test.sh: cargo test killed after ${TEST_TIMEOUT}s (hung test?)"; fi
  }
else
  skip test "tests did not compile"
fi
# `cargo test` already built target/debug/kfsec (the integration tests run it); a separate
# `cargo build -p kfsec` would resolve other features and rebuild dependencies (~1.5 min on a
# cold 2-core machine), so it only runs when the test build did not produce the binary.
if { [ "$TEST_BUILD_OK" = 1 ] && [ -x target/debug/kfsec ]; } || step build cargo build -p kfsec; then
  step browser logged browser env KFSEC_BIN="$ROOT/target/debug/kfsec" node tests/browser/login.mjs || true
  # Federated identity end to end (~40 s): Chromium through the chooser to slapd, a second kfsec
  # as upstream OP and the local database; kubectl via `kfsec login`; removal upstream.
  step federated logged federated env KFSEC_BIN="$ROOT/target/debug/kfsec" node tests/browser/federated.mjs || true
  # The kfp SDKs 1.8 and 2.14 against the real binary; then a logged-out Chromium opens a run the
  # SDK created from the link it printed (tests/browser/pipeline.mjs, counted in kfp's line).
  step kfp logged kfp env KFSEC_BIN="$ROOT/target/debug/kfsec" bash tests/kfp/run.sh || true
  # The official Python Kubernetes client (PyPI kubernetes, ~20 s): CRUD, watch, Profiles,
  # TokenRequest, SelfSubjectReview, a user's 403 (tests/clients/run.sh).
  step clients logged clients env KFSEC_BIN="$ROOT/target/debug/kfsec" bash tests/clients/run.sh || true
  # The README as a tested script (~40 s): every command block a user copies, in order, against a
  # fresh kfsec on the README's own port 8443 (tests/readme/readme_test.py).
  step readme logged readme env KFSEC_BIN="$ROOT/target/debug/kfsec" python3 tests/readme/readme_test.py || true
  step testssl logged testssl env KFSEC_BIN="$ROOT/target/debug/kfsec" bash tests/tls/testssl.sh || true
  # Scale-out (~50 s): three real etcd members and three kfsec replicas — shared sessions,
  # lockout and refresh; etcd leader/follower killed under load, the kfsec leader killed, etcd
  # fully down and back, an unreachable endpoint at startup (tests/ha/run.sh).
  step ha logged ha env KFSEC_BIN="$ROOT/target/debug/kfsec" bash tests/ha/run.sh || true
  # Metrics and alerts (~20 s): promtool check metrics on a scrape (no warning), promtool
  # check/test rules on deploy/prometheus/, and a real Prometheus scraping kfsec, queried over its
  # HTTP API for every documented series (tests/prometheus/run.sh).
  step prometheus logged prometheus env KFSEC_BIN="$ROOT/target/debug/kfsec" bash tests/prometheus/run.sh || true
  # The S3 gateway with real clients (~35 s): boto3 and the minio SDK with a workspace's keys
  # through kfsec's gateway to moto (signatures on), and KFP's artifact endpoint (tests/s3/run.sh).
  step s3 logged s3 env KFSEC_BIN="$ROOT/target/debug/kfsec" bash tests/s3/run.sh || true
  # Short fuzz run of AdmissionReview parsing and PodDefault application (cargo-fuzz, stable).
  step fuzz env FUZZ_SECONDS="${FUZZ_SECONDS:-10}" bash scripts/fuzz-smoke.sh || true
else
  skip browser "kfsec did not build"
  skip federated "kfsec did not build"
  skip kfp "kfsec did not build"
  skip clients "kfsec did not build"
  skip readme "kfsec did not build"
  skip testssl "kfsec did not build"
  skip ha "kfsec did not build"
  skip prometheus "kfsec did not build"
  skip s3 "kfsec did not build"
fi

summary
exit "$FAILED"
