# Shared helpers for the bench scripts (sourced, not run). Everything binds 127.0.0.1 only.
# shellcheck shell=bash

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KFSEC_RELEASE="${KFSEC_BIN:-$BENCH_ROOT/target/release/kfsec}"
BENCH_USER="bench@example.com"
BENCH_PASSWORD="bench-password-123"

# PIDs to stop on exit (SIGTERM, then SIGKILL after 5 s), and the work dir to remove.
BENCH_PIDS=()
BENCH_TMP=""

bench_log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${BENCH_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -n "$BENCH_TMP" ] && [ -z "${KEEP_TMP:-}" ]; then rm -rf "$BENCH_TMP"; fi
}

bench_init() {
  BENCH_TMP="$(mktemp -d /tmp/kfsec-bench.XXXXXX)"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# Build the release binary (skipped when KFSEC_BIN is given).
bench_build() {
  if [ -z "${KFSEC_BIN:-}" ]; then
    bench_log "cargo build --release -p kfsec"
    (cd "$BENCH_ROOT" && cargo build --release -p kfsec --quiet)
  fi
  [ -x "$KFSEC_RELEASE" ] || { echo "no kfsec binary at $KFSEC_RELEASE" >&2; exit 1; }
}

bench_need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || { echo "missing $c: run bash scripts/install-test-deps.sh --bench" >&2; exit 1; }
  done
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL [SECONDS]: until URL answers 200.
wait_http() {
  local url="$1" secs="${2:-30}"
  for _ in $(seq $((secs * 20))); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ]; then return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for $url" >&2
  return 1
}

# nginx_conf DIR WORKERS HTTP [MAIN]: write DIR/nginx.conf (the one preamble all benches share):
# WORKERS worker processes, in the foreground (so the PID started is the master's), pid file,
# error log and temp paths in DIR, no access log, client connections kept for a million
# requests. HTTP goes inside the http block (upstreams, servers, other settings), MAIN at the
# top level (e.g. `master_process off;`, `user NAME;`).
nginx_conf() {
  local d="$1" workers="$2" http="$3" main="${4:-}"
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<EOF
${main:+$main
}worker_processes $workers;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  keepalive_requests 1000000;
$http
}
EOF
}

# nginx_start DIR: start nginx with DIR/nginx.conf in the background, add it to BENCH_PIDS and
# set NGINX_PID (the master, or the only process with `master_process off`). NGINX_WRAP (words)
# runs it under a tool, e.g. valgrind, whose output then goes to DIR/wrap.log. Returns at once:
# the caller waits for the listener it needs.
nginx_start() {
  local d="$1" wrap
  read -r -a wrap <<<"${NGINX_WRAP:-}"
  if [ "${#wrap[@]}" -gt 0 ]; then
    "${wrap[@]}" nginx -p "$d" -c "$d/nginx.conf" 2>>"$d/wrap.log" &
  else
    nginx -p "$d" -c "$d/nginx.conf" &
  fi
  NGINX_PID=$!
  BENCH_PIDS+=("$NGINX_PID")
}

# ok_upstream PORT: a trivial upstream on 127.0.0.1:PORT, nginx (1 worker, dir $BENCH_TMP/up)
# answering every request with 200 "ok"; returns once it answers. Sets UP_PID.
ok_upstream() {
  nginx_conf "$BENCH_TMP/up" 1 "  server {
    listen 127.0.0.1:$1;
    location / { default_type text/plain; return 200 \"ok\"; }
  }"
  nginx_start "$BENCH_TMP/up"
  # shellcheck disable=SC2034 # for the caller
  UP_PID="$NGINX_PID"
  wait_http "http://127.0.0.1:$1/" 10
}

# kfsec_config FILE HTTPS_PORT HASH [EXTRA_YAML]: write a config with the bench user.
kfsec_config() {
  local file="$1" port="$2" hash="$3" extra="${4:-}"
  cat >"$file" <<EOF
apiVersion: kfsec/v1
publicURL: https://localhost:$port
staticPasswords:
- email: $BENCH_USER
  hash: "$hash"
  username: bench
  userID: "1000"
$extra
EOF
}

