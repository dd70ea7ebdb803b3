# Sourced by the scripts that test the real kfsec binary (tests/kfp/run.sh, tests/clients/run.sh).
#
#   start_kfsec LABEL CONFIG DATA PORT DIR
#
# starts "$KFSEC_BIN serve" with CONFIG and data directory DATA on https://127.0.0.1:PORT (admin
# and webhook listeners on free loopback ports), its output in DIR/kfsec.out and DIR/kfsec.log,
# sets PID (for the caller's cleanup trap) and waits up to 30 s until it says it is ready.
# Returns non-zero, with the server's log on stderr, if it exits or does not get ready.
start_kfsec() {
  local label="$1" config="$2" data="$3" port="$4" dir="$5"
  "$KFSEC_BIN" serve --config "$config" --data-dir "$data" --https-addr "127.0.0.1:$port" \
    --admin-addr 127.0.0.1:0 --webhook-addr 127.0.0.1:0 >"$dir/kfsec.out" 2>"$dir/kfsec.log" &
  PID=$!
  for _ in $(seq 1 300); do
    if grep -q "kfsec ready" "$dir/kfsec.out" 2>/dev/null; then return 0; fi
    if ! kill -0 "$PID" 2>/dev/null; then
      cat "$dir/kfsec.log" >&2
      echo "$label: kfsec exited" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$label: kfsec did not start" >&2
  return 1
}
