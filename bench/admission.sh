#!/usr/bin/env bash
# AdmissionReviews/s on /apply-poddefault over HTTPS keep-alive with 1,000 PodDefaults in the
# namespace, against the same server's allow-everything path (/allow-all), same run.
#   bash bench/admission.sh    # env: DURATION=15s CONNECTIONS=32 THREADS=2 PODDEFAULTS=1000
set -euo pipefail
BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$BENCH_ROOT/bench/lib.sh"
DURATION="${DURATION:-15s}"; CONNECTIONS="${CONNECTIONS:-32}"; THREADS="${THREADS:-2}"; N="${PODDEFAULTS:-1000}"
bench_need wrk curl kubectl python3
bench_init
bench_build

HTTPS=$(free_port); ADMIN=$(free_port); HOOK=$(free_port)
RUST_LOG=warn "$KFSEC_RELEASE" serve --data-dir "$BENCH_TMP/data" --https-addr "127.0.0.1:$HTTPS" \
  --admin-addr "127.0.0.1:$ADMIN" --webhook-addr "127.0.0.1:$HOOK" >"$BENCH_TMP/kfsec.out" 2>"$BENCH_TMP/kfsec.log" &
BENCH_PIDS+=("$!")
wait_http "http://127.0.0.1:$ADMIN/readyz" 60
KC=(kubectl --kubeconfig "$BENCH_TMP/data/admin.kubeconfig" --cache-dir "$BENCH_TMP/kube-cache")
"${KC[@]}" create namespace team >/dev/null
bench_log "creating $N PodDefaults (one matches the pod, one more matches too, the rest do not)"
python3 - "$N" >"$BENCH_TMP/pd.yaml" <<'PY'
import sys
n = int(sys.argv[1])
for i in range(n):
    label = "add-env" if i < 2 else f"other-{i}"
    print(f"""---
apiVersion: kubeflow.org/v1alpha1
kind: PodDefault
metadata: {{name: pd-{i}, namespace: team}}
spec:
  selector: {{matchLabels: {{{label}: "true"}}}}
  desc: bench
  env: [{{name: VAR_{i}, value: "v{i}"}}]""")
PY
"${KC[@]}" apply -f "$BENCH_TMP/pd.yaml" >/dev/null
count=$("${KC[@]}" get poddefaults -n team -o name | wc -l)
[ "$count" -eq "$N" ] || { echo "expected $N PodDefaults, found $count" >&2; exit 1; }

cat >"$BENCH_TMP/review.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"bench-uid","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"team","operation":"CREATE","userInfo":{"username":"bench"},"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"team","labels":{"add-env":"true"}},"spec":{"containers":[{"name":"main","image":"x"}]}}}}]]
LUA
# Sanity: the PodDefault path really patches, the allow path really allows.
resp=$(curl -sk -H 'Content-Type: application/json' --data @<(sed -n 's/^wrk.body = \[\[\(.*\)\]\]$/\1/p' "$BENCH_TMP/review.lua") "https://127.0.0.1:$HOOK/apply-poddefault")
echo "$resp" | grep -q '"patchType":"JSONPatch"' || { echo "no patch from /apply-poddefault: $resp" >&2; exit 1; }

run() { # PATH → "rps p99_ms"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$BENCH_TMP/review.lua" "https://127.0.0.1:$HOOK$1" >/dev/null 2>&1 || true
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$BENCH_TMP/review.lua" "https://127.0.0.1:$HOOK$1" >"$BENCH_TMP/wrk$2.txt" 2>&1
  python3 - "$BENCH_TMP/wrk$2.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
if bad:
    sys.exit(f"non-2xx responses: {bad.group(1)}")
print(f"{rps:.0f} {p99:.3f}")
PY
}
bench_log "wrk /apply-poddefault ($N PodDefaults in the namespace)"
read -r pd_rps pd_p99 < <(run /apply-poddefault 1)
bench_log "wrk /allow-all"
read -r al_rps al_p99 < <(run /allow-all 2)
echo
echo "admission bench: AdmissionReview over HTTPS keep-alive, wrk -t$THREADS -c$CONNECTIONS -d$DURATION (2 cores shared with wrk)"
printf '  /apply-poddefault (%s PodDefaults)  %8s reviews/s   p99 %7s ms\n' "$N" "$pd_rps" "$pd_p99"
printf '  /allow-all                       %8s reviews/s   p99 %7s ms\n' "$al_rps" "$al_p99"
python3 -c "r=$pd_rps/$al_rps; print(f'  ratio poddefault/allow-all: {r:.2f}x  (aim >= 0.5x)')"