# kfsec_start DATA_DIR CONFIG HTTPS_PORT ADMIN_PORT: start kfsec in the background and wait
# for /readyz. Sets KFSEC_PID. KFSEC_WRAP (words) runs kfsec under a tool, e.g. valgrind.
kfsec_start() {
  local data="$1" cfg="$2" port="$3" admin="$4" wrap
  read -r -a wrap <<<"${KFSEC_WRAP:-}"
  RUST_LOG="${RUST_LOG:-warn}" NO_COLOR=1 "${wrap[@]}" "$KFSEC_RELEASE" serve --config "$cfg" --data-dir "$data" \
    --https-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$admin" --webhook-addr 127.0.0.1:0 \
    >>"$BENCH_TMP/kfsec.out" 2>>"$BENCH_TMP/kfsec.log" &
  KFSEC_PID=$!
  BENCH_PIDS+=("$KFSEC_PID")
  wait_http "http://127.0.0.1:$admin/readyz" "${KFSEC_START_SECONDS:-60}" || { tail -20 "$BENCH_TMP/kfsec.log" >&2; exit 1; }
}

# kfsec_login BASE CA JAR [EMAIL] [PASSWORD]: the whole browser flow with curl and a fresh
# cookie jar: GET / → /dex/auth → login form; POST the form → code → callback → cookie → /.
# Returns non-zero unless the session cookie was set and the final page answered 200.
kfsec_login() {
  local base="$1" ca="$2" jar="$3" email="${4:-$BENCH_USER}" pw="${5:-$BENCH_PASSWORD}" form code
  rm -f "$jar"
  form="$(curl -sS --cacert "$ca" -b "$jar" -c "$jar" -L -o /dev/null -w '%{url_effective}' "$base/")" || return 1
  case "$form" in *"/dex/auth/local/login"*) ;; *) echo "login: no form (at $form)" >&2; return 1 ;; esac
  code="$(curl -sS --cacert "$ca" -b "$jar" -c "$jar" -L -o /dev/null -w '%{http_code}' \
    --data-urlencode "login=$email" --data-urlencode "password=$pw" "$form")" || return 1
  [ "$code" = 200 ] || { echo "login: final status $code" >&2; return 1; }
  grep -q 'authservice_session' "$jar" || { echo "login: no session cookie" >&2; return 1; }
}

# session_cookie JAR: the authservice_session value from a curl cookie jar.
session_cookie() {
  awk '$6 == "authservice_session" { print $7 }' "$1" | tail -1
}

# wrk_field FILE rps|p99|p50|non2xx|errors: a figure from wrk --latency output
# (latencies in ms).
wrk_field() {
  local file="$1" what="$2"
  case "$what" in
    rps) awk '/^Requests\/sec:/ { print $2 }' "$file" ;;
    p50 | p99)
      awk -v q="${what#p}%" '$1 == q {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "us") v = v / 1000; else if (u == "s") v = v * 1000; else if (u == "m") v = v * 60000;
        printf "%.3f\n", v }' "$file" ;;
    non2xx) awk '/Non-2xx or 3xx responses:/ { print $5; f = 1 } END { if (!f) print 0 }' "$file" ;;
    errors) awk '/Socket errors:/ { gsub(/,/, ""); s = $4 + $6 + $8 + $10; print s; f = 1 } END { if (!f) print 0 }' "$file" ;;
  esac
}

# cpu_ticks PID...: user+system clock ticks used so far by these processes.
cpu_ticks() {
  local u k
  read -r u k < <(cpu_split "$@")
  echo $((u + k))
}

