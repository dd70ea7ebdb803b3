#!/usr/bin/env bash
# Authenticated reverse proxy: kfsec against three peers, in one run on one machine, in front of
# the same upstream (nginx, 1 worker, 200 "ok") with the same certificate (kfsec's front door's):
#
#   kfsec       session cookie check + reverse proxy, kfsec's defaults (one audit event per
#               request, also for each /authservice/check below)
#   nginx       Debian nginx as a plain TLS reverse proxy, no auth, no access log
#   nginx+log   the same with nginx's default access log (`combined` format, one write per
#               request): the like-for-like peer of kfsec's default, which records every request
#   nginx+auth  the "proxy + auth service" deployment (Kubeflow's oauth2-proxy/authservice
#               pattern): nginx terminates TLS and asks kfsec's /authservice/check with
#               auth_request over a pool of keep-alive TLS connections, then proxies with the
#               user id kfsec answered; its CPU is nginx's plus kfsec's
#   haproxy     Debian HAProxy 2.6 as a plain TLS reverse proxy, no auth
#
#   bash bench/proxy.sh    # env: DURATION=10s WARMUP=2s CONNS="1 64 256" THREADS=2 HS_CONNS=64
#                          #      NGINX_WORKERS=$(nproc) HAPROXY_THREADS=$(nproc) ROUNDS=1
#   ROUNDS=5 CONNS=64 bash bench/proxy.sh   # issue 17's figure: five rounds at 64 connections,
#                          # judged by the median of each round's ratios
#   KFSEC_EXTRA_YAML='audit: {log: {path: ""}}' bash bench/proxy.sh   # appended to kfsec's
#                          # configuration, e.g. audit off (like nginx, nginx+auth and haproxy,
#                          # which log nothing)
#
# Everything listens on 127.0.0.1; wrk speaks HTTP/1.1 (no ALPN) to the peers, which keep their
# upstream connections alive (pools at least as large as the most connections measured).
#  1. Keep-alive: for each connection count in CONNS, the peers in turn, each a WARMUP run then a
#     measured DURATION run of `wrk -t min(THREADS, conns) -c conns --latency`: requests/s,
#     p50/p99 latency, and the server's CPU time per request (utime + stime from /proc/PID/stat:
#     all nginx processes; HAProxy's threads; for nginx+auth nginx's and kfsec's, both printed).
#  2. New connections: kfsec vs nginx with `Connection: close` (HS_CONNS connections): each answer
#     says `connection: close`, so wrk opens a new TCP + TLS connection for the next request
#     (it counts no socket error for that): connections/s = requests/s, and CPU per connection
#     (handshake + one proxied request). wrk (OpenSSL) offers the previous connection's TLS
#     session when it reconnects, and all peers resume (the script checks with openssl s_client
#     and prints it), so these are resumed TLS 1.3 handshakes: PSK plus a fresh X25519 exchange,
#     no certificate signature.
#  3. Ratios kfsec/peer per connection count and for new connections.
# With ROUNDS > 1 the keep-alive and new-connection runs are repeated, the peers' order reversed
# every other round, so that a change in the machine's load weighs on every peer alike: each
# round's table and ratios (each ratio is of runs a minute apart at most), then the median of
# the rounds' ratios, by which the aims are judged.
#
# Before the load: every peer answers "ok" to the authenticated GET; kfsec (302) and nginx+auth
# (401) refuse it without the cookie; nginx+auth got the user id from kfsec's answer (kfsec's
# check answers 200 with kubeflow-userid, kubeflow-groups, x-auth-request-user and -email, or
# 401); kfsec and nginx answer 200 and `connection: close` to a `Connection: close` request.
# About 3.5 minutes with the defaults (5 peers x 3 connection counts + 2 runs, each WARMUP +
# DURATION). Exits non-zero if a measured run saw a non-2xx answer or a socket error, or if a
# `Connection: close` run went at more than half the keep-alive rate (wrk did not reconnect).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNS="${CONNS:-1 64 256}"
THREADS="${THREADS:-2}"
HS_CONNS="${HS_CONNS:-64}"
NGINX_WORKERS="${NGINX_WORKERS:-$(nproc)}"
HAPROXY_THREADS="${HAPROXY_THREADS:-$(nproc)}"
ROUNDS="${ROUNDS:-1}"
PEERS=(kfsec nginx nginx+log nginx+auth haproxy)
case "$ROUNDS" in '' | *[!0-9]* | 0) echo "ROUNDS must be a positive whole number, not '$ROUNDS'" >&2; exit 2 ;; esac

