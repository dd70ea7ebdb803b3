#!/usr/bin/env bash
# Instructions per authenticated proxied request: kfsec (session cookie check + proxy) vs Debian
# nginx as a plain TLS reverse proxy (no auth), both counted by valgrind's callgrind.
#
#   bash bench/proxy-instr.sh          # REQUESTS=2000 by default
#   KFSEC_EXTRA_YAML='store: {...}' bash bench/proxy-instr.sh   # e.g. kfsec on etcd
#
# Unlike bench/proxy.sh (wall-clock throughput under wrk), the figure does not depend on what
# else the machine is doing: the same binary and inputs give the same count, so two builds can
# be compared on a busy machine. Each server gets one keep-alive TLS connection; the handshake
# and a warm-up are excluded (callgrind's counters are zeroed after them), then REQUESTS GETs
# are counted. nginx runs as one process (master_process off) so all its work is counted.
# Everything listens on 127.0.0.1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REQUESTS="${REQUESTS:-2000}"
WARM="${WARM:-50}"

bench_need curl nginx python3 valgrind callgrind_control
bench_build
bench_init
T="$BENCH_TMP"

UP_PORT="$(free_port)"
KF_PORT="$(free_port)"
KF_ADMIN="$(free_port)"
NG_PORT="$(free_port)"

# --- trivial upstream (not counted) --------------------------------------------------
ok_upstream "$UP_PORT"

CALLGRIND=(valgrind --tool=callgrind --collect-atstart=yes --dump-instr=no)

# --- kfsec under callgrind ---------------------------------------------------------------
HASH="$(printf '%s\n' "$BENCH_PASSWORD" | "$KFSEC_RELEASE" hash-password)"
kfsec_config "$T/kfsec.yaml" "$KF_PORT" "$HASH" "routes:
- prefix: /
  upstream: http://127.0.0.1:$UP_PORT
${KFSEC_EXTRA_YAML:-}"
bench_log "starting kfsec under callgrind (slow)"
KFSEC_WRAP="${CALLGRIND[*]} --callgrind-out-file=$T/kfsec.cg" KFSEC_START_SECONDS=600 \
  kfsec_start "$T/data" "$T/kfsec.yaml" "$KF_PORT" "$KF_ADMIN"
CA="$T/data/pki/ca.crt"
kfsec_login "https://localhost:$KF_PORT" "$CA" "$T/jar" || { echo "login through kfsec failed" >&2; exit 1; }
COOKIE="authservice_session=$(session_cookie "$T/jar")"

# --- nginx under callgrind, with kfsec's certificate --------------------------------------
nginx_conf "$T/ng" 1 "  upstream backend { server 127.0.0.1:$UP_PORT; keepalive 8; }
  server {
    listen 127.0.0.1:$NG_PORT ssl;
    ssl_certificate $T/data/pki/frontdoor.crt;
    ssl_certificate_key $T/data/pki/frontdoor.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header kubeflow-userid $BENCH_USER;
    }
  }" "master_process off;"
bench_log "starting nginx under callgrind"
NGINX_WRAP="${CALLGRIND[*]} --callgrind-out-file=$T/nginx.cg" nginx_start "$T/ng"
NG_PID="$NGINX_PID"
for _ in $(seq 600); do curl -s --cacert "$CA" -o /dev/null "https://localhost:$NG_PORT/" && break; sleep 0.1; done

# count NAME PORT PID: Ir per request, printed to stdout.
count() {
  bench_log "$1: $WARM warm-up requests, then $REQUESTS counted ones on one connection"
  python3 - "$1" "$2" "$3" "$CA" "$COOKIE" "$WARM" "$REQUESTS" "$T/$1.cg" <<'PY'
import glob, http.client, os, ssl, subprocess, sys, time
name, port, pid, ca, cookie, warm, n, out = sys.argv[1:]
port, warm, n = int(port), int(warm), int(n)
ctx = ssl.create_default_context(cafile=ca)
conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=600)
def get():
    conn.request("GET", "/", headers={"Cookie": cookie})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200 or body != b"ok":
        sys.exit(f"{name}: GET / answered {r.status} {body[:80]!r}")
for _ in range(warm):
    get()
subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
for _ in range(n):
    get()
before = set(glob.glob(out + "*"))
subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
for _ in range(600):
    new = sorted(set(glob.glob(out + "*")) - before, key=os.path.getmtime)
    if new:
        break
    time.sleep(0.1)
else:
    sys.exit(f"{name}: callgrind wrote no dump")
time.sleep(0.5)
ir = None
with open(new[-1]) as f:
    for line in f:
        if line.startswith(("summary:", "totals:")):
            ir = int(line.split()[1])
if ir is None:
    sys.exit(f"{name}: no totals in {new[-1]}")
print(ir / n)
PY
}

kf="$(count kfsec "$KF_PORT" "$KFSEC_PID")"
ng="$(count nginx "$NG_PORT" "$NG_PID")"

echo
echo "proxy instructions bench: authenticated GET / over one TLS keep-alive connection, $REQUESTS requests"
echo "  kfsec: session cookie check + reverse proxy; nginx (one process): TLS reverse proxy, no auth"
echo "  counted by callgrind after the handshake and $WARM warm-up requests (all threads)"
printf '  kfsec  %10.0f instructions/req\n' "$kf"
printf '  nginx  %10.0f instructions/req\n' "$ng"
echo "  ratio kfsec/nginx: instructions/req $(ratio "$kf" "$ng")"