# cpu_split PID...: "USER SYSTEM" clock ticks used so far by these processes.
cpu_split() {
  local pid u=0 k=0 a b
  for pid in "$@"; do
    read -r a b < <(awk '{ print $14, $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0 0)
    u=$((u + a)) k=$((k + b))
  done
  echo "$u $k"
}

# thread_split PID: clock ticks used so far by kfsec's connection workers (kfsec-worker-N), by
# its audit log thread (kfsec-audit-log) and by the whole process (threads that exited
# included): "WORKERS_USER WORKERS_SYSTEM LOG_USER LOG_SYSTEM PROCESS_USER PROCESS_SYSTEM".
thread_split() {
  local t
  {
    for t in /proc/"$1"/task/*; do
      echo "$(cat "$t/comm" 2>/dev/null || echo gone) $(awk '{ print $14, $15 }' "$t/stat" 2>/dev/null || echo 0 0)"
    done
    echo "process $(cpu_split "$1")"
  } | awk '{ g = ($1 ~ /^kfsec-worker/) ? 0 : ($1 == "kfsec-audit-log") ? 1 : ($1 == "process") ? 2 : 3; u[g] += $2; k[g] += $3 }
    END { printf "%d %d %d %d %d %d\n", u[0], k[0], u[1], k[1], u[2], k[2] }'
}

# with_children PID: the PID and its direct children (nginx master + workers).
with_children() {
  # shellcheck disable=SC2046 # one word per PID
  echo "$1" $(pgrep -P "$1" || true)
}

# ratio A B [DIGITS]: A / B.
ratio() {
  awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (b == 0) print "n/a"; else printf "%.*f\n", d, a / b }'
}

# --- two kfsec cases measured in turns (bench/etcd.sh, bench/audit.sh) --------------------------
# Each case NAME is one kfsec process; its figures live in these arrays, keyed by NAME.
declare -gA PORT ADMIN PID CA BASE COOKIE TOKEN
CASES=()             # the two cases compared, set by the script (e.g. redb etcd)
ROUND_EXTRA_PIDS=()  # processes whose CPU is counted beside kfsec's (e.g. the etcd members)

# case_start NAME CONFIG: kfsec on PORT[NAME] (a fresh port unless set) with its own data dir.
case_start() {
  [ -n "${PORT[$1]:-}" ] || PORT[$1]="$(free_port)"
  ADMIN[$1]="$(free_port)"
  bench_log "kfsec $1: starting"
  kfsec_start "$BENCH_TMP/$1-data" "$2" "${PORT[$1]}" "${ADMIN[$1]}"
  PID[$1]="$KFSEC_PID" CA[$1]="$BENCH_TMP/$1-data/pki/ca.crt" BASE[$1]="https://localhost:${PORT[$1]}"
}

# case_api NAME METHOD PATH [JSON]: a request with the admin client certificate of NAME's kfsec
# (from its admin.kubeconfig); prints the body, fails unless 2xx.
case_api() {
  local kc="$BENCH_TMP/$1-data/admin.kubeconfig" crt="$BENCH_TMP/$1-admin.crt" key="$BENCH_TMP/$1-admin.key"
  if [ ! -f "$key" ]; then
    awk '$1 == "client-certificate-data:" { print $2 }' "$kc" | base64 -d >"$crt"
    (umask 077 && awk '$1 == "client-key-data:" { print $2 }' "$kc" | base64 -d >"$key")
  fi
  curl -sS --fail-with-body --cacert "${CA[$1]}" --cert "$crt" --key "$key" \
    -X "$2" -H 'Content-Type: application/json' ${4:+--data "$4"} "${BASE[$1]}$3"
}

# case_setup NAME: a browser session (COOKIE[NAME], checked through the route /) and a
# ServiceAccount token allowed to edit namespace default (TOKEN[NAME], checked by a write).
case_setup() {
  local s="$1" body code
  kfsec_login "${BASE[$s]}" "${CA[$s]}" "$BENCH_TMP/$s.jar" || { echo "$s: login failed" >&2; exit 1; }
  COOKIE[$s]="authservice_session=$(session_cookie "$BENCH_TMP/$s.jar")"
  body="$(curl -sS --cacert "${CA[$s]}" -H "Cookie: ${COOKIE[$s]}" "${BASE[$s]}/")"
  [ "$body" = ok ] || { echo "$s: authenticated GET returned: $body" >&2; exit 1; }
  case_api "$s" POST /api/v1/namespaces/default/serviceaccounts '{"metadata": {"name": "bench-writer"}}' >/dev/null
  case_api "$s" POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings '{"metadata": {"name": "bench-writer"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-edit"},
    "subjects": [{"kind": "ServiceAccount", "name": "bench-writer", "namespace": "default"}]}' >/dev/null
  TOKEN[$s]="$(case_api "$s" POST /api/v1/namespaces/default/serviceaccounts/bench-writer/token \
    '{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["status"]["token"])')"
  code="$(curl -sS --cacert "${CA[$s]}" -o "$BENCH_TMP/$s.cm" -w '%{http_code}' -H "Authorization: Bearer ${TOKEN[$s]}" \
    -H 'Content-Type: application/json' --data '{"metadata": {"name": "bench-check"}}' \
    "${BASE[$s]}/api/v1/namespaces/default/configmaps")"
  [ "$code" = 201 ] || { echo "$s: ConfigMap POST with the token answered $code: $(cat "$BENCH_TMP/$s.cm")" >&2; exit 1; }
}

# write_lua FILE: a wrk script POSTing one unique ConfigMap per request to namespace default,
# name = PREFIX-THREAD-COUNTER (wrk args after --: PREFIX TOKEN).
write_lua() {
  cat >"$1" <<'LUA'
local threads, n = 0, 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  prefix, token = args[1], args[2]
end
function request()
  n = n + 1
  local name = prefix .. "-" .. tid .. "-" .. n
  return wrk.format("POST", "/api/v1/namespaces/default/configmaps",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token },
    '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"' .. name .. '"},"data":{"k":"' .. name .. '"}}')
end
LUA
}

# case_order R: the two cases in round R's order (reversed every other round), so a change in
# the machine's load weighs on both alike.
case_order() { if [ $(($1 % 2)) = 1 ]; then echo "${CASES[0]} ${CASES[1]}"; else echo "${CASES[1]} ${CASES[0]}"; fi; }

# case_round KIND NAME R CONNS WRK-ARGS...: one measured wrk run into $BENCH_TMP/KIND-NAME.R.wrk;
# the CPU ticks of NAME's kfsec and of ROUND_EXTRA_PIDS into .cpu, of kfsec's thread groups
# (thread_split) into .threads.
case_round() {
  local k="$1" s="$2" r="$3" conns="$4" c0 c1 e0 e1 t0 t1 i
  shift 4
  c0="$(cpu_ticks "${PID[$s]}")" e0="$(cpu_ticks "${ROUND_EXTRA_PIDS[@]}")" t0="$(thread_split "${PID[$s]}")"
  wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency "$@" >"$BENCH_TMP/$k-$s.$r.wrk"
  c1="$(cpu_ticks "${PID[$s]}")" e1="$(cpu_ticks "${ROUND_EXTRA_PIDS[@]}")" t1="$(thread_split "${PID[$s]}")"
  echo "$((c1 - c0)) $((e1 - e0))" >"$BENCH_TMP/$k-$s.$r.cpu"
  local -a before after
  read -r -a before <<<"$t0"
  read -r -a after <<<"$t1"
  for i in "${!after[@]}"; do printf '%d ' $((after[i] - before[i])); done >"$BENCH_TMP/$k-$s.$r.threads"
}

# case_rounds KIND CONNS ARGS-FUNCTION: ROUNDS measured rounds of KIND, the cases in turns; the
# function, called with (case, round), sets WRK_ARGS (wrk's options and URL for that case).
WRK_ARGS=()
case_rounds() {
  local k="$1" conns="$2" f="$3" r s
  for r in $(seq "$ROUNDS"); do
    for s in $(case_order "$r"); do
      "$f" "$s" "$r"
      bench_log "$k round $r/$ROUNDS on $s: wrk -t$THREADS -c$conns -d$DURATION"
      case_round "$k" "$s" "$r" "$conns" "${WRK_ARGS[@]}"
    done
  done
}

# case_sum KIND NAME: sets RPS (all rounds' requests / their seconds), P50 and P99 (ms, mean of
# the rounds), CPU and EXTRA_CPU (µs per request), BAD (non-2xx) and ERR (socket errors), summed,
# and SPLIT (µs per request of kfsec's workers, audit log thread and the rest, user + kernel).
case_sum() {
  local f r tick
  tick="$(getconf CLK_TCK)"
  SPLIT="$(for r in $(seq "$ROUNDS"); do
    f="$BENCH_TMP/$1-$2.$r"
    echo "$(awk '/requests in/ { print $1 }' "$f.wrk") $(cat "$f.threads")"
  done | awk -v hz="$tick" '{ n += $1; for (i = 2; i <= 7; i++) t[i] += $i }
    # (the process'"'"'s ticks and each thread'"'"'s are rounded on their own, so the rest can come
    # out a tick or two below zero: shown as 0)
    function rest(all, a, b) { return all - a - b > 0 ? all - a - b : 0 }
    END { us = 1e6 / hz / n
      printf "workers %.2f + %.2f, audit log %.2f + %.2f, rest %.2f + %.2f", t[2] * us, t[3] * us, t[4] * us, t[5] * us,
        rest(t[6], t[2], t[4]) * us, rest(t[7], t[3], t[5]) * us }')"
  read -r RPS P50 P99 CPU EXTRA_CPU BAD ERR < <(
    for r in $(seq "$ROUNDS"); do
      f="$BENCH_TMP/$1-$2.$r"
      echo "$(awk '/requests in/ { sub(/s,$/, "", $4); print $1, $4 }' "$f.wrk") $(wrk_field "$f.wrk" p50)" \
        "$(wrk_field "$f.wrk" p99) $(cat "$f.cpu") $(wrk_field "$f.wrk" non2xx) $(wrk_field "$f.wrk" errors)"
    done | awk -v hz="$tick" '{ n += $1; s += $2; p50 += $3; p99 += $4; k += $5; e += $6; bad += $7; err += $8 }
      END { printf "%.0f %.3f %.3f %.1f %.1f %d %d\n", n / s, p50 / NR, p99 / NR, k / hz * 1e6 / n, e / hz * 1e6 / n, bad, err }')
}

# case_report KIND [EXTRA-LABEL]: both cases' lines (with EXTRA-LABEL's CPU for the second case
# when given) and the ratio line second/first; adds non-2xx answers to FAILED.
FAILED=0
case_report() {
  local s a="${CASES[0]}" b="${CASES[1]}"
  declare -A rps p99
  for s in "$a" "$b"; do
    case_sum "$1" "$s"
    printf '  %-5s %8s req/s   p50 %7.3f ms   p99 %7.3f ms   kfsec CPU %6s us/req' "$s" "$RPS" "$P50" "$P99" "$CPU"
    if [ "$s" = "$b" ] && [ -n "${2:-}" ]; then printf '   %s CPU %6s us/req' "$2" "$EXTRA_CPU"; fi
    printf '   non-2xx %s   socket errors %s\n' "$BAD" "$ERR"
    printf '        kfsec threads, us/req user + kernel: %s\n' "$SPLIT"
    FAILED=$((FAILED + BAD))
    rps[$s]="$RPS" p99[$s]="$P99"
  done
  echo "  ratio $b/$a: req/s $(ratio "${rps[$b]}" "${rps[$a]}")   p99 $(ratio "${p99[$b]}" "${p99[$a]}") (lower is better)"
}
