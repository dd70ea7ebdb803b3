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
CASES=(redb etcd)

# --- three etcd members ------------------------------------------------------------------------
NAMES=(n1 n2 n3)
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
  ROUND_EXTRA_PIDS+=($!)
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

for s in "${CASES[@]}"; do PORT[$s]="$(free_port)"; done
kfsec_config "$T/redb.yaml" "${PORT[redb]}" "$HASH" "$COMMON"
kfsec_config "$T/etcd.yaml" "${PORT[etcd]}" "$HASH" "$COMMON
$ETCD_STORE"
for s in "${CASES[@]}"; do case_start "$s" "$T/$s.yaml"; done

# --- set-up per store: a session cookie, a ServiceAccount token for the writes -----------------
for s in "${CASES[@]}"; do case_setup "$s"; done
write_lua "$T/write.lua"

# --- load ------------------------------------------------------------------------------------
for s in "${CASES[@]}"; do
  bench_log "warm-up $WARMUP: proxy and writes on $s"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -H "Cookie: ${COOKIE[$s]}" "${BASE[$s]}/" >/dev/null
  wrk -t"$THREADS" -c"$WRITE_CONNECTIONS" -d"$WARMUP" -s "$T/write.lua" "${BASE[$s]}/" -- warm "${TOKEN[$s]}" >/dev/null
done
proxy_args() { WRK_ARGS=(-H "Cookie: ${COOKIE[$1]}" "${BASE[$1]}/"); }
write_args() { WRK_ARGS=(-s "$T/write.lua" "${BASE[$1]}/" -- "w$2" "${TOKEN[$1]}"); }
case_rounds proxy "$CONNECTIONS" proxy_args
case_rounds write "$WRITE_CONNECTIONS" write_args

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
  for s in $(case_order "$r"); do
    bench_log "login round $r/$LOGIN_ROUNDS on $s: $CONCURRENCY workers, $((LOGIN_ROUND_MS / 1000)).$((LOGIN_ROUND_MS % 1000 / 100))s"
    login_round "$s"
  done
done

# --- session propagation: a second replica B on the same etcd --------------------------------
case_start etcd-b "$T/etcd.yaml"
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
echo
echo "etcd bench: kfsec on a 3-member etcd $ETCD_VERSION cluster vs kfsec on redb, same configuration"
echo "  (secretsEncryption on both); the cases take turns, $ROUNDS rounds each; $(nproc) cores shared by"
echo "  the load generator, kfsec and the etcd members; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "1. authenticated GET / through the front door (cookie check + proxy to nginx), wrk -t$THREADS -c$CONNECTIONS, ${DURATION} per round"
case_report proxy "etcd members"
echo "2. full browser-style logins (bcrypt cost 12), concurrency $CONCURRENCY, ${LOGIN_SECONDS}s per store"
for s in "${CASES[@]}"; do
  read -r ok bad ns <"$T/login-$s.total"
  rate="$(awk -v n="$ok" -v ns="$ns" 'BEGIN { printf "%.2f", n / (ns / 1e9) }')"
  printf '  %-5s %4d ok, %d failed = %s logins/s\n' "$s" "$ok" "$bad" "$rate"
  FAILED=$((FAILED + bad))
  eval "${s}_logins=$rate"
done
# shellcheck disable=SC2154
echo "  ratio etcd/redb: logins/s $(ratio "$etcd_logins" "$redb_logins")"
echo "3. API writes: POST /api/v1/namespaces/default/configmaps (ServiceAccount token), wrk -t$THREADS -c$WRITE_CONNECTIONS, ${DURATION} per round"
case_report write "etcd members"
echo "4. session propagation between two replicas on the etcd, $PROPAGATIONS sessions (absolute, no peer; B asked every ~1 ms)"
echo "  login on A → B accepts the cookie:  p50 $PR_P50 ms   p99 $PR_P99 ms   max $PR_MAX ms   at B's first ask: $PR_FIRST/$PROPAGATIONS"
echo "  logout on A → B refuses the cookie: p50 $LO_P50 ms   p99 $LO_P99 ms   max $LO_MAX ms   at B's first ask: $LO_FIRST/$PROPAGATIONS"
if [ "$FAILED" -gt 0 ]; then
  echo "  WARNING: $FAILED requests or logins failed; first errors:" >&2
  cat "$T"/login-*-w*.err 2>/dev/null | head -5 >&2
  exit 1
fi