bench_need curl wrk nginx haproxy openssl python3
bench_build
bench_init
T="$BENCH_TMP"

# Upstream pools: nginx caches this many idle connections per worker; fewer than the client
# connections would make it open and close upstream connections under load.
POOL=64
for c in $CONNS $HS_CONNS; do if [ "$c" -gt "$POOL" ]; then POOL="$c"; fi; done

UP_PORT="$(free_port)"
KF_PORT="$(free_port)"
KF_ADMIN="$(free_port)"
NG_PORT="$(free_port)"
NGL_PORT="$(free_port)"
NGA_PORT="$(free_port)"
HA_PORT="$(free_port)"
declare -A URL
URL[kfsec]="https://localhost:$KF_PORT"
URL[nginx]="https://localhost:$NG_PORT"
URL[nginx+log]="https://localhost:$NGL_PORT"
URL[nginx+auth]="https://localhost:$NGA_PORT"
URL[haproxy]="https://localhost:$HA_PORT"

# --- trivial upstream: nginx returning a fixed 200 body ------------------------------------------
ok_upstream "$UP_PORT"

# --- kfsec with a route / → upstream ---------------------------------------------------------------
HASH="$(printf '%s\n' "$BENCH_PASSWORD" | "$KFSEC_RELEASE" hash-password)"
kfsec_config "$T/kfsec.yaml" "$KF_PORT" "$HASH" "routes:
- prefix: /
  upstream: http://127.0.0.1:$UP_PORT
${KFSEC_EXTRA_YAML:-}"
kfsec_start "$T/data" "$T/kfsec.yaml" "$KF_PORT" "$KF_ADMIN"
KF_CA="$T/data/pki/ca.crt"
CRT="$T/data/pki/frontdoor.crt"
KEY="$T/data/pki/frontdoor.key"

kfsec_login "${URL[kfsec]}" "$KF_CA" "$T/jar" || { echo "login through kfsec failed" >&2; exit 1; }
KF_COOKIE="authservice_session=$(session_cookie "$T/jar")"

# --- nginx: plain TLS reverse proxy, and the same with auth_request to kfsec ------------------------
# ng_server PORT LOCATIONS: a TLS server block with kfsec's certificate.
ng_server() {
  cat <<EOF
  server {
    listen 127.0.0.1:$1 ssl;
    ssl_certificate $CRT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
$2
  }
EOF
}
BACKEND="  upstream backend {
    server 127.0.0.1:$UP_PORT;
    keepalive $POOL;
    keepalive_requests 1000000;
  }"
# proxy_location USERID: proxy to the upstream pool, sending kubeflow-userid: USERID.
proxy_location() {
  cat <<EOF
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header kubeflow-userid $1;
EOF
}
nginx_conf "$T/ng" "$NGINX_WORKERS" "$BACKEND
$(ng_server "$NG_PORT" "    location / {
$(proxy_location "$BENCH_USER")
    }")"
