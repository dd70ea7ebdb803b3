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

# ok_upstream PORT: a trivial upstream on 127.0.0.1:PORT, nginx (1 worker, dir $BENCH_TMP/up)
# answering every request with 200 "ok"; returns once it answers. Sets UP_PID.
ok_upstream() {
  local d="$BENCH_TMP/up"
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
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
  server {
    listen 127.0.0.1:$1;
    location / { default_type text/plain; return 200 "ok"; }
  }
}
EOF
  nginx -p "$d" -c "$d/nginx.conf" &
  UP_PID=$!
  BENCH_PIDS+=("$UP_PID")
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
  local pid total=0 t
  for pid in "$@"; do
    t="$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)"
    total=$((total + t))
  done
  echo "$total"
}

# children PID: the PID and its direct children (nginx master + workers).
with_children() {
  echo "$1" $(pgrep -P "$1" || true)
}

# ratio A B [DIGITS]: A / B.
ratio() {
  awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (b == 0) print "n/a"; else printf "%.*f\n", d, a / b }'
}
