#!/usr/bin/env bash
# Runs search at scale on the embedded store: loads 1,000,000 synthetic runs (as the recorder
# writes them, indexes included), then times a filtered page, paging, free-text searches and an
# all-agents search. Prints figures; passes or fails nothing.
#
#   bash bench/search.sh            # 1M runs in a fresh temp dir
#   SEARCH_RUNS=200000 bash bench/search.sh
#   SEARCH_DIR=/tmp/runs bash bench/search.sh   # keep (and reuse) the loaded store
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${SEARCH_RUNS:-1000000}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/search-$STAMP.txt
mkdir -p "$ROOT/bench/results"
cargo build --release -p flowgate-actors --example search_bench
BIN=$ROOT/target/release/examples/search_bench
# What the indexes add to the recorder's writes, on fresh stores.
"$BIN" --write-cost | tee "$OUT"
if [ -n "${SEARCH_DIR:-}" ]; then
  "$BIN" "$RUNS" "$SEARCH_DIR" | tee -a "$OUT"
else
  "$BIN" "$RUNS" | tee -a "$OUT"
fi
echo "figures kept in $OUT"