nginx_start "$T/ng"
NG_PID="$NGINX_PID"
# The same, logging each request as nginx does by default (its own file, `combined`, unbuffered).
nginx_conf "$T/ngl" "$NGINX_WORKERS" "$BACKEND
$(ng_server "$NGL_PORT" "    access_log $T/ngl/access.log combined;
    location / {
$(proxy_location "$BENCH_USER")
    }")"
nginx_start "$T/ngl"
NGL_PID="$NGINX_PID"

# kfsec's /authservice/check answers 200 with the identity headers (kubeflow-userid,
# kubeflow-groups, x-auth-request-*) or 401; the subrequest carries the client's cookie.
nginx_conf "$T/nga" "$NGINX_WORKERS" "$BACKEND
  upstream kfsec_auth {
    server 127.0.0.1:$KF_PORT;
    keepalive $POOL;
    keepalive_requests 1000000;
  }
$(ng_server "$NGA_PORT" "    location / {
      auth_request /_auth;
      auth_request_set \$kf_user \$upstream_http_kubeflow_userid;
$(proxy_location "\$kf_user")
    }
    location = /_bench_user {
      auth_request /_auth;
      auth_request_set \$kf_user \$upstream_http_kubeflow_userid;
      add_header x-bench-user \$kf_user always;
$(proxy_location "\$kf_user")
    }
    location = /_auth {
      internal;
      proxy_pass https://kfsec_auth/authservice/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length \"\";
      proxy_set_header Cookie \$http_cookie;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_ssl_trusted_certificate $KF_CA;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;
    }")"
nginx_start "$T/nga"
NGA_PID="$NGINX_PID"

# --- HAProxy: plain TLS reverse proxy --------------------------------------------------------------
mkdir -p "$T/ha"
(umask 077 && cat "$CRT" "$KEY" >"$T/ha/frontdoor.pem")
cat >"$T/ha/haproxy.cfg" <<EOF
global
  nbthread $HAPROXY_THREADS
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s

frontend front
  bind 127.0.0.1:$HA_PORT ssl crt $T/ha/frontdoor.pem
  http-request set-header kubeflow-userid $BENCH_USER
  default_backend upstream

backend upstream
  server ok 127.0.0.1:$UP_PORT
EOF
haproxy -c -q -f "$T/ha/haproxy.cfg" >"$T/ha/check.log" 2>&1 || { cat "$T/ha/check.log" >&2; exit 1; }
haproxy -db -f "$T/ha/haproxy.cfg" >>"$T/ha/haproxy.log" 2>&1 &
HA_PID=$!
BENCH_PIDS+=("$HA_PID")

# --- every peer answers the authenticated GET; kfsec and nginx+auth refuse the anonymous one ---------
for p in "${PEERS[@]}"; do
  for _ in $(seq 100); do curl -s --cacert "$KF_CA" -o /dev/null "${URL[$p]}/" && break; sleep 0.05; done
  body="$(curl -sS --cacert "$KF_CA" -H "Cookie: $KF_COOKIE" "${URL[$p]}/" 2>&1)" || true
  [ "$body" = ok ] || { echo "authenticated GET through $p returned: $body" >&2; exit 1; }
done
code="$(curl -sS --cacert "$KF_CA" -o /dev/null -w '%{http_code}' "${URL[kfsec]}/")"
[ "$code" = 302 ] || { echo "unauthenticated GET through kfsec returned $code, expected 302" >&2; exit 1; }
code="$(curl -sS --cacert "$KF_CA" -o /dev/null -w '%{http_code}' "${URL[nginx+auth]}/")"
case "$code" in 401 | 302) ;; *) echo "unauthenticated GET through nginx+auth returned $code, expected 401" >&2; exit 1 ;; esac
# nginx+auth passes on the user id kfsec vouched for (an extra location shows it; curl is given
# HTTP/1.1 as wrk speaks it).
user="$(curl -sS --http1.1 --cacert "$KF_CA" -D - -o /dev/null -H "Cookie: $KF_COOKIE" "${URL[nginx+auth]}/_bench_user" |
  tr -d '\r' | awk -F': ' 'tolower($1) == "x-bench-user" { print $2 }')"
[ "$user" = "$BENCH_USER" ] || { echo "nginx+auth got user id '$user' from kfsec, expected $BENCH_USER" >&2; exit 1; }
# With Connection: close the servers of the new-connection runs answer 200 and say they close (wrk
# reconnects only then).
for p in kfsec nginx; do
  code="$(curl -sS --http1.1 --cacert "$KF_CA" -D "$T/close-$p.h" -o /dev/null -w '%{http_code}' \
    -H 'Connection: close' -H "Cookie: $KF_COOKIE" "${URL[$p]}/")"
  [ "$code" = 200 ] || { echo "GET with Connection: close through $p answered $code" >&2; exit 1; }
  grep -qi '^connection: *close' "$T/close-$p.h" || { echo "$p did not answer Connection: close" >&2; exit 1; }
