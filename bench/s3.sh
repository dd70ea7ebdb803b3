#!/usr/bin/env bash
# The S3 gateway's cost (issue 16): 1 MiB PUTs and GETs, and small-object GETs, through kfsec's
# S3 gateway vs straight to the same upstream, in the same run, taking turns.
#
# The upstream is Debian's nginx with WebDAV PUT (`dav_methods PUT`, files on disk under
# $BENCH_TMP), path style /<bucket>/<key>: a GET or PUT of an object costs it a static file read
# or a temp-file write and rename — far below moto's per-request cost (a Python server, ~100x
# slower, which would hide the gateway entirely). nginx does not check signatures, so the peer
# does less than any real S3 store (no SigV4, no checksums): the ratio is a lower bound of what
# the gateway costs in front of a real store. Both cases are TLS from the client: nginx serves
# the direct case on its own TLS listener (kfsec's front-door certificate), the gateway reaches
# nginx's plain listener. The client is wrk with a SigV4 presigned URL (bench/s3_presign.py, a
# workspace's key from its Secret mlpipeline-minio-artifact), so the gateway verifies a
# signature, checks the policy, re-signs and streams each request.
#
#   bash bench/s3.sh   # env: DURATION=5s WARMUP=2s ROUNDS=3 BIG_CONNECTIONS=4 SMALL_CONNECTIONS=32 THREADS=2
#
# Prints req/s, MiB/s, p50/p99 and CPU per request for each case and the ratios gateway/direct
# (aim ≥ 0.8× for 1 MiB). Exits non-zero on any non-2xx answer. About a minute and a half.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-3}"
BIG_CONNECTIONS="${BIG_CONNECTIONS:-4}"
SMALL_CONNECTIONS="${SMALL_CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
NS=bench
BUCKET=mlpipeline

bench_need curl wrk nginx python3
bench_build
bench_init
T="$BENCH_TMP"

HTTPS_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
S3_PORT="$(free_port)"
UP_PORT="$(free_port)"
UP_TLS_PORT="$(free_port)"

# --- kfsec with the gateway in front of nginx ----------------------------------------------------
printf 'bench-upstream-key' >"$T/up-ak"
printf 'bench-upstream-secret-not-checked-by-nginx' >"$T/up-sk"
HASH="$(printf '%s\n' "$BENCH_PASSWORD" | "$KFSEC_RELEASE" hash-password)"
kfsec_config "$T/kfsec.yaml" "$HTTPS_PORT" "$HASH" "s3:
  addr: 127.0.0.1:$S3_PORT
  region: us-east-1
  bucket: $BUCKET
  upstream:
    endpoint: http://127.0.0.1:$UP_PORT
    accessKeyFile: $T/up-ak
    secretKeyFile: $T/up-sk"
kfsec_start "$T/data" "$T/kfsec.yaml" "$HTTPS_PORT" "$ADMIN_PORT"
KPID="$KFSEC_PID"

# --- nginx: plain listener for the gateway, TLS listener for the direct case ----------------------
D="$T/nginx"
mkdir -p "$D/root/$BUCKET/private-artifacts/$NS"
# The workers run as this user (the work dir is 0700; as root nginx would drop to nobody).
nginx_conf "$D" 1 "  client_max_body_size 64m;
  client_body_buffer_size 1m;
  sendfile on;
  server {
    listen 127.0.0.1:$UP_PORT;
    listen 127.0.0.1:$UP_TLS_PORT ssl;
    ssl_certificate $T/data/pki/frontdoor.crt;
    ssl_certificate_key $T/data/pki/frontdoor.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $D/root;
    location / {
      dav_methods PUT DELETE;
      create_full_put_path on;
      default_type application/octet-stream;
    }
  }" "user $(id -un);"
nginx_start "$D"
NPID="$NGINX_PID"
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$UP_PORT/" && break; sleep 0.05; done

