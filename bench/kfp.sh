#!/usr/bin/env bash
# KFP namespace-listing benchmark: one page of 20 experiments from a namespace of 20, with
# 1,000 experiments in the store vs 100,000 over 1,000 namespaces; prints p50/p99 of both and
# the ratio (aim ≤ 1.5x: a namespace listing must not scan other namespaces).
#   bash bench/kfp.sh   # env: STORE=redb|memory BIG=100000 BIG_NS=1000 SMALL=1000 SMALL_NS=10 ITER=3000
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec cargo run -q --release -p kfsec-kfp --example list_bench