done

# tls_info PEER: "PROTOCOL CIPHER GROUP RESUMES" as openssl s_client (the OpenSSL wrk uses) sees
# it; RESUMES is yes when a second connection resumed the first's session.
tls_info() {
  local port="${URL[$1]##*:}" s="$T/tls-$1" first second
  first="$(openssl s_client -connect "127.0.0.1:$port" -servername localhost -CAfile "$KF_CA" \
    -sess_out "$s.sess" < <(sleep 0.3) 2>/dev/null)" || true
  second="$(openssl s_client -connect "127.0.0.1:$port" -servername localhost -CAfile "$KF_CA" \
    -sess_in "$s.sess" < <(sleep 0.3) 2>/dev/null)" || true
  awk '/^New, / { sub(/,$/, "", $2); p = $2; c = $5 } /^Server Temp Key:/ { sub(/,$/, "", $4); g = $4 }
    END { printf "%s %s %s", p ? p : "?", c ? c : "?", g ? g : "?" }' <<<"$first"
  if grep -q '^Reused, ' <<<"$second"; then echo " yes"; else echo " no"; fi
}
declare -A TLS
for p in "${PEERS[@]}"; do TLS[$p]="$(tls_info "$p")"; done

# --- load ------------------------------------------------------------------------------------------
# threads CONNS: wrk's threads for CONNS connections.
threads() { if [ "$1" -lt "$THREADS" ]; then echo "$1"; else echo "$THREADS"; fi; }

# pids PEER / extra_pids PEER: the processes whose CPU time is the peer's (nginx: master and
# workers), and the ones counted beside them (kfsec behind nginx+auth).
pids() {
  case "$1" in
    kfsec) echo "$KFSEC_PID" ;;
    nginx) with_children "$NG_PID" ;;
    nginx+log) with_children "$NGL_PID" ;;
    nginx+auth) with_children "$NGA_PID" ;;
    haproxy) echo "$HA_PID" ;;
  esac
}
extra_pids() { if [ "$1" = nginx+auth ]; then echo "$KFSEC_PID"; fi; }

# machine_ticks: "IDLE TOTAL" clock ticks of all cores so far (/proc/stat; idle includes iowait).
machine_ticks() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t }' /proc/stat; }

# run KIND PEER CONNS [WRK-ARGS...]: a warm-up run, then the measured one of round $R into
# $T/KIND-PEER-CONNS.rR.wrk and the CPU ticks of pids and extra_pids into .cpu (then the pids' user
# and kernel ticks).
run() {
  local kind="$1" p="$2" c="$3" t f c0 c1 e0 e1 m0 m1 s0 s1 main extra
  shift 3
  t="$(threads "$c")"
  f="$T/$kind-$p-$c.r$R"
  read -r -a main <<<"$(pids "$p")"
  read -r -a extra <<<"$(extra_pids "$p")"
  bench_log "round $R/$ROUNDS $kind $p: warm-up $WARMUP, then wrk -t$t -c$c -d$DURATION $*"
  wrk -t"$t" -c"$c" -d"$WARMUP" -H "Cookie: $KF_COOKIE" "$@" "${URL[$p]}/" >"$f.warm"
  c0="$(cpu_ticks "${main[@]}")" e0="$(cpu_ticks "${extra[@]}")" m0="$(machine_ticks)" s0="$(cpu_split "${main[@]}")"
  wrk -t"$t" -c"$c" -d"$DURATION" --latency -H "Cookie: $KF_COOKIE" "$@" "${URL[$p]}/" >"$f.wrk"
  c1="$(cpu_ticks "${main[@]}")" e1="$(cpu_ticks "${extra[@]}")" m1="$(machine_ticks)" s1="$(cpu_split "${main[@]}")"
  echo "$((c1 - c0)) $((e1 - e0)) $m0 $m1 $(awk -v a="$s0" -v b="$s1" 'BEGIN { split(a, x); split(b, y); print y[1] - x[1], y[2] - x[2] }')" >"$f.cpu"
}