# --- a workspace and its key ---------------------------------------------------------------------
CA="$T/data/pki/ca.crt"
KC="$T/data/admin.kubeconfig"
awk '$1 == "client-certificate-data:" { print $2 }' "$KC" | base64 -d >"$T/admin.crt"
(umask 077 && awk '$1 == "client-key-data:" { print $2 }' "$KC" | base64 -d >"$T/admin.key")
api() { curl -sS --fail-with-body --cacert "$CA" --cert "$T/admin.crt" --key "$T/admin.key" \
  -H 'Content-Type: application/json' "$@"; }
api -X POST "https://localhost:$HTTPS_PORT/apis/kubeflow.org/v1/profiles" \
  --data "{\"apiVersion\": \"kubeflow.org/v1\", \"kind\": \"Profile\", \"metadata\": {\"name\": \"$NS\"},
    \"spec\": {\"owner\": {\"kind\": \"User\", \"name\": \"$BENCH_USER\"}}}" >/dev/null
SECRET=""
for _ in $(seq 100); do
  SECRET="$(api "https://localhost:$HTTPS_PORT/api/v1/namespaces/$NS/secrets/mlpipeline-minio-artifact" 2>/dev/null)" && break
  sleep 0.1
done
[ -n "$SECRET" ] || { echo "no Secret mlpipeline-minio-artifact in $NS (is the profile hook in?)" >&2; exit 1; }
AK="$(python3 -c 'import base64,json,sys; print(base64.b64decode(json.load(sys.stdin)["data"]["accesskey"]).decode())' <<<"$SECRET")"
SK="$(python3 -c 'import base64,json,sys; print(base64.b64decode(json.load(sys.stdin)["data"]["secretkey"]).decode())' <<<"$SECRET")"
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $S3_PORT), 0.2)" 2>/dev/null && break
  sleep 0.1
done

# --- objects and URLs ------------------------------------------------------------------------------
head -c 1048576 /dev/urandom >"$D/root/$BUCKET/private-artifacts/$NS/big.bin"
head -c 1024 /dev/urandom >"$D/root/$BUCKET/private-artifacts/$NS/small.bin"
presign() { # METHOD ENDPOINT KEY
  python3 "$BENCH_ROOT/bench/s3_presign.py" "$1" "$2" "$BUCKET" "private-artifacts/$NS/$3" "$AK" "$SK" 3600
}
declare -A URL
for c in direct gateway; do
  if [ "$c" = direct ]; then ep="https://127.0.0.1:$UP_TLS_PORT"; else ep="https://127.0.0.1:$S3_PORT"; fi
  URL[$c-put]="$(presign PUT "$ep" put.bin)"
  URL[$c-get]="$(presign GET "$ep" big.bin)"
  URL[$c-small]="$(presign GET "$ep" small.bin)"
done
cat >"$T/put.lua" <<'LUA'
wrk.method = "PUT"
wrk.body = string.rep("k", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
# Check both paths answer before measuring (a refused signature would otherwise pass as speed).
for c in direct gateway; do
  code="$(curl -sS --cacert "$CA" -o "$T/check.out" -w '%{http_code}' "${URL[$c-get]}")"
  [ "$code" = 200 ] && cmp -s "$T/check.out" "$D/root/$BUCKET/private-artifacts/$NS/big.bin" ||
    { echo "$c: GET answered $code: $(head -c 300 "$T/check.out")" >&2; exit 1; }
  code="$(curl -sS --cacert "$CA" -o "$T/check.out" -w '%{http_code}' -X PUT --data-binary @"$D/root/$BUCKET/private-artifacts/$NS/small.bin" "${URL[$c-put]}")"
  case "$code" in 200 | 201 | 204) ;; *) echo "$c: PUT answered $code: $(head -c 300 "$T/check.out")" >&2; exit 1 ;; esac
done

