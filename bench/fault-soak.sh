#!/usr/bin/env bash
# Fault soak: many requests to a model served by two providers, one of which fails half of its
# calls (HTTP 500). Reports the success rate the client sees (target 100%), runs recorded vs
# requests sent (target equal), and the p99 latency added by the faults, measured against the
# same load with both providers healthy.
#
#   bash bench/fault-soak.sh            (BENCH_REQUESTS=20000 BENCH_CONNECTIONS=32 BENCH_SKIP_BUILD=1)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUESTS=${BENCH_REQUESTS:-20000}
CONNS=${BENCH_CONNECTIONS:-32}
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/fault-soak-$STAMP
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flowgate-soak.XXXXXX")
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

command -v oha >/dev/null || cargo install oha --locked
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
if [[ $SKIP_BUILD != 1 ]]; then
    (cd "$ROOT" && cargo build --release --bins -p flowgate)
fi

# Two providers of flowgate's built-in mock type: `flaky` fails half of its calls with a 500,
# `healthy` never fails. Both answer at once, so the figures isolate flowgate's own fallback
# cost.
cat >"$TMP/flowgate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
data_dir = "$TMP/data"
workers = 1

[providers.flaky]
type = "mock"
failure_rate = 0.5
failure_status = 500
# Keep the breaker closed: the soak measures fallback, not the breaker skipping the provider.
breaker = { failure_threshold = 1000000, error_rate_threshold = 1.1 }

[providers.healthy]
type = "mock"

[models."soak-faulty"]
providers = [
  { provider = "flaky", model = "soak", input_per_mtok = 1.0, output_per_mtok = 1.0 },
  { provider = "healthy", model = "soak", input_per_mtok = 1.0, output_per_mtok = 1.0 },
]

[models."soak-healthy"]
providers = [
  { provider = "healthy", model = "soak", input_per_mtok = 1.0, output_per_mtok = 1.0 },
  { provider = "flaky", model = "soak", input_per_mtok = 1.0, output_per_mtok = 1.0 },
]
EOF
"$ROOT/target/release/flowgate" serve --config "$TMP/flowgate.toml" >"$TMP/flowgate.out" \
    2>"$OUT/flowgate.stderr" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$TMP/flowgate.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed 's/listening on //' "$TMP/flowgate.out")

run() { # model label
    oha --no-tui --output-format json -n "$REQUESTS" -c "$CONNS" -m POST \
        -H 'Authorization: Bearer soak' -T application/json \
        -d "{\"model\":\"$1\",\"messages\":[{\"role\":\"user\",\"content\":\"soak\"}]}" \
        "$URL/v1/chat/completions" >"$OUT/$2.json"
}
run soak-healthy healthy
run soak-faulty faulty

metric() { curl -s "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
sleep 1
curl -s "$URL/api/agents/default/runs?limit=1" >/dev/null   # waits for the recorder to catch up
RECORDED=$(metric flowgate_runs_recorded_total)

report() { # label
    jq -r --arg l "$1" '[$l, (.summary.requestsPerSec|floor),
        ((.statusCodeDistribution["200"] // 0) / ([.statusCodeDistribution[]] | add) * 100),
        (.latencyPercentiles.p50 * 1000), (.latencyPercentiles.p99 * 1000)]
        | @tsv' "$OUT/$1.json"
}
{
    printf 'scenario\treq/s\tsuccess %%\tp50 ms\tp99 ms\n'
    report healthy
    report faulty
} | column -t -s $'\t' | tee "$OUT/report.txt"
P99_HEALTHY=$(jq '.latencyPercentiles.p99 * 1000' "$OUT/healthy.json")
P99_FAULTY=$(jq '.latencyPercentiles.p99 * 1000' "$OUT/faulty.json")
SENT=$((REQUESTS * 2))
{
    echo
    echo "one provider failing half its calls (HTTP 500), the other healthy; $REQUESTS requests per scenario, $CONNS connections"
    printf 'added p99 latency from the faults: %.3f ms\n' "$(echo "$P99_FAULTY - $P99_HEALTHY" | bc -l)"
    echo "runs recorded: $RECORDED; requests sent: $SENT"
    echo "upstream attempts by outcome:"
    curl -s "$URL/metrics" | grep '^flowgate_upstream_attempts_total' | sed 's/^/  /'
} | tee -a "$OUT/report.txt"
