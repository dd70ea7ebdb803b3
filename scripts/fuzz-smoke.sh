#!/usr/bin/env bash
# Short fuzz run of the trust-boundary parsers (cargo-fuzz, stable toolchain, no sanitizer).
#   scripts/fuzz-smoke.sh            # each target for FUZZ_SECONDS (default 20) seconds
# Installs cargo-fuzz if it is missing. New corpus entries go to a temporary directory, so the
# seed corpus under fuzz/corpus/ is left as it is. Exits non-zero if any target crashes
# (the crashing input is kept under fuzz/artifacts/<target>/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"
TARGETS=(admission_review poddefault_apply path_normalize kfp_multipart jwt_verify
  label_selector field_selector protobuf_body kfp_filter admission_settings upstream_id_token
  ldap_entry ldap_message server_side_apply api_patch sealed_envelope store_envelope audit s3_sigv4 s3_listing
  upstream_response front_request connection_headers trusted_proxies)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

cd "$ROOT/fuzz"
WORK="$(mktemp -d /tmp/kfsec-fuzz.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# Unoptimised (--dev) builds: half the compile CPU of cargo-fuzz's default release build (300 s
# against 690 s on this 2-core machine, measured), at about two thirds of the executions per
# second — the right trade for a smoke run of seconds. All targets build in one cargo call.
echo "==> building the fuzz targets (--dev; $(df -h --output=avail . | tail -1 | tr -d ' ') disk free)"
# cargo-fuzz reports a failed build as an error with a backtrace when RUST_BACKTRACE is set,
# which pushes cargo's own message out of a log's tail: keep only the message.
if ! RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 cargo fuzz build -s none --dev; then
  echo "FAIL: the fuzz targets did not build ($(df -h --output=avail . | tail -1 | tr -d ' ') disk free)" >&2
  exit 1
fi

# Each libFuzzer run is one thread: as many run at once as there are cores (FUZZ_JOBS), each
# for its full time, so the step takes a fraction of their sum.
JOBS="${FUZZ_JOBS:-$(nproc)}"
run_one() { # TARGET: its exit status in $WORK/TARGET.rc, its log in $WORK/TARGET.log
  local t="$1"
  mkdir -p "$WORK/$t"
  if cargo fuzz run -s none --dev "$t" "$WORK/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -max_len=8192 -print_final_stats=1 2>"$WORK/$t.log"; then
    echo 0 >"$WORK/$t.rc"
  else
    echo 1 >"$WORK/$t.rc"
  fi
}
running=0
for t in "${TARGETS[@]}"; do
  echo "==> fuzzing $t for ${SECONDS_PER_TARGET}s"
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

status=0
for t in "${TARGETS[@]}"; do
  if [ "$(cat "$WORK/$t.rc" 2>/dev/null)" = 0 ]; then
    echo "$t:"
    grep -E '^(Done|stat::number_of_executed_units)' "$WORK/$t.log" || true
  else
    status=1
    echo "FAIL: $t crashed; last lines of its log:" >&2
    tail -n 40 "$WORK/$t.log" >&2
  fi
done
exit "$status"