# in_order WORD...: the words, reversed in even rounds.
in_order() {
  if [ $((R % 2)) = 1 ]; then echo "$@"; else printf '%s\n' "$@" | tac | tr '\n' ' '; fi
}
for R in $(seq "$ROUNDS"); do
  for c in $CONNS; do
    for p in $(in_order "${PEERS[@]}"); do run ka "$p" "$c"; done
  done
  for p in $(in_order kfsec nginx); do run hs "$p" "$HS_CONNS" -H 'Connection: close'; done
done

# nginx+log wrote a line per request (at least the measured ones).
logged="$(wc -l <"$T/ngl/access.log")"
measured=0
for R in $(seq "$ROUNDS"); do
  for c in $CONNS; do measured=$((measured + $(awk '/ requests in / { print $1 }' "$T/ka-nginx+log-$c.r$R.wrk"))); done
done
[ "$logged" -ge "$measured" ] || { echo "nginx+log logged $logged lines for $measured measured requests" >&2; exit 1; }

# --- report ----------------------------------------------------------------------------------------
TICK="$(getconf CLK_TCK)"
FAILED=0
declare -A RPS P99 CPU
# line KIND PEER CONNS: one peer's figures in round $R; sets RPS, P99, CPU [KIND-PEER-CONNS-R]
# (CPU: all parts).
line() {
  local f="$T/$1-$2-$3.r$R" n rps p50 p99 bad conn rd wr tout cpu main extra idle user kernel parts
  n="$(awk '/ requests in / { print $1 }' "$f.wrk")"
  rps="$(wrk_field "$f.wrk" rps)" p50="$(wrk_field "$f.wrk" p50)" p99="$(wrk_field "$f.wrk" p99)"
  bad="$(wrk_field "$f.wrk" non2xx)"
  read -r conn rd wr tout < <(awk '/Socket errors:/ { gsub(/,/, ""); print $4, $6, $8, $10; f = 1 }
    END { if (!f) print 0, 0, 0, 0 }' "$f.wrk")
  # µs per request: all parts, the peer's own and the extra processes' (nginx+auth); the share
  # of all cores left idle during the run; the peer's own in user space and in the kernel.
  read -r cpu main extra idle user kernel < <(awk -v n="$n" -v hz="$TICK" '{ u = 1e6 / hz / (n > 0 ? n : 1);
    printf "%.1f %.1f %.1f %.0f %.1f %.1f\n", ($1 + $2) * u, $1 * u, $2 * u, ($6 > $4) ? 100 * ($5 - $3) / ($6 - $4) : 0,
      $7 * u, $8 * u }' "$f.cpu")
  parts="(user $user + kernel $kernel)"
  if [ -n "$(extra_pids "$2")" ]; then parts="(nginx $main + kfsec $extra)"; fi
  printf '  %-11s %9.0f %9.3f %9.3f %8s %-27s %5s %% %8s %9s\n' "$2" "$rps" "$p50" "$p99" "$cpu" "$parts" "$idle" "$bad" \
    "$conn/$rd/$wr/$tout"
  if [ "${n:-0}" = 0 ] || [ "$bad" != 0 ] || [ $((conn + rd + wr + tout)) != 0 ]; then FAILED=$((FAILED + 1)); fi
  RPS[$1-$2-$3-$R]="$rps" P99[$1-$2-$3-$R]="$p99" CPU[$1-$2-$3-$R]="$cpu"
}
header() { printf '  %-11s %9s %9s %9s %8s %-27s %7s %8s %9s\n' peer "$1" "p50 ms" "p99 ms" "$2" "" "idle" non-2xx "c/r/w/t"; }

echo
echo "proxy bench: authenticated GET / over TLS on 127.0.0.1, HTTP/1.1; wrk --latency, $WARMUP warm-up + $DURATION measured per run"
echo "  kfsec       session cookie check + reverse proxy (kfsec's defaults: one audit event per request)"
echo "  nginx       $(nginx -v 2>&1 | sed 's/.*version: //'), $NGINX_WORKERS workers: TLS reverse proxy, no auth"
echo "  nginx+log   the same + nginx's default access log (combined, one write per request)"
echo "  nginx+auth  the same nginx config + auth_request to kfsec /authservice/check (keep-alive TLS pool)"
echo "  haproxy     HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }'), nbthread $HAPROXY_THREADS: TLS reverse proxy, no auth"
echo "  upstream: nginx 1 worker, fixed 200 \"ok\"; upstream keep-alive pools of $POOL; one certificate (kfsec's front door)"
echo "  TLS as openssl s_client negotiates it (protocol cipher group, resumes a session):"
for p in "${PEERS[@]}"; do printf '    %-11s %s\n' "$p" "${TLS[$p]}"; done
if [ "${TLS[kfsec]##* }" != "${TLS[nginx]##* }" ]; then
  echo "  NOTE: only one of kfsec and nginx resumes TLS sessions: the new-connection runs compare unlike handshakes"
fi
echo "  us/req = the server processes' user + system CPU time per request (nginx: all workers; nginx+auth: nginx + kfsec)"
echo "           (beside it: the peer's own in user space and in the kernel; for nginx+auth, nginx's and kfsec's)"
echo "  idle = share of all cores idle during the run; c/r/w/t = wrk's socket errors: connect/read/write/timeout"
echo "  $(nproc) cores shared by wrk, the upstream and the servers; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
# median VALUE...: the median of the numbers ("n/a" ones left out; the mean of the middle two of
# an even count).
median() {
  printf '%s\n' "$@" | grep -v '^n/a$' | sort -g | awk '{ v[NR] = $1 }
    END { if (NR == 0) print "n/a"; else if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# r_of KIND PEER CONNS METRIC: kfsec's METRIC (RPS, CPU, P99) over PEER's, in round $R.
r_of() { local -n m="$4"; ratio "${m[$1-kfsec-$3-$R]}" "${m[$1-$2-$3-$R]}"; }
declare -A RATIO # [KIND-PEER-CONNS-METRIC-R]
for R in $(seq "$ROUNDS"); do
  if [ "$ROUNDS" -gt 1 ]; then echo; echo "round $R of $ROUNDS (peers in $(in_order "${PEERS[@]}" | sed 's/ *$//; s/ /, /g') order)"; fi
  for c in $CONNS; do
    echo
    echo "keep-alive, $c connection(s) (wrk -t$(threads "$c") -c$c)"
    header req/s us/req
    for p in "${PEERS[@]}"; do line ka "$p" "$c"; done
  done
  echo
  echo "new TCP + TLS connection per request (Connection: close; wrk -t$(threads "$HS_CONNS") -c$HS_CONNS)"
  header conn/s us/conn
  for p in kfsec nginx; do line hs "$p" "$HS_CONNS"; done
  # wrk reconnects only when the answer closes the connection: near a keep-alive rate it did not.
  for p in kfsec nginx; do
    k=0
    for c in $CONNS; do k="$(awk -v a="$k" -v b="${RPS[ka-$p-$c-$R]}" 'BEGIN { print (b > a) ? b : a }')"; done
    if awk -v h="${RPS[hs-$p-$HS_CONNS-$R]}" -v k="$k" 'BEGIN { exit !(h > k / 2) }'; then
      echo "  $p: $(ratio "${RPS[hs-$p-$HS_CONNS-$R]}" "$k") of its best keep-alive rate with Connection: close: did wrk reconnect?" >&2
      FAILED=$((FAILED + 1))
    fi
  done
  for c in $CONNS; do
    for p in nginx nginx+log nginx+auth haproxy; do
      for m in RPS CPU P99; do RATIO[ka-$p-$c-$m-$R]="$(r_of ka "$p" "$c" "$m")"; done
    done
  done
  for m in RPS CPU P99; do RATIO[hs-nginx-$HS_CONNS-$m-$R]="$(r_of hs nginx "$HS_CONNS" "$m")"; done
done
resumed="resumed handshakes (both servers resume TLS sessions)"
if [ "${TLS[kfsec]##* }${TLS[nginx]##* }" != yesyes ]; then resumed="handshakes: see which servers resume above"; fi
echo "  note: $resumed; wrk's side of each handshake shares the cores: compare us/conn more than conn/s"

# ratio_at KEY: the ratio KEY of round $R, or (R=median) the median of the rounds' ratios.
ratio_at() {
  if [ "$R" = median ]; then
    local all=() r
    for r in $(seq "$ROUNDS"); do all+=("${RATIO[$1-$r]}"); done
    median "${all[@]}"
  else
    echo "${RATIO[$1-$R]}"
  fi
}
# ratios LABEL: the ratio tables of round $R (or R=median), under LABEL.
ratios() {
  local c
  echo
  echo "ratios, $1 (req/s: higher is better for kfsec; CPU/req, p99: lower is better)"
  for c in $CONNS; do
    printf '  %4s conns   kfsec/nginx rps %5s  CPU/req %5s  p99 %5s   kfsec/(nginx+auth) rps %5s  CPU/req %5s   kfsec/haproxy rps %5s  CPU/req %5s\n' "$c" \
      "$(ratio_at "ka-nginx-$c-RPS")" "$(ratio_at "ka-nginx-$c-CPU")" "$(ratio_at "ka-nginx-$c-P99")" \
      "$(ratio_at "ka-nginx+auth-$c-RPS")" "$(ratio_at "ka-nginx+auth-$c-CPU")" \
      "$(ratio_at "ka-haproxy-$c-RPS")" "$(ratio_at "ka-haproxy-$c-CPU")"
    printf '  %4s conns   kfsec/(nginx+log) rps %5s  CPU/req %5s  p99 %5s   (both record every request)\n' "$c" \
      "$(ratio_at "ka-nginx+log-$c-RPS")" "$(ratio_at "ka-nginx+log-$c-CPU")" "$(ratio_at "ka-nginx+log-$c-P99")"
  done
  printf '  handshakes kfsec/nginx: conn/s %s  CPU/conn %s  p99 %s\n' \
    "$(ratio_at "hs-nginx-$HS_CONNS-RPS")" "$(ratio_at "hs-nginx-$HS_CONNS-CPU")" "$(ratio_at "hs-nginx-$HS_CONNS-P99")"
}
if [ "$ROUNDS" -gt 1 ]; then
  for R in $(seq "$ROUNDS"); do ratios "round $R"; done
  R=median
  ratios "median of the $ROUNDS rounds' ratios"
else
  R=1
  ratios "kfsec/peer"
fi
# Issue 17's aims, at 64 connections when measured (the median ratios with ROUNDS > 1): against
# nginx (req/s >= 1.0x, CPU/req <= 1.1x, p99 no worse) and nginx + auth_request (req/s >= 2x);
# the same three against nginx+log.
if [ -n "${RPS[ka-kfsec-64-1]:-}" ]; then
  # aim LABEL KEY OP LIMIT: "LABEL 0.97x (aim OP LIMIT: held|MISSED)" for the ratio KEY.
  aim() {
    local r
    r="$(ratio_at "$2")"
    if awk -v r="$r" -v l="$4" -v op="$3" 'BEGIN { exit !((op == ">=") ? r >= l : r <= l) }'; then
      printf '%s %sx (aim %s %s: held)' "$1" "$r" "$3" "$4"
    else
      printf '%s %sx (aim %s %s: MISSED)' "$1" "$r" "$3" "$4"
    fi
  }
  for peer in nginx nginx+log; do
    printf '  aims at 64 conns vs %-9s %s;  %s;  %s\n' "$peer" \
      "$(aim req/s "ka-$peer-64-RPS" '>=' 1.0)" "$(aim CPU/req "ka-$peer-64-CPU" '<=' 1.1)" \
      "$(aim p99 "ka-$peer-64-P99" '<=' 1.0)"
  done
  printf '  aim at 64 conns vs nginx+auth %s\n' "$(aim req/s "ka-nginx+auth-64-RPS" '>=' 2.0)"
fi
echo "  load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$FAILED" -gt 0 ]; then
  echo "FAILED: $FAILED measured run(s) with no requests, non-2xx answers or socket errors, or without reconnections (see above); figures are not comparable" >&2
  exit 1
fi
