#!/usr/bin/env bash
# Full browser-style logins per second through kfsec vs raw bcrypt (cost 12) verifications per
# second, both at the same concurrency, measured in the same run; and federated logins per second
# (FEDERATED=0 skips them) through the ldap connector (Debian's slapd) and the oidc connector (a
# second kfsec as the upstream provider), both from scripts/federation-fixtures.sh, each as a
# ratio against the local-password logins of the same run.
#
#   bash bench/login.sh        # CONCURRENCY=2 DURATION=20 (seconds per case) ROUNDS=4 FEDERATED=1
#
# A login = GET / → /dex/auth → login form → POST credentials → code → callback → session cookie
# → GET / (200), with a fresh curl cookie jar each time. bcrypt baseline: python `bcrypt` (C/Rust
# extension) checkpw on a cost-12 hash, one process per worker. A federated login = GET / → the
# chooser → "Log in with …" → the connector's form (kfsec's for ldap; the upstream kfsec's own for
# oidc, whose answer goes back through kfsec's /dex/callback) → POST → code → callback → cookie →
# GET / (200). Every password is checked against a bcrypt cost-12 hash: kfsec's static user, the
# upstream kfsec's static user, and the directory user (userPassword {CRYPT}, set for the bench).
# The login cases take turns in ROUNDS rounds of DURATION/ROUNDS seconds each, so that a change
# in the machine's load during the run weighs on all of them alike.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONCURRENCY="${CONCURRENCY:-2}"
DURATION="${DURATION:-20}"
ROUNDS="${ROUNDS:-4}"
FEDERATED="${FEDERATED:-1}"
ROUND_MS=$((DURATION * 1000 / ROUNDS))

bench_need curl python3
bash "$BENCH_ROOT/scripts/install-test-deps.sh" --bench >/dev/null
PY="$BENCH_ROOT/bench/.venv/bin/python"
bench_build
bench_init
T="$BENCH_TMP"

KF_PORT="$(free_port)"
KF_ADMIN="$(free_port)"
HASH="$(printf '%s\n' "$BENCH_PASSWORD" | "$KFSEC_RELEASE" hash-password)"
LIMITS="loginProtection:
  maxFailuresPerAccount: 1000000
  maxFailuresPerAddress: 1000000"
kfsec_config "$T/kfsec.yaml" "$KF_PORT" "$HASH" "$LIMITS"
kfsec_start "$T/data" "$T/kfsec.yaml" "$KF_PORT" "$KF_ADMIN"
CA="$T/data/pki/ca.crt"
KF="https://localhost:$KF_PORT"
local_login() { kfsec_login "$KF" "$CA" "$1"; }
local_login "$T/warm.jar" || { echo "warm-up login failed" >&2; exit 1; }
CASES=(local)

# --- federated kfsec ------------------------------------------------------------------------
# fed_login BASE CA CONNECTOR USER PASSWORD JAR: a browser-style login through the chooser and
# the connector's form (see the header); non-zero unless it ends at BASE/ with 200 and a session.
# Each login comes from its own loopback address (BENCH_SRC, set per login by round()), as logins
# of many people do: kfsec throttles upstream callbacks per client address (30 per 5 minutes).
fed_login() {
  local base="$1" ca="$2" conn="$3" user="$4" pw="$5" jar="$6" page href form end
  local -a c=(curl -sS --cacert "$ca" -b "$jar" -c "$jar" -L --interface "${BENCH_SRC:-127.0.0.1}")
  rm -f "$jar"
  page="$("${c[@]}" "$base/")" || return 1
  [[ "$page" =~ href=\"(/dex/auth/$conn\?req=[^\"]*)\" ]] || { echo "fed login: no $conn in the chooser" >&2; return 1; }
  href="${BASH_REMATCH[1]//\&amp;/\&}"
  form="$("${c[@]}" -o /dev/null -w '%{url_effective}' "$base$href")" || return 1
  case "$form" in *"/login?"*) ;; *) echo "fed login: no form (at $form)" >&2; return 1 ;; esac
  end="$("${c[@]}" -o /dev/null -w '%{http_code} %{url_effective}' \
    --data-urlencode "login=$user" --data-urlencode "password=$pw" "$form")" || return 1
  [ "$end" = "200 $base/" ] || { echo "fed login: ended at $end" >&2; return 1; }
  grep -q 'authservice_session' "$jar" || { echo "fed login: no session cookie" >&2; return 1; }
}
if [ "$FEDERATED" = 1 ]; then
  FED_PORT="$(free_port)"
  FED_ADMIN="$(free_port)"
  FED="https://localhost:$FED_PORT"
  bench_log "federation fixtures: slapd and an upstream kfsec"
  KFSEC_BIN="$KFSEC_RELEASE" bash "$BENCH_ROOT/scripts/federation-fixtures.sh" start "$T/fed" "$FED/dex" 2>>"$T/fixtures.log" ||
    { cat "$T/fixtures.log" >&2; exit 1; }
  while read -r p; do BENCH_PIDS+=("$p"); done <"$T/fed/pids"
  # shellcheck source=/dev/null
  source "$T/fed/fixtures.env"
  # The directory user's password as a bcrypt cost-12 hash, like the local and upstream users'.
  printf 'dn: uid=%s,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: userPassword\nuserPassword: {CRYPT}%s\n' \
    "$LDAP_USER2" "$(printf '%s\n' "$LDAP_PASSWORD2" | "$KFSEC_RELEASE" hash-password)" |
    ldapmodify -x -H "$LDAP_URI" -D "$LDAP_ROOT_DN" -w "$LDAP_ROOT_PW" >/dev/null
  kfsec_config "$T/fed.yaml" "$FED_PORT" "$HASH" "$LIMITS