# --- rounds ------------------------------------------------------------------------------------------
order() { if [ $(($1 % 2)) = 1 ]; then echo "direct gateway"; else echo "gateway direct"; fi; }
run() { # KIND CASE ROUND CONNS ARGS...
  local k="$1" c="$2" r="$3" conns="$4" c0 c1
  shift 4
  c0="$(cpu_ticks "$KPID") $(cpu_ticks $(with_children "$NPID"))"
  wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency "$@" >"$T/$k-$c.$r.wrk"
  c1="$(cpu_ticks "$KPID") $(cpu_ticks $(with_children "$NPID"))"
  echo "$c0 $c1" | awk '{ print $3 - $1, $4 - $2 }' >"$T/$k-$c.$r.cpu"
}
args_for() { # KIND CASE
  case "$1" in
    put) echo "-s $T/put.lua ${URL[$2-put]}" ;;
    get) echo "${URL[$2-get]}" ;;
    small) echo "${URL[$2-small]}" ;;
  esac
}
for k in put get small; do
  conns="$BIG_CONNECTIONS"; [ "$k" = small ] && conns="$SMALL_CONNECTIONS"
  for c in direct gateway; do
    # shellcheck disable=SC2046
    wrk -t"$THREADS" -c"$conns" -d"$WARMUP" $(args_for "$k" "$c") >/dev/null
  done
  for r in $(seq "$ROUNDS"); do
    for c in $(order "$r"); do
      bench_log "$k round $r/$ROUNDS on $c: wrk -t$THREADS -c$conns -d$DURATION"
      # shellcheck disable=SC2046
      run "$k" "$c" "$r" "$conns" $(args_for "$k" "$c")
    done
  done
done

# summarize KIND CASE: RPS P50 P99 KCPU NCPU (µs/request) BAD ERR over the rounds.
summarize() {
  local tick f r
  tick="$(getconf CLK_TCK)"
  for r in $(seq "$ROUNDS"); do
    f="$T/$1-$2.$r"
    echo "$(awk '/requests in/ { sub(/s,$/, "", $4); print $1, $4 }' "$f.wrk") $(wrk_field "$f.wrk" p50)" \
      "$(wrk_field "$f.wrk" p99) $(cat "$f.cpu") $(wrk_field "$f.wrk" non2xx) $(wrk_field "$f.wrk" errors)"
  done | awk -v hz="$tick" '{ n += $1; s += $2; p50 += $3; p99 += $4; k += $5; x += $6; bad += $7; err += $8 }
    END { printf "%.1f %.3f %.3f %.1f %.1f %d %d\n", n / s, p50 / NR, p99 / NR, k / hz * 1e6 / n, x / hz * 1e6 / n, bad, err }'
}
FAILED=0
report() { # KIND TITLE MIB-PER-REQUEST
  local c rps p50 p99 kcpu ncpu bad err
  declare -A R P
  echo "$2"
  for c in direct gateway; do
    read -r rps p50 p99 kcpu ncpu bad err < <(summarize "$1" "$c")
    printf '  %-8s %9s req/s %9s MiB/s   p50 %8.3f ms   p99 %8.3f ms   kfsec CPU %7s us/req   nginx CPU %7s us/req   non-2xx %s   socket errors %s\n' \
      "$c" "$rps" "$(awk -v r="$rps" -v m="$3" 'BEGIN { printf "%.1f", r * m }')" "$p50" "$p99" "$kcpu" "$ncpu" "$bad" "$err"
    FAILED=$((FAILED + bad))
    R[$c]="$rps" P[$c]="$p99"
  done
  echo "  ratio gateway/direct: req/s $(ratio "${R[gateway]}" "${R[direct]}")   p99 $(ratio "${P[gateway]}" "${P[direct]}") (lower is better)"
}
echo
echo "s3 bench: kfsec's S3 gateway (SigV4 presigned URL verified, policy, re-signed, streamed) → nginx,"
echo "  vs nginx directly (TLS, no signature check); the cases take turns, $ROUNDS rounds of $DURATION each;"
echo "  $(nproc) cores shared by wrk, nginx and kfsec; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
report put "1. PUT 1 MiB objects, wrk -t$THREADS -c$BIG_CONNECTIONS" 1
report get "2. GET 1 MiB objects, wrk -t$THREADS -c$BIG_CONNECTIONS" 1
report small "3. GET 1 KiB objects, wrk -t$THREADS -c$SMALL_CONNECTIONS" 0.0009765625
if [ "$FAILED" -gt 0 ]; then
  echo "non-2xx answers: $FAILED" >&2
  exit 1
fi
