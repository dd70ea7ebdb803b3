#!/usr/bin/env bash
# kfsec on etcd vs kfsec on redb, measured in the same run (issue 14): a three-member Debian
# etcd cluster on free 127.0.0.1 ports, one kfsec on its redb file and one on the etcd cluster,
# with the same configuration otherwise (secretsEncryption included, so the store is the only
# difference). Measures, each as a ratio etcd/redb:
#   1. authenticated proxy requests/s (wrk, session cookie, route / → an nginx upstream);
#   2. full browser-style logins/s (bench/lib.sh kfsec_login, CONCURRENCY workers);
#   3. API writes/s: POST ConfigMaps with a ServiceAccount token (wrk + a Lua script, WRITE_CONNECTIONS);
# and, with a second kfsec replica on the same etcd (absolute figures, no peer):
#   4. session propagation: a login on replica A, then B's /authservice/check polled until 200;
#      a logout on A, then B polled until it refuses; PROPAGATIONS times; p50/p99/max ms.
#
#   bash bench/etcd.sh   # env: DURATION=5s WARMUP=2s ROUNDS=2 CONNECTIONS=64 THREADS=2 WRITE_CONNECTIONS=4
#                        #      CONCURRENCY=2 LOGIN_SECONDS=20 LOGIN_ROUNDS=4 PROPAGATIONS=50
#
# The redb and etcd cases take turns (ROUNDS or LOGIN_ROUNDS rounds, the order reversed every
# other round), so a change in the machine's load weighs on both alike. About 2¼ minutes with
# the defaults. Exits non-zero if a request or login failed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
WRITE_CONNECTIONS="${WRITE_CONNECTIONS:-4}"
CONCURRENCY="${CONCURRENCY:-2}"
LOGIN_SECONDS="${LOGIN_SECONDS:-20}"
LOGIN_ROUNDS="${LOGIN_ROUNDS:-4}"
PROPAGATIONS="${PROPAGATIONS:-50}"
LOGIN_ROUND_MS=$((LOGIN_SECONDS * 1000 / LOGIN_ROUNDS))

bench_need curl wrk nginx python3 /usr/bin/etcd etcdctl
bash "$BENCH_ROOT/scripts/install-test-deps.sh" --bench >/dev/null
PY="$BENCH_ROOT/bench/.venv/bin/python"
bench_build
bench_init
T="$BENCH_TMP"
STORES=(redb etcd)

# --- three etcd members ------------------------------------------------------------------------
NAMES=(n1 n2 n3)
ETCD_PIDS=()
declare -A CPORT PPORT
for n in "${NAMES[@]}"; do CPORT[$n]="$(free_port)"; PPORT[$n]="$(free_port)"; done
CLUSTER="$(for n in "${NAMES[@]}"; do printf '%s=http://127.0.0.1:%s,' "$n" "${PPORT[$n]}"; done)"
ENDPOINTS="$(for n in "${NAMES[@]}"; do printf 'http://127.0.0.1:%s,' "${CPORT[$n]}"; done)"
CLUSTER="${CLUSTER%,}" ENDPOINTS="${ENDPOINTS%,}" CLUSTER_TOKEN="kfsec-bench-$$-$RANDOM"
bench_log "etcd: 3 members, client ports ${CPORT[*]}"
for n in "${NAMES[@]}"; do
  c="http://127.0.0.1:${CPORT[$n]}" p="http://127.0.0.1:${PPORT[$n]}"
  env -i PATH=/usr/bin:/bin /usr/bin/etcd --name "$n" --data-dir "$T/$n.etcd" \
    --listen-client-urls "$c" --advertise-client-urls "$c" \
    --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
    --initial-cluster "$CLUSTER" --initial-cluster-token "$CLUSTER_TOKEN" \
    --initial-cluster-state new --logger zap --log-outputs "$T/$n.etcd.log" >/dev/null 2>&1 &
  BENCH_PIDS+=($!)
  ETCD_PIDS+=($!)
  disown $! # a member still electing when stopped gets SIGKILL after 5 s; no job report for it
done
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" --command-timeout=1s endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" --command-timeout=2s endpoint health >/dev/null 2>&1 ||
  { echo "etcd cluster not healthy; see $T/n*.etcd.log (KEEP_TMP=1)" >&2; exit 1; }
ETCD_VERSION="$(etcd --version | awk '/etcd Version/ { print $3 }')"

# --- trivial upstream: nginx returning a fixed 200 body (as bench/proxy.sh) ----------------------
UP_PORT="$(free_port)"
ok_upstream "$UP_PORT"

