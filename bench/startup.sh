#!/usr/bin/env bash
# Startup time and memory of kfsec:
#  - time from process start to /readyz 200, first start (empty data dir: CA, certificates,
#    signing keys, admin account are created) and restart (existing data dir); RUNS of each;
#  - shutdown time after SIGTERM;
#  - idle RSS (VmRSS) after start, and after SESSIONS logins have created that many sessions.
#
#   bash bench/startup.sh      # RUNS=3 SESSIONS=1000 by default (SESSIONS=0 skips that part)
#
# The session logins use a second static user whose bcrypt hash has cost 4, so that creating
# 1000 sessions takes seconds instead of minutes; the session path is the same.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS="${RUNS:-3}"
SESSIONS="${SESSIONS:-1000}"
LOGIN_CONCURRENCY="${LOGIN_CONCURRENCY:-4}"

bench_need curl python3
bash "$BENCH_ROOT/scripts/install-test-deps.sh" --bench >/dev/null
PY="$BENCH_ROOT/bench/.venv/bin/python"
bench_build
bench_init
T="$BENCH_TMP"

KF_PORT="$(free_port)"
KF_ADMIN="$(free_port)"
HASH="$(printf '%s\n' "$BENCH_PASSWORD" | "$KFSEC_RELEASE" hash-password)"
FAST_USER="fast@example.com"
FAST_HASH="$("$PY" -c 'import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())' "$BENCH_PASSWORD")"
kfsec_config "$T/kfsec.yaml" "$KF_PORT" "$HASH" "- email: $FAST_USER
  hash: \"$FAST_HASH\"
  username: fast
  userID: \"1001\"
loginProtection:
  maxFailuresPerAddress: 1000000"

# measure DATA_DIR: start kfsec, time to /readyz 200, idle RSS after 2 s, SIGTERM → exit time.
# Prints "ready_ms rss_kib stop_ms".
measure() {
  "$PY" - "$KFSEC_RELEASE" "$T/kfsec.yaml" "$1" "$KF_PORT" "$KF_ADMIN" "$T/kfsec.log" <<'EOF'
import http.client, os, signal, subprocess, sys, time
binary, cfg, data, port, admin, logpath = sys.argv[1:7]
env = dict(os.environ, RUST_LOG="warn", NO_COLOR="1")
with open(logpath, "ab") as log:
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "serve", "--config", cfg, "--data-dir", data,
                          "--https-addr", f"127.0.0.1:{port}", "--admin-addr", f"127.0.0.1:{admin}", "--webhook-addr", "127.0.0.1:0"],
                         stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        ready = None
        while time.monotonic() - t0 < 60:
            if p.poll() is not None:
                sys.exit(f"kfsec exited with {p.returncode}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", int(admin), timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    ready = time.monotonic() - t0
                    break
            except OSError:
                pass
            time.sleep(0.002)
        if ready is None:
            sys.exit("kfsec not ready in 60 s")
        time.sleep(2)
        rss = 0
        for line in open(f"/proc/{p.pid}/status"):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        t1 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        stop = time.monotonic() - t1
        print(f"{ready * 1000:.1f} {rss} {stop * 1000:.1f}")
    finally:
        if p.poll() is None:
            p.kill()
EOF
}

stats() { # numbers... → "min median max"
  printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "min %8.1f   median %8.1f   max %8.1f", v[1], v[int((NR + 1) / 2)], v[NR] }'
}

first_ready=() first_rss=() first_stop=()
for i in $(seq "$RUNS"); do
  bench_log "first start $i/$RUNS (empty data dir)"
  read -r r m s < <(measure "$T/data$i")
  first_ready+=("$r"); first_rss+=("$m"); first_stop+=("$s")
done
re_ready=() re_rss=() re_stop=()
for i in $(seq "$RUNS"); do
  bench_log "restart $i/$RUNS (existing data dir)"
  read -r r m s < <(measure "$T/data1")
  re_ready+=("$r"); re_rss+=("$m"); re_stop+=("$s")
done

echo
echo "startup bench: $(nproc) cores, $RUNS runs each, binary $KFSEC_RELEASE"
echo "  first start → /readyz 200 (ms):   $(stats "${first_ready[@]}")"
echo "  restart     → /readyz 200 (ms):   $(stats "${re_ready[@]}")"
echo "  SIGTERM     → exit (ms):          $(stats "${first_stop[@]}" "${re_stop[@]}")"
echo "  idle RSS after first start (MiB): $(stats $(for k in "${first_rss[@]}"; do awk -v k="$k" 'BEGIN { print k / 1024 }'; done))"
echo "  idle RSS after restart (MiB):     $(stats $(for k in "${re_rss[@]}"; do awk -v k="$k" 'BEGIN { print k / 1024 }'; done))"

if [ "$SESSIONS" -gt 0 ]; then
  kfsec_start "$T/data1" "$T/kfsec.yaml" "$KF_PORT" "$KF_ADMIN"
  CA="$T/data1/pki/ca.crt"
  KF="https://localhost:$KF_PORT"
  rss() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$KFSEC_PID/status"; }
  sleep 2
  RSS0="$(rss)"
  bench_log "creating $SESSIONS sessions ($LOGIN_CONCURRENCY concurrent logins as $FAST_USER)"
  t0="$(date +%s%N)"
  per=$(((SESSIONS + LOGIN_CONCURRENCY - 1) / LOGIN_CONCURRENCY))
  worker() {
    local id="$1" n=0 ok=0
    while [ "$n" -lt "$per" ] && [ $(((id - 1) * per + n)) -lt "$SESSIONS" ]; do
      kfsec_login "$KF" "$CA" "$T/s$id.jar" "$FAST_USER" "$BENCH_PASSWORD" 2>>"$T/s$id.err" && ok=$((ok + 1))
      n=$((n + 1))
    done
    echo "$ok" >"$T/s$id.count"
  }
  wpids=()
  for i in $(seq "$LOGIN_CONCURRENCY"); do worker "$i" & wpids+=($!); done
  wait "${wpids[@]}"
  t1="$(date +%s%N)"
  OK=0
  for i in $(seq "$LOGIN_CONCURRENCY"); do OK=$((OK + $(cat "$T/s$i.count"))); done
  sleep 2
  RSS1="$(rss)"
  echo "  sessions: $OK/$SESSIONS logins ok in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }') s (cost-4 user, concurrency $LOGIN_CONCURRENCY)"
  echo "  idle RSS before sessions: $RSS0 MiB   after $OK sessions: $RSS1 MiB   (+$(awk -v a="$RSS0" -v b="$RSS1" -v n="$OK" 'BEGIN { printf "%.1f KiB/session", (n > 0) ? (b - a) * 1024 / n : 0 }'))"
  [ "$OK" -eq "$SESSIONS" ] || { echo "  WARNING: some logins failed:" >&2; cat "$T"/s*.err | head -5 >&2; exit 1; }
fi
