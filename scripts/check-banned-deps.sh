#!/usr/bin/env bash
# Fails if a banned crypto/TLS crate enters the workspace's normal (non-dev, non-build) dependency
# tree: aws-lc-rs (through rustls) is kfsec's only cryptography, so no OpenSSL, native-tls or ring.
# Host target only (no downloads for other platforms); dev- and build-dependencies are allowed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BANNED=(openssl openssl-sys native-tls ring)

# One package per line ("name vX.Y.Z (source)"); a failure of cargo tree itself fails the check.
if ! tree="$(cargo tree --workspace --edges normal --prefix none --format '{p}' 2>&1)"; then
  echo "check-banned-deps: cargo tree failed:" >&2
  echo "$tree" >&2
  exit 2
fi
names="$(awk '{ print $1 }' <<<"$tree" | sort -u)"
if [ "$(wc -l <<<"$names")" -lt 10 ]; then
  echo "check-banned-deps: cargo tree listed almost nothing; refusing to pass:" >&2
  echo "$tree" >&2
  exit 2
fi

found=0
for crate in "${BANNED[@]}"; do
  if grep -qFx -- "$crate" <<<"$names"; then
    found=1
    echo "check-banned-deps: banned crate '$crate' is in the normal dependency tree; pulled in by:"
    cargo tree --workspace --edges normal --invert "$crate" 2>&1 | sed 's/^/    /'
  fi
done
if [ "$found" -ne 0 ]; then
  echo "check-banned-deps: FAILED (aws-lc-rs is the only crypto: no ${BANNED[*]})"
  exit 1
fi
echo "check-banned-deps: none of ${BANNED[*]} in $(wc -l <<<"$names") normal dependencies"