# --- kfsec on redb and kfsec on etcd: one configuration but the store ----------------------------
"$KFSEC_RELEASE" secrets generate-key "$T/kek.b64" >/dev/null
HASH="$(printf '%s\n' "$BENCH_PASSWORD" | "$KFSEC_RELEASE" hash-password)"
# The propagation logins use a second user with a bcrypt cost-4 hash (as bench/startup.sh does).
FAST_USER="fast@example.com"
FAST_HASH="$("$PY" -c 'import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())' "$BENCH_PASSWORD")"
COMMON="- email: $FAST_USER
  hash: \"$FAST_HASH\"
  username: fast
  userID: \"1001\"
routes:
- prefix: /
  upstream: http://127.0.0.1:$UP_PORT
loginProtection:
  maxFailuresPerAccount: 1000000
  maxFailuresPerAddress: 1000000
  maxVerificationsPerAccount: 1000000
secretsEncryption: {keyFile: $T/kek.b64}"
ETCD_STORE="store:
  type: etcd
  endpoints: [${ENDPOINTS//,/, }]
  prefix: /kfsec-bench"

declare -A PORT ADMIN PID CA BASE
for s in "${STORES[@]}"; do PORT[$s]="$(free_port)"; done
kfsec_config "$T/redb.yaml" "${PORT[redb]}" "$HASH" "$COMMON"
kfsec_config "$T/etcd.yaml" "${PORT[etcd]}" "$HASH" "$COMMON
$ETCD_STORE"
# start_kfsec NAME CONFIG: kfsec on PORT[NAME] (a fresh one unless set) with its own data dir.
start_kfsec() {
  [ -n "${PORT[$1]:-}" ] || PORT[$1]="$(free_port)"
  ADMIN[$1]="$(free_port)"
  bench_log "kfsec $1: starting"
  kfsec_start "$T/$1-data" "$2" "${PORT[$1]}" "${ADMIN[$1]}"
  PID[$1]="$KFSEC_PID" CA[$1]="$T/$1-data/pki/ca.crt" BASE[$1]="https://localhost:${PORT[$1]}"
}
for s in "${STORES[@]}"; do start_kfsec "$s" "$T/$s.yaml"; done

# --- set-up per store: a session cookie, a ServiceAccount token for the writes -----------------
# api STORE METHOD PATH [JSON]: a request with the admin client certificate of the store's
# kfsec (from its admin.kubeconfig); prints the body, fails unless 2xx.
admin_pem() { # STORE: the client certificate and key from admin.kubeconfig, as PEM files
  local kc="$T/$1-data/admin.kubeconfig"
  awk '$1 == "client-certificate-data:" { print $2 }' "$kc" | base64 -d >"$T/$1-admin.crt"
  awk '$1 == "client-key-data:" { print $2 }' "$kc" | base64 -d >"$T/$1-admin.key"
}
api() {
  curl -sS --fail-with-body --cacert "${CA[$1]}" --cert "$T/$1-admin.crt" --key "$T/$1-admin.key" \
    -X "$2" -H 'Content-Type: application/json' ${4:+--data "$4"} "${BASE[$1]}$3"
}
declare -A COOKIE TOKEN
for s in "${STORES[@]}"; do
  kfsec_login "${BASE[$s]}" "${CA[$s]}" "$T/$s.jar" || { echo "$s: login failed" >&2; exit 1; }
  COOKIE[$s]="authservice_session=$(session_cookie "$T/$s.jar")"
  body="$(curl -sS --cacert "${CA[$s]}" -H "Cookie: ${COOKIE[$s]}" "${BASE[$s]}/")"
  [ "$body" = ok ] || { echo "$s: authenticated GET returned: $body" >&2; exit 1; }
  admin_pem "$s"
  api "$s" POST /api/v1/namespaces/default/serviceaccounts '{"metadata": {"name": "bench-writer"}}' >/dev/null
  api "$s" POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings '{"metadata": {"name": "bench-writer"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-edit"},
    "subjects": [{"kind": "ServiceAccount", "name": "bench-writer", "namespace": "default"}]}' >/dev/null
  TOKEN[$s]="$(api "$s" POST /api/v1/namespaces/default/serviceaccounts/bench-writer/token \
    '{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["status"]["token"])')"
  code="$(curl -sS --cacert "${CA[$s]}" -o "$T/$s.cm" -w '%{http_code}' -H "Authorization: Bearer ${TOKEN[$s]}" \
    -H 'Content-Type: application/json' --data '{"metadata": {"name": "bench-check"}}' \
    "${BASE[$s]}/api/v1/namespaces/default/configmaps")"
  [ "$code" = 201 ] || { echo "$s: ConfigMap POST with the token answered $code: $(cat "$T/$s.cm")" >&2; exit 1; }
done

# One unique ConfigMap per request: name = PREFIX-THREAD-COUNTER (wrk args: PREFIX TOKEN).
cat >"$T/write.lua" <<'EOF'
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
EOF

# --- load ------------------------------------------------------------------------------------
# order R: the stores in round R's order (reversed every other round).
order() { if [ $(($1 % 2)) = 1 ]; then echo redb etcd; else echo etcd redb; fi; }

# wrk_round CASE STORE R CONNS WRK-ARGS...: one measured wrk run into $T/CASE-STORE.R.wrk; the
# CPU ticks of the kfsec under test and of the etcd members into .cpu.
wrk_round() {
  local c="$1" s="$2" r="$3" conns="$4" c0 c1
  shift 4
  local e0 e1
  c0="$(cpu_ticks "${PID[$s]}")" e0="$(cpu_ticks "${ETCD_PIDS[@]}")"
  wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency "$@" >"$T/$c-$s.$r.wrk"
  c1="$(cpu_ticks "${PID[$s]}")" e1="$(cpu_ticks "${ETCD_PIDS[@]}")"
  echo "$((c1 - c0)) $((e1 - e0))" >"$T/$c-$s.$r.cpu"
}
for s in "${STORES[@]}"; do
  bench_log "warm-up $WARMUP: proxy and writes on $s"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -H "Cookie: ${COOKIE[$s]}" "${BASE[$s]}/" >/dev/null
  wrk -t"$THREADS" -c"$WRITE_CONNECTIONS" -d"$WARMUP" -s "$T/write.lua" "${BASE[$s]}/" -- warm "${TOKEN[$s]}" >/dev/null
done
for r in $(seq "$ROUNDS"); do
  for s in $(order "$r"); do
    bench_log "proxy round $r/$ROUNDS on $s: wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
    wrk_round proxy "$s" "$r" "$CONNECTIONS" -H "Cookie: ${COOKIE[$s]}" "${BASE[$s]}/"
  done
done
for r in $(seq "$ROUNDS"); do
  for s in $(order "$r"); do
    bench_log "write round $r/$ROUNDS on $s: wrk -t$THREADS -c$WRITE_CONNECTIONS -d$DURATION, POST ConfigMaps"
    wrk_round write "$s" "$r" "$WRITE_CONNECTIONS" -s "$T/write.lua" "${BASE[$s]}/" -- "w$r" "${TOKEN[$s]}"
  done
done

# login_round STORE: CONCURRENCY workers log in on STORE's kfsec for LOGIN_ROUND_MS; adds to
# $T/login-STORE.total ("ok failed nanoseconds"). Errors go to $T/login-STORE-w*.err.
login_round() {
  local s="$1" i o b start end deadline ok=0 bad=0 ns=0
  start="$(date +%s%N)"
  deadline=$((start + LOGIN_ROUND_MS * 1000000))
  local -a wpids=()
  for i in $(seq "$CONCURRENCY"); do
    (
      o=0 b=0
      while [ "$(date +%s%N)" -lt "$deadline" ]; do
        if kfsec_login "${BASE[$s]}" "${CA[$s]}" "$T/login-$s-w$i.jar" 2>>"$T/login-$s-w$i.err"; then
          o=$((o + 1))
        else b=$((b + 1)); fi
      done
      echo "$o $b" >"$T/login-$s-w$i.count"
    ) &
    wpids+=($!)
  done
  wait "${wpids[@]}"
  end="$(date +%s%N)"
  [ -f "$T/login-$s.total" ] && read -r ok bad ns <"$T/login-$s.total"
  for i in $(seq "$CONCURRENCY"); do read -r o b <"$T/login-$s-w$i.count"; ok=$((ok + o)) bad=$((bad + b)); done
  echo "$ok $bad $((ns + end - start))" >"$T/login-$s.total"
}
for r in $(seq "$LOGIN_ROUNDS"); do
  for s in $(order "$r"); do
    bench_log "login round $r/$LOGIN_ROUNDS on $s: $CONCURRENCY workers, $((LOGIN_ROUND_MS / 1000)).$((LOGIN_ROUND_MS % 1000 / 100))s"
    login_round "$s"
  done
done

# --- session propagation: a second replica B on the same etcd --------------------------------
start_kfsec etcd-b "$T/etcd.yaml"
bench_log "propagation: $PROPAGATIONS logins on A (:${PORT[etcd]}), B (:${PORT[etcd-b]}) polled until it accepts the session"
PROPAGATION="$(python3 - "${PORT[etcd]}" "${PORT[etcd-b]}" "$FAST_USER" "$BENCH_PASSWORD" "$PROPAGATIONS" <<'EOF'
# A browser-style login on A, every hop sent to A; when the answer that sets the session cookie
# has arrived (t0), B's /authservice/check is asked with it over a kept-alive connection, every
# millisecond, until it answers 200 (t1). Then a logout on A (B now holds the session in its
# cache), and B asked again until it refuses the cookie. Prints, for each, "p50 p99 max
# first-ask" (milliseconds; first-ask: how often B's first answer was already the final one).
import http.client as hc, ssl, sys, time, urllib.parse

a, b, user, pw, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # loopback only; the other cases check kfsec's CA with curl
public = f"https://localhost:{a}"

def request(conn, method, path, headers, body=None):
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    r.read()
    return r

def login():
    """Returns (session cookie, t0)."""
    conn = hc.HTTPSConnection("127.0.0.1", a, context=ctx, timeout=15)
    jar, path, method, body = {}, "/", "GET", None
    try:
        for _ in range(15):
            h = {"Host": f"localhost:{a}"}
            if jar:
                h["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
            if body is not None:
                h["Content-Type"] = "application/x-www-form-urlencoded"
                h["Origin"] = public
            r = request(conn, method, path, h, body)
            t = time.monotonic()
            for k, v in r.getheaders():
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    jar[name.strip()] = rest.split(";", 1)[0]
                    if name.strip() == "authservice_session" and jar[name.strip()]:
                        return jar["authservice_session"], t
            if 300 <= r.status < 400:
                u = urllib.parse.urlsplit(r.getheader("Location"))
                path = urllib.parse.urljoin(path, u.path + (f"?{u.query}" if u.query else ""))
                method, body = "GET", None
            elif r.status == 200 and "/auth/local/login" in path and method == "GET":
                method, body = "POST", urllib.parse.urlencode({"login": user, "password": pw}).encode()
            else:
                raise SystemExit(f"login on A stopped at {method} {path}: {r.status}")
        raise SystemExit("login on A: too many hops")
    finally:
        conn.close()

def logout(cookie):
    conn = hc.HTTPSConnection("127.0.0.1", a, context=ctx, timeout=15)
    try:
        r = request(conn, "POST", "/authservice/logout", {"Host": f"localhost:{a}", "Origin": public,
                    "Accept": "application/json", "Cookie": f"authservice_session={cookie}"})
        if r.status not in (200, 201, 302, 303):
            raise SystemExit(f"logout on A answered {r.status}")
        return time.monotonic()
    finally:
        conn.close()

poll = hc.HTTPSConnection("127.0.0.1", b, context=ctx, timeout=15)
request(poll, "GET", "/authservice/check", {})  # the TLS handshake, before any timing

def until_b(cookie, t0, done):
    """Milliseconds from t0 until B's answer to the cookie satisfies done; whether the first did."""
    tries = 0
    while True:
        tries += 1
        s = request(poll, "GET", "/authservice/check", {"Cookie": f"authservice_session={cookie}"}).status
        t1 = time.monotonic()
        if done(s):
            return (t1 - t0) * 1000, tries == 1
        if s not in (200, 401, 302, 403) or t1 - t0 > 10:
            raise SystemExit(f"B answered {s} {t1 - t0:.1f} s after the change on A")
        time.sleep(0.001)

runs = {"login": [], "logout": []}
for i in range(n):
    cookie, t0 = login()
    runs["login"].append(until_b(cookie, t0, lambda s: s == 200))
    t0 = logout(cookie)
    runs["logout"].append(until_b(cookie, t0, lambda s: s != 200))
out = []
for k in ("login", "logout"):
    ms = sorted(t for t, _ in runs[k])
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
    out.append(f"{pick(0.5):.2f} {pick(0.99):.2f} {ms[-1]:.2f} {sum(f for _, f in runs[k])}")
print(" ".join(out))
EOF
)"
read -r PR_P50 PR_P99 PR_MAX PR_FIRST LO_P50 LO_P99 LO_MAX LO_FIRST <<<"$PROPAGATION"

# --- report ----------------------------------------------------------------------------------
TICK="$(getconf CLK_TCK)"
# wrk_sum CASE STORE: sets RPS (all rounds' requests / their seconds), P50 and P99 (ms, mean of
# the rounds), CPU and ETCD_CPU (µs per request), BAD (non-2xx) and ERR (socket errors), summed.
wrk_sum() {
  local f r
  read -r RPS P50 P99 CPU ETCD_CPU BAD ERR < <(
    for r in $(seq "$ROUNDS"); do
      f="$T/$1-$2.$r"
      echo "$(awk '/requests in/ { sub(/s,$/, "", $4); print $1, $4 }' "$f.wrk") $(wrk_field "$f.wrk" p50)" \
        "$(wrk_field "$f.wrk" p99) $(cat "$f.cpu") $(wrk_field "$f.wrk" non2xx) $(wrk_field "$f.wrk" errors)"
    done | awk -v hz="$TICK" '{ n += $1; s += $2; p50 += $3; p99 += $4; k += $5; e += $6; bad += $7; err += $8 }
      END { printf "%.0f %.3f %.3f %.1f %.1f %d %d\n", n / s, p50 / NR, p99 / NR, k / hz * 1e6 / n, e / hz * 1e6 / n, bad, err }')
}
FAILED=0
wrk_report() { # CASE: both stores' lines and the ratio line
  local s
  for s in "${STORES[@]}"; do
    wrk_sum "$1" "$s"
    printf '  %-5s %8s req/s   p50 %7.3f ms   p99 %7.3f ms   kfsec CPU %6s us/req' "$s" "$RPS" "$P50" "$P99" "$CPU"
    if [ "$s" = etcd ]; then printf '   etcd members CPU %6s us/req' "$ETCD_CPU"; fi
    printf '   non-2xx %s   socket errors %s\n' "$BAD" "$ERR"
    FAILED=$((FAILED + BAD))
    eval "${s}_rps=$RPS ${s}_p99=$P99"
  done
  # shellcheck disable=SC2154
  echo "  ratio etcd/redb: req/s $(ratio "$etcd_rps" "$redb_rps")   p99 $(ratio "$etcd_p99" "$redb_p99") (lower is better)"
}

echo
echo "etcd bench: kfsec on a 3-member etcd $ETCD_VERSION cluster vs kfsec on redb, same configuration"
echo "  (secretsEncryption on both); the cases take turns, $ROUNDS rounds each; $(nproc) cores shared by"
echo "  the load generator, kfsec and the etcd members; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "1. authenticated GET / through the front door (cookie check + proxy to nginx), wrk -t$THREADS -c$CONNECTIONS, ${DURATION} per round"
wrk_report proxy
echo "2. full browser-style logins (bcrypt cost 12), concurrency $CONCURRENCY, ${LOGIN_SECONDS}s per store"
for s in "${STORES[@]}"; do
  read -r ok bad ns <"$T/login-$s.total"
  rate="$(awk -v n="$ok" -v ns="$ns" 'BEGIN { printf "%.2f", n / (ns / 1e9) }')"
  printf '  %-5s %4d ok, %d failed = %s logins/s\n' "$s" "$ok" "$bad" "$rate"
  FAILED=$((FAILED + bad))
  eval "${s}_logins=$rate"
done
# shellcheck disable=SC2154
echo "  ratio etcd/redb: logins/s $(ratio "$etcd_logins" "$redb_logins")"
echo "3. API writes: POST /api/v1/namespaces/default/configmaps (ServiceAccount token), wrk -t$THREADS -c$WRITE_CONNECTIONS, ${DURATION} per round"
wrk_report write
echo "4. session propagation between two replicas on the etcd, $PROPAGATIONS sessions (absolute, no peer; B asked every ~1 ms)"
echo "  login on A → B accepts the cookie:  p50 $PR_P50 ms   p99 $PR_P99 ms   max $PR_MAX ms   at B's first ask: $PR_FIRST/$PROPAGATIONS"
echo "  logout on A → B refuses the cookie: p50 $LO_P50 ms   p99 $LO_P99 ms   max $LO_MAX ms   at B's first ask: $LO_FIRST/$PROPAGATIONS"
if [ "$FAILED" -gt 0 ]; then
  echo "  WARNING: $FAILED requests or logins failed; first errors:" >&2
  cat "$T"/login-*-w*.err 2>/dev/null | head -5 >&2
  exit 1
fi
