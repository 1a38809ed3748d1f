#!/usr/bin/env bash
# Retention at scale on the embedded store: writes 1,000,000 synthetic runs the way the
# recorder does while retention passes run beside the writes with a size bound, and prints the
# runs kept, their footprint, sled's size on disk and the data directory's `du` as it goes, and
# the slowest batch write. Prints figures; passes or fails nothing.
#
#   bash bench/retention.sh                       # 1M runs, max_disk_mb = 200
#   RETENTION_RUNS=200000 RETENTION_MB=64 bash bench/retention.sh
#   RETENTION_PROFILE=debug bash bench/retention.sh   # no release build (slower, same shape)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RETENTION_RUNS:-1000000}
MB=${RETENTION_MB:-200}
PROFILE=${RETENTION_PROFILE:-release}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/retention-$STAMP.txt
mkdir -p "$ROOT/bench/results"
if [ "$PROFILE" = release ]; then
  cargo build --release -p flowgate-actors --example retention_bench
  BIN=$ROOT/target/release/examples/retention_bench
else
  cargo build -p flowgate-actors --example retention_bench
  BIN=$ROOT/target/debug/examples/retention_bench
fi
"$BIN" "$RUNS" "$MB" | tee "$OUT"
# How sled's size answers deletes (the figures the design rests on).
SLED_BIN=${BIN%/retention_bench}/sled_space
if [ "$PROFILE" = release ]; then
  cargo build --release -p flowgate-actors --example sled_space
else
  cargo build -p flowgate-actors --example sled_space
fi
"$SLED_BIN" 100000 500000 | tee -a "$OUT"
echo "figures kept in $OUT"
