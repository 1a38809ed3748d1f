#!/usr/bin/env bash
# flowgate on PostgreSQL next to flowgate on sled: the same chat-completions load (bench/run.sh's
# request, tools and JSON parsing) through two flowgate processes that differ only in
# `[storage]`, in alternating rounds; then what the PostgreSQL batch writer sustained.
# Run by hand: `bash bench/postgres.sh`. See bench/README.md ("PostgreSQL") for how to read it.
#
# Knobs (environment variables):
#   BENCH_DATABASE_URL       the server (default: FLOWGATE_TEST_DATABASE_URL, else
#                            postgres://postgres@127.0.0.1:5432/test); a schema of its own,
#                            dropped afterwards
#   BENCH_DURATION=10        seconds per measured run
#   BENCH_WARMUP=2           seconds of warm-up before each throughput run
#   BENCH_CONNECTIONS=64     concurrent connections
#   BENCH_RATE=500           requests/s of the fixed-rate (latency) run (oha only)
#   BENCH_ROUNDS=2           throughput rounds (sled, then PostgreSQL, in each)
#   BENCH_PROXY_WORKERS=1    flowgate server.workers
#   BENCH_TOOL=auto          auto | oha | wrk
#   BENCH_SKIP_BUILD=0       1: use the existing target/release binaries
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-64}
RATE=${BENCH_RATE:-500}
ROUNDS=${BENCH_ROUNDS:-2}
WORKERS=${BENCH_PROXY_WORKERS:-1}
TOOL=${BENCH_TOOL:-auto}
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
DB_URL=${BENCH_DATABASE_URL:-${FLOWGATE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/$STAMP-postgres
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flowgate-bench-pg.XXXXXX")
REPORT=$OUT/report.txt
SCHEMA=flowgate_bench_$$_$RANDOM
PIDS=()
declare -A FG_PID FG_URL

log() { printf '%s\n' "$*" | tee -a "$REPORT"; }
die() {
    log "ERROR: $*"
    exit 1
}

cleanup() {
    local rc=$? pid i
    set +e
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 1500; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    psql "$DB_URL" -X -q -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1
    rm -rf "$TMP"
    echo "raw output: $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. Tools: the load tool as bench/run.sh picks it, jq, psql.
export PATH="$PATH:$HOME/.cargo/bin"
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
command -v psql >/dev/null || die "psql is missing (Debian's postgresql-client)"
if [[ $TOOL == auto ]]; then
    if command -v oha >/dev/null; then TOOL=oha; else TOOL=wrk; fi
fi
if [[ $TOOL == wrk ]] && ! command -v wrk >/dev/null; then apt-get install -y -qq wrk; fi
command -v "$TOOL" >/dev/null || die "load tool $TOOL is not available (bash bench/run.sh installs oha)"
OHA_JSON_FLAG=(--output-format json)
if [[ $TOOL == oha ]] && ! oha --help | grep -q -- '--output-format'; then OHA_JSON_FLAG=(--json); fi
psql "$DB_URL" -X -q -c "SELECT 1" >/dev/null || die "PostgreSQL at $DB_URL does not answer"

# 2. Build.
cd "$ROOT"
if [[ $SKIP_BUILD != 1 ]]; then
    cargo build --release --bins -p flowgate -p flowgate-mock-upstream 2>&1 | tail -n 3
fi
FLOWGATE=$ROOT/target/release/flowgate
MOCK=$ROOT/target/release/flowgate-mock-upstream
[[ -x $FLOWGATE && -x $MOCK ]] || die "missing $FLOWGATE or $MOCK"

wait_listening() { # name pid stdout -> LISTEN_URL
    local i line
    for ((i = 0; i < 300; i++)); do
        line=$(grep -m1 -o 'listening on http://[0-9.:]*' "$3" 2>/dev/null || true)
        if [[ -n $line ]]; then
            LISTEN_URL=${line#listening on }
            return 0
        fi
        kill -0 "$2" 2>/dev/null || die "$1 exited before listening (see $OUT/$1.stderr)"
        sleep 0.1
    done
    die "$1 did not listen within 30 s"
}

# 3. The mock upstream and the two flowgates.
"$MOCK" --listen 127.0.0.1:0 --workers 1 --no-record >"$OUT/mock.stdout" 2>"$OUT/mock.stderr" &
PIDS+=($!)
wait_listening mock $! "$OUT/mock.stdout"
UP_URL=$LISTEN_URL

for backend in sled postgres; do
    storage=""
    if [[ $backend == postgres ]]; then
        storage=$(printf '[storage]\nbackend = "postgres"\nurl = "%s"\npool_size = 16\nschema = "%s"\n' "$DB_URL" "$SCHEMA")
    fi
    cat >"$TMP/$backend.toml" <<EOF
[server]
listen = "127.0.0.1:0"
data_dir = "$TMP/$backend-data"
workers = $WORKERS

[recorder]
flush_interval_ms = 200

$storage

[providers.upstream]
type = "openai"
base_url = "$UP_URL/v1"
api_key = "bench"

[models."bench-model"]
providers = [{ provider = "upstream", model = "gpt-4o-mini", input_per_mtok = 0.15, output_per_mtok = 0.60 }]
EOF
    cp "$TMP/$backend.toml" "$OUT/flowgate-$backend.toml"
    "$FLOWGATE" serve --config "$TMP/$backend.toml" >"$OUT/$backend.stdout" 2>"$OUT/$backend.stderr" &
    FG_PID[$backend]=$!
    PIDS+=($!)
    wait_listening "$backend" $! "$OUT/$backend.stdout"
    FG_URL[$backend]=$LISTEN_URL
done

BODY='{"model":"bench-model","messages":[{"role":"user","content":"Hello, benchmark"}]}'
metric() { # backend name -> value of an unlabelled metric (0 if absent)
    { curl -sS --max-time 5 "${FG_URL[$1]}/metrics" || true; } |
        awk -v n="$2" '$1 == n { v = $2 } END { print (v == "" ? 0 : v) }'
}
for backend in sled postgres; do
    code=$(curl -sS -o "$OUT/smoke-$backend.json" -w '%{http_code}' -H 'content-type: application/json' \
        -H 'authorization: Bearer bench' --data-binary "$BODY" "${FG_URL[$backend]}/v1/chat/completions")
    [[ $code == 200 ]] || die "smoke request through $backend answered $code"
done

cat >"$TMP/wrk.lua" <<'EOF'
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
function done(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non2xx3xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), summary.errors.status))
end
EOF

printf 'backend\tscenario\tround\trps_ok\tp50_ms\tp99_ms\tsent\tnon_200\n' >"$OUT/summary.tsv"
SENT_TOTAL_sled=0
SENT_TOTAL_postgres=0
load() { # backend scenario round seconds record(1|0)
    local b=$1 scenario=$2 round=$3 secs=$4 rec=$5 url row name="$2-$1-r$3"
    url=${FG_URL[$b]}/v1/chat/completions
    if [[ $TOOL == oha ]]; then
        local extra=()
        [[ $scenario == rate ]] && extra=(-q "$RATE" --latency-correction)
        oha --no-tui "${OHA_JSON_FLAG[@]}" -z "${secs}s" -c "$CONNS" -w "${extra[@]}" -m POST \
            -H 'Authorization: Bearer bench' -T application/json -d "$BODY" "$url" \
            >"$OUT/$name.json" 2>"$OUT/$name.stderr" || die "oha failed: $(cat "$OUT/$name.stderr")"
        row=$(jq -r '(.statusCodeDistribution // {}) as $sc | (.errorDistribution // {}) as $ed
            | ([$sc[]] | add // 0) as $resp | ([$ed[]] | add // 0) as $errs | ($sc["200"] // 0) as $ok
            | [(if .summary.total > 0 then $ok / .summary.total else 0 end | floor),
               ((.latencyPercentiles.p50 // 0) * 1e6 | round / 1000),
               ((.latencyPercentiles.p99 // 0) * 1e6 | round / 1000),
               ($resp + $errs), ($resp + $errs - $ok)] | @tsv' "$OUT/$name.json")
    else
        [[ $scenario == rate ]] && return 0 # wrk cannot pace requests
        BENCH_BODY=$BODY wrk -t 2 -c "$CONNS" -d "${secs}s" --latency -s "$TMP/wrk.lua" "$url" \
            >"$OUT/$name.txt" 2>&1 || die "wrk failed: $(tail -5 "$OUT/$name.txt")"
        row=$(grep '^WRKJSON ' "$OUT/$name.txt" | sed 's/^WRKJSON //' | jq -r '
            [((.requests - .non2xx3xx) / (.duration_us / 1e6) | floor), (.p50_us / 1000),
             (.p99_us / 1000), .requests, .non2xx3xx] | @tsv')
    fi
    local sent
    sent=$(cut -f4 <<<"$row")
    if [[ $b == sled ]]; then SENT_TOTAL_sled=$((SENT_TOTAL_sled + sent)); else SENT_TOTAL_postgres=$((SENT_TOTAL_postgres + sent)); fi
    [[ $rec == 1 ]] && printf '%s\t%s\t%s\t%s\n' "$b" "$scenario" "$round" "$row" >>"$OUT/summary.tsv"
    kill -0 "${FG_PID[$b]}" 2>/dev/null || die "flowgate ($b) died; see $OUT/$b.stderr"
    sleep 1
}

# Waits until the backend's recorder wrote `expected` runs, or for `max` seconds, or until it
# stops moving for 30 s (one batch of a long backlog may take seconds: the count moves by
# whole batches); prints the seconds it waited.
wait_recorded() { # backend expected max
    local start now n last=-1 still=0
    start=$(date +%s.%N)
    while :; do
        n=$(metric "$1" flowgate_runs_recorded_total)
        n=${n%.*}
        ((n >= $2)) && break
        if ((n == last)); then
            still=$((still + 1))
            ((still >= 300)) && break
        else still=0; fi
        last=$n
        now=$(date +%s.%N)
        awk -v a="$start" -v b="$now" -v m="$3" 'BEGIN { exit !(b - a > m) }' && break
        sleep 0.1
    done
    now=$(date +%s.%N)
    awk -v a="$start" -v b="$now" 'BEGIN { printf "%.1f", b - a }'
}
recorded() { local n; n=$(metric "$1" flowgate_runs_recorded_total); echo "${n%.*}"; }
sent_total() { if [[ $1 == sled ]]; then echo $((SENT_TOTAL_sled + 1)); else echo $((SENT_TOTAL_postgres + 1)); fi; }

{
    echo "flowgate PostgreSQL benchmark $STAMP — commit $(git -C "$ROOT" rev-parse --short HEAD)"
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); load before: $(uptime | sed 's/.*load average: //')"
    echo "PostgreSQL: $(psql "$DB_URL" -X -A -t -c 'SHOW server_version') on $(sed -E 's|^postgres://([^@]*@)?||; s|/.*||' <<<"$DB_URL"), schema $SCHEMA"
    echo "load: $TOOL, POST /v1/chat/completions, $CONNS connections, ${DURATION}s per run; flowgate server.workers $WORKERS, recorder flush 200 ms"
    echo "NOTE: the load tool, the upstream, both flowgates and PostgreSQL share these cores."
} | tee -a "$REPORT"

# 4. Throughput rounds, sled then PostgreSQL in each. Before each, the backend's recorder
#    catches up (at most 120 s) so that no backlog disturbs the next run; after it, the
#    writer is timed from the warm-up's start to the last run written (runs = the warm-up's
#    and the run's; the two 1 s pauses of load() taken out).
for ((round = 1; round <= ROUNDS; round++)); do
    for b in sled postgres; do
        for o in sled postgres; do wait_recorded "$o" "$(sent_total "$o")" 120 >/dev/null; done
        r0=$(recorded "$b")
        t0=$(date +%s.%N)
        load "$b" warmup "$round" "$WARMUP" 0
        load "$b" throughput "$round" "$DURATION" 1
        expected=$(sent_total "$b")
        waited=$(wait_recorded "$b" "$expected" 120)
        t1=$(date +%s.%N)
        r1=$(recorded "$b")
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$b" "$round" "$((r1 - r0))" \
            "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a - 2 }')" "$waited" \
            "$((expected - r1))" >>"$OUT/written.tsv"
    done
done
for o in sled postgres; do wait_recorded "$o" "$(sent_total "$o")" 120 >/dev/null; done
if [[ $TOOL == oha ]]; then
    for b in sled postgres; do load "$b" rate 1 "$DURATION" 1; done
fi
for b in sled postgres; do curl -sS "${FG_URL[$b]}/metrics" >"$OUT/metrics-$b.txt"; done

# 5. The report.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v b="$1" -v s="$2" -v c="$3" '$1 == b && $2 == s { print $c }' "$OUT/summary.tsv" | median; }
{
    echo
    printf '%-9s %-12s %10s %9s %9s %9s\n' backend scenario "req/s" "p50 ms" "p99 ms" "non-200"
    for s in throughput rate; do
        for b in sled postgres; do
            [[ $(col "$b" "$s" 4) == n/a ]] && continue
            printf '%-9s %-12s %10s %9s %9s %9s\n' "$b" "$s" "$(col "$b" "$s" 4)" "$(col "$b" "$s" 5)" \
                "$(col "$b" "$s" 6)" "$(awk -F'\t' -v b="$b" -v s="$s" '$1 == b && $2 == s { n += $8 } END { print n + 0 }' "$OUT/summary.tsv")"
        done
    done
    echo "(throughput: median of $ROUNDS rounds, each round's runs in $OUT/summary.tsv; rate: $RATE req/s with latency correction)"
    echo
    echo "runs written (warm-up + throughput run): from the load's start to the last run on disk"
    while IFS=$'\t' read -r b round written secs waited behind; do
        printf '  %-9s round %s: %6s runs in %6.2f s (%s s after the load) = %6.0f runs/s sustained%s\n' \
            "$b" "$round" "$written" "$secs" "$waited" "$(awk -v w="$written" -v s="$secs" 'BEGIN { print (s > 0 ? w / s : 0) }')" \
            "$( ((behind > 0)) && echo "; still $behind runs behind after 120 s")"
    done <"$OUT/written.tsv"
    for b in sled postgres; do
        awk -v b="$b" '
            $1 == "flowgate_runs_recorded_total" { n = $2 }
            $1 == "flowgate_recorder_write_seconds_sum" { s = $2 }
            $1 == "flowgate_recorder_errors_total" { e = $2 }
            END { printf "  %-9s writer busy %.2f s for %d runs: %.0f runs per second of writing; write errors %d\n", b, s, n, (s > 0 ? n / s : 0), e }' \
            "$OUT/metrics-$b.txt"
    done
    echo "load after: $(uptime | sed 's/.*load average: //')"
} | tee -a "$REPORT"
