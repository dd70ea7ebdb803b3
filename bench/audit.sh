#!/usr/bin/env bash
# The audit log's cost (issue 15): kfsec with audit at Metadata level for everything (one
# ResponseComplete event per request, as the default policy writes them: log file backend, hash
# chain and signed checkpoints) vs the same kfsec with audit off, in the same run.
# Measures, each as a ratio audit/off:
#   1. authenticated proxy requests/s (wrk, session cookie, route / → an nginx upstream);
#   2. API reads/s: GET one ConfigMap with a ServiceAccount token;
#   3. API writes/s: POST ConfigMaps with the token (wrk + a Lua script, WRITE_CONNECTIONS);
# and checks that the audited kfsec wrote an event for every measured request and that
# `kfsec audit verify` finds its log intact. Under each case's line, kfsec's CPU per request by
# thread group (connection workers, audit log thread, the rest; user + kernel), from
# /proc/PID/task: where the audit's cost lands.
#
#   bash bench/audit.sh   # env: DURATION=5s WARMUP=2s ROUNDS=3 CONNECTIONS=64 THREADS=2 WRITE_CONNECTIONS=4
#
# The cases take turns (ROUNDS rounds, the order reversed every other round), so a change in the
# machine's load weighs on both alike. About a minute and a half with the defaults. Exits
# non-zero if a request failed or the log does not verify.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
WRITE_CONNECTIONS="${WRITE_CONNECTIONS:-4}"

bench_need curl wrk nginx python3
bench_build
bench_init
T="$BENCH_TMP"
CASES=(off audit)

UP_PORT="$(free_port)"
ok_upstream "$UP_PORT"

HASH="$(printf '%s\n' "$BENCH_PASSWORD" | "$KFSEC_RELEASE" hash-password)"
COMMON="routes:
- prefix: /
  upstream: http://127.0.0.1:$UP_PORT"
cat >"$T/policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
POLICY
for s in "${CASES[@]}"; do PORT[$s]="$(free_port)"; done
kfsec_config "$T/off.yaml" "${PORT[off]}" "$HASH" "$COMMON
audit:
  log: {path: \"\"}"
kfsec_config "$T/audit.yaml" "${PORT[audit]}" "$HASH" "$COMMON
audit:
  policyFile: $T/policy.yaml
  log: {path: $T/audit.log}"
for s in "${CASES[@]}"; do case_start "$s" "$T/$s.yaml"; done
for s in "${CASES[@]}"; do case_setup "$s"; done
write_lua "$T/write.lua"
READ_PATH=/api/v1/namespaces/default/configmaps/bench-check

for s in "${CASES[@]}"; do
  bench_log "warm-up $WARMUP: proxy, reads and writes on $s"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -H "Cookie: ${COOKIE[$s]}" "${BASE[$s]}/" >/dev/null
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -H "Authorization: Bearer ${TOKEN[$s]}" "${BASE[$s]}$READ_PATH" >/dev/null
  wrk -t"$THREADS" -c"$WRITE_CONNECTIONS" -d"$WARMUP" -s "$T/write.lua" "${BASE[$s]}/" -- warm "${TOKEN[$s]}" >/dev/null
done
# events_written: the audited kfsec's count of events written to its log (from /metrics).
events_written() {
  curl -sS "http://127.0.0.1:${ADMIN[audit]}/metrics" | awk '/^kfsec_audit_events_total\{backend="log"\}/ { print $2 }'
}
events_before="$(events_written)"
proxy_args() { WRK_ARGS=(-H "Cookie: ${COOKIE[$1]}" "${BASE[$1]}/"); }
read_args() { WRK_ARGS=(-H "Authorization: Bearer ${TOKEN[$1]}" "${BASE[$1]}$READ_PATH"); }
write_args() { WRK_ARGS=(-s "$T/write.lua" "${BASE[$1]}/" -- "w$2" "${TOKEN[$1]}"); }
case_rounds proxy "$CONNECTIONS" proxy_args
case_rounds read "$CONNECTIONS" read_args
case_rounds write "$WRITE_CONNECTIONS" write_args

# Every measured request of the audited case left an event (wrk counts completed requests; the
# log also holds checkpoints, so it may count a few more).
sleep 1.5
requests=0
for k in proxy read write; do
  for r in $(seq "$ROUNDS"); do
    requests=$((requests + $(awk '/requests in/ { print $1 }' "$T/$k-audit.$r.wrk")))
  done
done
events=$(($(events_written) - events_before))
VERIFY="$("$KFSEC_RELEASE" audit verify --key "$T/audit-data/audit/audit.pub" "$T/audit.log" 2>&1)" || {
  echo "kfsec audit verify failed: $VERIFY" >&2; exit 1; }

echo
echo "audit bench: kfsec with audit (Metadata for every request, log file, hash chain, signed"
echo "  checkpoints) vs audit off, same configuration otherwise; the cases take turns, $ROUNDS rounds"
echo "  of $DURATION each; $(nproc) cores shared by wrk, nginx and kfsec; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "1. authenticated GET / through the front door (cookie check + proxy to nginx), wrk -t$THREADS -c$CONNECTIONS"
case_report proxy
echo "2. API reads: GET $READ_PATH (ServiceAccount token), wrk -t$THREADS -c$CONNECTIONS"
case_report read
echo "3. API writes: POST /api/v1/namespaces/default/configmaps (ServiceAccount token), wrk -t$THREADS -c$WRITE_CONNECTIONS"
case_report write
echo "4. the audited case wrote $events events for $requests measured requests; verify: $VERIFY"
if [ "$events" -lt "$requests" ]; then
  echo "  WARNING: fewer events than requests (dropped events?)" >&2
  FAILED=$((FAILED + 1))
fi
if [ "$FAILED" -gt 0 ]; then exit 1; fi