$(cat "$CONNECTORS_YAML")"
  kfsec_start "$T/fed-data" "$T/fed.yaml" "$FED_PORT" "$FED_ADMIN"
  cat "$T/fed-data/pki/ca.crt" "$UPSTREAM_CA" >"$T/fed-cas.pem"
  ldap_login() { fed_login "$FED" "$T/fed-cas.pem" ldap "$LDAP_USER2" "$LDAP_PASSWORD2" "$1"; }
  oidc_login() { fed_login "$FED" "$T/fed-cas.pem" upstream "$UPSTREAM_EMAIL" "$UPSTREAM_PASSWORD" "$1"; }
  ldap_login "$T/warm.jar" || { echo "warm-up ldap login failed" >&2; exit 1; }
  oidc_login "$T/warm.jar" || { echo "warm-up oidc login failed" >&2; exit 1; }
  CASES+=(ldap oidc)
fi

# --- logins ------------------------------------------------------------------------------
# round NAME: CONCURRENCY workers run `NAME_login JAR` for ROUND_MS; adds to $T/NAME.total
# ("ok failed nanoseconds"). Errors go to $T/NAME-w*.err.
round() {
  local name="$1" i o b start end deadline
  start="$(date +%s%N)"
  deadline=$((start + ROUND_MS * 1000000))
  local -a wpids=()
  for i in $(seq "$CONCURRENCY"); do
    (
      ok=0 bad=0
      while [ "$(date +%s%N)" -lt "$deadline" ]; do
        BENCH_SRC="127.$((r % 250 + 1)).$i.$(((ok + bad) % 250 + 1))"
        if "${name}_login" "$T/$name-w$i.jar" 2>>"$T/$name-w$i.err"; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
      done
      echo "$ok $bad" >"$T/$name-w$i.count"
    ) &
    wpids+=($!)
  done
  wait "${wpids[@]}"
  end="$(date +%s%N)"
  local sum_ok=0 sum_bad=0 sum_ns=0
  [ -f "$T/$name.total" ] && read -r sum_ok sum_bad sum_ns <"$T/$name.total"
  for i in $(seq "$CONCURRENCY"); do read -r o b <"$T/$name-w$i.count"; sum_ok=$((sum_ok + o)); sum_bad=$((sum_bad + b)); done
  echo "$sum_ok $sum_bad $((sum_ns + end - start))" >"$T/$name.total"
}
bench_log "logins (${CASES[*]}): $CONCURRENCY workers, $ROUNDS rounds of $((ROUND_MS / 1000)).$((ROUND_MS % 1000 / 100))s per case"
for r in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do round "$c"; done
done
# totals NAME: sets OK, BAD, ELAPSED (s) and RATE (logins/s) of a case.
totals() {
  local ns
  read -r OK BAD ns <"$T/$1.total"
  ELAPSED="$(awk -v n="$ns" 'BEGIN { printf "%.3f", n / 1e9 }')"
  RATE="$(awk -v n="$OK" -v s="$ELAPSED" 'BEGIN { printf "%.2f", n / s }')"
}

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
per_worker() { awk -v r="$1" -v c="$CONCURRENCY" 'BEGIN { print (r > 0) ? c * 1000 / r : 0 }'; }
FAILED_LOGINS=0
totals local
LOGINS="$RATE"
FAILED_LOGINS=$((FAILED_LOGINS + BAD))
printf '  kfsec full logins:     %4d ok, %d failed in %ss  = %s logins/s  (%.0f ms/login per worker)\n' \
  "$OK" "$BAD" "$ELAPSED" "$LOGINS" "$(per_worker "$LOGINS")"
printf '  bcrypt cost 12 checks: %4d in %ss = %s checks/s  (python bcrypt %s)\n' "$BC_N" "$BC_ELAPSED" "$BC_RATE" "$BC_VERSION"
echo "  ratio logins/bcrypt: $(ratio "$LOGINS" "$BC_RATE")  (1.00 = a login costs exactly one bcrypt check)"
if [ "$FEDERATED" = 1 ]; then
  totals ldap
  LDAP_RATE="$RATE"
  FAILED_LOGINS=$((FAILED_LOGINS + BAD))
  printf '  kfsec LDAP logins:     %4d ok, %d failed in %ss  = %s logins/s  (%.0f ms/login per worker)\n' \
    "$OK" "$BAD" "$ELAPSED" "$RATE" "$(per_worker "$RATE")"
  totals oidc
  OIDC_RATE="$RATE"
  FAILED_LOGINS=$((FAILED_LOGINS + BAD))
  printf '  kfsec OIDC logins:     %4d ok, %d failed in %ss  = %s logins/s  (%.0f ms/login per worker)\n' \
    "$OK" "$BAD" "$ELAPSED" "$RATE" "$(per_worker "$RATE")"
  echo "  ratio ldap/local: $(ratio "$LDAP_RATE" "$LOGINS")  (slapd, bcrypt {CRYPT} password: service bind, search, user bind, group search)"
  echo "  ratio oidc/local: $(ratio "$OIDC_RATE" "$LOGINS")  (the upstream kfsec shares the cores: its form, code, token, verified ID token)"
fi
if [ "$FAILED_LOGINS" -gt 0 ]; then
  echo "  WARNING: $FAILED_LOGINS logins failed; first errors:" >&2
  cat "$T"/*-w*.err | head -5 >&2
  exit 1
fi
