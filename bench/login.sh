#!/usr/bin/env bash
# Full browser-style logins per second through kfsec vs raw bcrypt (cost 12) verifications per
# second, both at the same concurrency, measured in the same run.
#
#   bash bench/login.sh        # CONCURRENCY=2 DURATION=20 (seconds) by default
#
# A login = GET / → /dex/auth → login form → POST credentials → code → callback → session cookie
# → GET / (200), with a fresh curl cookie jar each time. bcrypt baseline: python `bcrypt` (C/Rust
# extension) checkpw on a cost-12 hash, one process per worker.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONCURRENCY="${CONCURRENCY:-2}"
DURATION="${DURATION:-20}"

bench_need curl python3
bash "$BENCH_ROOT/scripts/install-test-deps.sh" --bench >/dev/null
PY="$BENCH_ROOT/bench/.venv/bin/python"
bench_build
bench_init
T="$BENCH_TMP"

KF_PORT="$(free_port)"
KF_ADMIN="$(free_port)"
HASH="$(printf '%s\n' "$BENCH_PASSWORD" | "$KFSEC_RELEASE" hash-password)"
kfsec_config "$T/kfsec.yaml" "$KF_PORT" "$HASH" "loginProtection:
  maxFailuresPerAccount: 1000000
  maxFailuresPerAddress: 1000000"
kfsec_start "$T/data" "$T/kfsec.yaml" "$KF_PORT" "$KF_ADMIN"
CA="$T/data/pki/ca.crt"
KF="https://localhost:$KF_PORT"
kfsec_login "$KF" "$CA" "$T/warm.jar" || { echo "warm-up login failed" >&2; exit 1; }

# --- logins ------------------------------------------------------------------------------
bench_log "logins: $CONCURRENCY workers for ${DURATION}s"
worker() { # ID: log in repeatedly until the deadline; write "ok fail" counts.
  local id="$1" ok=0 bad=0
  while [ "$(date +%s%N)" -lt "$DEADLINE_NS" ]; do
    if kfsec_login "$KF" "$CA" "$T/w$id.jar" 2>>"$T/w$id.err"; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  done
  echo "$ok $bad" >"$T/w$id.count"
}
START_NS="$(date +%s%N)"
DEADLINE_NS=$((START_NS + DURATION * 1000000000))
wpids=()
for i in $(seq "$CONCURRENCY"); do worker "$i" & wpids+=($!); done
wait "${wpids[@]}"
END_NS="$(date +%s%N)"
OK=0 BAD=0
for i in $(seq "$CONCURRENCY"); do read -r o b <"$T/w$i.count"; OK=$((OK + o)); BAD=$((BAD + b)); done
ELAPSED="$(awk -v a="$START_NS" -v b="$END_NS" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"
LOGINS="$(awk -v n="$OK" -v s="$ELAPSED" 'BEGIN { printf "%.2f", n / s }')"

# --- raw bcrypt --------------------------------------------------------------------------
bench_log "bcrypt cost 12: $CONCURRENCY processes for ${DURATION}s"
BCRYPT="$("$PY" - "$CONCURRENCY" "$DURATION" "$BENCH_PASSWORD" <<'EOF'
import multiprocessing as mp, sys, time
import bcrypt

def work(args):
    hashed, pw, deadline = args
    n = 0
    while time.time() < deadline:
        if not bcrypt.checkpw(pw, hashed):
            raise SystemExit("bcrypt check failed")
        n += 1
    return n

conc, dur, pw = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].encode()
hashed = bcrypt.hashpw(pw, bcrypt.gensalt(12))
start = time.time()
with mp.Pool(conc) as pool:
    counts = pool.map(work, [(hashed, pw, start + dur)] * conc)
elapsed = time.time() - start
print(f"{sum(counts)} {elapsed:.3f} {bcrypt.__version__}")
EOF
)"
read -r BC_N BC_ELAPSED BC_VERSION <<<"$BCRYPT"
BC_RATE="$(awk -v n="$BC_N" -v s="$BC_ELAPSED" 'BEGIN { printf "%.2f", n / s }')"

echo
echo "login bench: concurrency $CONCURRENCY, ${DURATION}s each, $(nproc) cores shared by client and server"
printf '  kfsec full logins:     %4d ok, %d failed in %ss  = %s logins/s  (%.0f ms/login per worker)\n' \
  "$OK" "$BAD" "$ELAPSED" "$LOGINS" "$(awk -v r="$LOGINS" -v c="$CONCURRENCY" 'BEGIN { print (r > 0) ? c * 1000 / r : 0 }')"
printf '  bcrypt cost 12 checks: %4d in %ss = %s checks/s  (python bcrypt %s)\n' "$BC_N" "$BC_ELAPSED" "$BC_RATE" "$BC_VERSION"
echo "  ratio logins/bcrypt: $(ratio "$LOGINS" "$BC_RATE")  (1.00 = a login costs exactly one bcrypt check)"
if [ "$BAD" -gt 0 ]; then
  echo "  WARNING: $BAD logins failed; first errors:" >&2
  cat "$T"/w*.err | head -5 >&2
  exit 1
fi
