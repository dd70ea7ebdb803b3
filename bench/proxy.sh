#!/usr/bin/env bash
# Authenticated reverse-proxy throughput: kfsec (session cookie check + proxy) vs Debian nginx
# as a plain TLS reverse proxy (no auth) in front of the same trivial upstream.
#
#   bash bench/proxy.sh            # DURATION=15s CONNECTIONS=64 THREADS=2 by default
#
# Everything listens on 127.0.0.1. Prints requests/s and latency (p50/p99) for both, CPU time
# per request, and the kfsec/nginx ratios.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-15s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
NGINX_WORKERS="${NGINX_WORKERS:-$(nproc)}"

bench_need curl wrk nginx python3
bench_build
bench_init
T="$BENCH_TMP"

UP_PORT="$(free_port)"
KF_PORT="$(free_port)"
KF_ADMIN="$(free_port)"
NG_PORT="$(free_port)"

# --- trivial upstream: nginx returning a fixed 200 body ------------------------------
mkdir -p "$T/ng"
ok_upstream "$UP_PORT"

# --- kfsec with a route / → upstream -------------------------------------------------
HASH="$(printf '%s\n' "$BENCH_PASSWORD" | "$KFSEC_RELEASE" hash-password)"
kfsec_config "$T/kfsec.yaml" "$KF_PORT" "$HASH" "routes:
- prefix: /
  upstream: http://127.0.0.1:$UP_PORT"
kfsec_start "$T/data" "$T/kfsec.yaml" "$KF_PORT" "$KF_ADMIN"
CA="$T/data/pki/ca.crt"
KF="https://localhost:$KF_PORT"

kfsec_login "$KF" "$CA" "$T/jar" || { echo "login through kfsec failed" >&2; exit 1; }
COOKIE="authservice_session=$(session_cookie "$T/jar")"
body="$(curl -sS --cacert "$CA" -H "Cookie: $COOKIE" "$KF/")"
[ "$body" = ok ] || { echo "authenticated GET through kfsec returned: $body" >&2; exit 1; }
# Without the cookie kfsec must not proxy.
noauth="$(curl -sS --cacert "$CA" -o /dev/null -w '%{http_code}' "$KF/")"
[ "$noauth" = 302 ] || { echo "unauthenticated GET returned $noauth, expected 302" >&2; exit 1; }

# --- nginx TLS reverse proxy with kfsec's certificate --------------------------------
cat >"$T/ng/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $T/ng/nginx.pid;
error_log $T/ng/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $T/ng/body;
  proxy_temp_path $T/ng/proxy;
  fastcgi_temp_path $T/ng/fastcgi;
  uwsgi_temp_path $T/ng/uwsgi;
  scgi_temp_path $T/ng/scgi;
  keepalive_requests 1000000;
  upstream backend {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NG_PORT ssl;
    ssl_certificate $T/data/pki/frontdoor.crt;
    ssl_certificate_key $T/data/pki/frontdoor.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header kubeflow-userid $BENCH_USER;
    }
  }
}
EOF
nginx -p "$T/ng" -c "$T/ng/nginx.conf" &
NG_PID=$!
BENCH_PIDS+=("$NG_PID")
NG="https://localhost:$NG_PORT"
for _ in $(seq 100); do curl -s --cacert "$CA" -o /dev/null "$NG/" && break; sleep 0.05; done
body="$(curl -sS --cacert "$CA" -H "Cookie: $COOKIE" "$NG/")"
[ "$body" = ok ] || { echo "GET through nginx returned: $body" >&2; exit 1; }

# --- load ------------------------------------------------------------------------------
run_wrk() { # NAME URL PID...
  local name="$1" url="$2"; shift 2
  bench_log "$name: warm-up $WARMUP, then wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -H "Cookie: $COOKIE" "$url/" >/dev/null
  local c0 c1
  c0="$(cpu_ticks "$@")"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Cookie: $COOKIE" "$url/" >"$T/$name.wrk"
  c1="$(cpu_ticks "$@")"
  echo $((c1 - c0)) >"$T/$name.cpu"
}
run_wrk kfsec "$KF" "$KFSEC_PID"
run_wrk nginx "$NG" $(with_children "$NG_PID")

TICK="$(getconf CLK_TCK)"
report() { # NAME
  local n="$1" rps p50 p99 bad err cpu total
  rps="$(wrk_field "$T/$n.wrk" rps)"
  p50="$(wrk_field "$T/$n.wrk" p50)"
  p99="$(wrk_field "$T/$n.wrk" p99)"
  bad="$(wrk_field "$T/$n.wrk" non2xx)"
  err="$(wrk_field "$T/$n.wrk" errors)"
  total="$(awk '/requests in/ { print $1 }' "$T/$n.wrk")"
  cpu="$(awk -v t="$(cat "$T/$n.cpu")" -v hz="$TICK" -v n="$total" 'BEGIN { printf "%.1f", (n > 0) ? t / hz * 1e6 / n : 0 }')"
  printf '  %-6s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms   server CPU %6s us/req   non-2xx %s   socket errors %s\n' \
    "$n" "$rps" "$p50" "$p99" "$cpu" "$bad" "$err"
  eval "${n}_rps=$rps ${n}_p99=$p99 ${n}_cpu=$cpu ${n}_bad=$bad"
}

echo
echo "proxy bench: authenticated GET / over TLS (HTTP/1.1 keep-alive), wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
echo "  kfsec: session cookie check + reverse proxy; nginx ($NGINX_WORKERS workers): TLS reverse proxy, no auth"
echo "  upstream: nginx 1 worker, fixed 200 \"ok\"; same certificate (kfsec's front-door cert) for both"
echo "  note: wrk, the upstream and the server under test share this machine's $(nproc) cores"
report kfsec
report nginx
# shellcheck disable=SC2154
echo "  ratio kfsec/nginx: rps $(ratio "$kfsec_rps" "$nginx_rps")   p99 $(ratio "$kfsec_p99" "$nginx_p99")   CPU/req $(ratio "$kfsec_cpu" "$nginx_cpu")"
# shellcheck disable=SC2154
if [ "$kfsec_bad" != 0 ] || [ "$nginx_bad" != 0 ]; then
  echo "  WARNING: non-2xx responses seen; figures are not comparable" >&2
  exit 1
fi
