#!/usr/bin/env bash
# flowgate memory and disk soak: BENCH_REQUESTS (1,000,000) requests of mixed traffic through
# flowgate (plain and streamed answers, cache hits, upstream errors, structured outputs, over
# 20 agents, every prompt but the cached ones different) against the zero-latency mock
# upstream, printing flowgate's RSS and its data directory's size every BENCH_EVERY (100,000)
# requests. Run by hand: `bash bench/memory.sh`. See bench/README.md ("Memory and disk").
#
# Knobs (environment variables):
#   BENCH_REQUESTS=1000000   requests sent in all
#   BENCH_EVERY=100000       a line of figures each time this many more were answered
#   BENCH_CONNECTIONS=32     connections of the load tool (wrk, one thread)
#   BENCH_MAX_DISK_MB=       [recorder] max_disk_mb of flowgate (empty: keep every run)
#   BENCH_SLED_CACHE_MB=     [storage] sled_cache_mb of flowgate (empty: its default)
#   BENCH_MIX="55 15 15 5 10"  per 100 requests: plain, streamed, cached, errors, structured
#   BENCH_SKIP_BUILD=0       1: use the existing target/release binaries
#   BENCH_BIN_DIR=           prebuilt flowgate and flowgate-mock-upstream (default: target/release)
#   BENCH_KEEP_TMP=0         1: keep the temp dir (flowgate's data) after the run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUESTS=${BENCH_REQUESTS:-1000000}
EVERY=${BENCH_EVERY:-100000}
CONNS=${BENCH_CONNECTIONS:-32}
MAX_DISK_MB=${BENCH_MAX_DISK_MB:-}
SLED_CACHE_MB=${BENCH_SLED_CACHE_MB:-}
# shellcheck disable=SC2034 # SKIP_BUILD, BIN_DIR and PIDS are read by bench/lib.sh
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BIN_DIR=${BENCH_BIN_DIR:-}
read -r MIX_PLAIN MIX_STREAM MIX_CACHE MIX_ERROR MIX_STRUCT <<<"${BENCH_MIX:-55 15 15 5 10}"
((MIX_PLAIN + MIX_STREAM + MIX_CACHE + MIX_ERROR + MIX_STRUCT == 100)) ||
    { echo "BENCH_MIX must add up to 100: $BENCH_MIX" >&2; exit 2; }
KEEP_TMP=${BENCH_KEEP_TMP:-0}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/memory-$STAMP
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flowgate-memory.XXXXXX")
REPORT=$OUT/report.txt
UP_PID="" FG_PID="" LOAD_PID=""
# shellcheck disable=SC2034 # read by bench/lib.sh
PIDS=()
# log, die, stop_pid, ensure_binaries, start_mock, start_flowgate, metric (bench/lib.sh).
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_pid "$LOAD_PID" wrk 5
    stop_pid "$FG_PID" flowgate 40
    stop_pid "$UP_PID" mock-upstream 10
    if [[ $KEEP_TMP == 1 ]]; then echo "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    echo "raw output: $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in wrk curl; do command -v $tool >/dev/null || apt_install $tool; done
ensure_binaries
start_mock

DATA=$TMP/flowgate-data # start_flowgate's
PROXY_WORKERS=1
more_toml='# Every request to it fails upstream with a 400 (not retried, no fallback).
[models."bench-error"]
providers = [{ provider = "upstream", model = "gpt-4o-mini;status=400", input_per_mtok = 0.15, output_per_mtok = 0.60 }]'
[[ -n $SLED_CACHE_MB ]] && more_toml+=$'\n\n[storage]\nsled_cache_mb = '"$SLED_CACHE_MB"
start_flowgate bench-model "${MAX_DISK_MB:+max_disk_mb = $MAX_DISK_MB}" "$more_toml" || die "$FG_ERROR"

# One wrk thread; per 100 requests (by default): 55 plain, 15 streamed, 15 cacheable (50
# prompts, so nearly all hits), 5 upstream errors, 10 structured outputs (json_schema).
# Agents cycle over 20 names; every other prompt carries the request's number, so no two
# are alike.
B1=$MIX_PLAIN B2=$((MIX_PLAIN + MIX_STREAM)) B3=$((MIX_PLAIN + MIX_STREAM + MIX_CACHE))
B4=$((B3 + MIX_ERROR))
echo "local bounds = { $B1, $B2, $B3, $B4 }" >"$TMP/mixed.lua"
cat >>"$TMP/mixed.lua" <<'EOF'
local n = 0
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer bench" }
local schema = '{"type":"json_schema","json_schema":{"name":"person","strict":true,"schema":'
    .. '{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},'
    .. '"required":["name","age"],"additionalProperties":false}}}'
request = function()
    n = n + 1
    local k = n % 100
    local agent = "agent-" .. (n % 20)
    local prompt = "Hello, request number " .. n .. ", please answer briefly"
    local model, extra = agent .. "/bench-model", ""
    if k < bounds[1] then
    elseif k < bounds[2] then
        extra = ',"stream":true'
    elseif k < bounds[3] then
        prompt = "A cached question, number " .. (n % 50)
        extra = ',"use_cache":"always"'
    elseif k < bounds[4] then
        model = agent .. "/bench-error"
    else
        prompt = "Extract the person: Ada Lovelace, 36 (" .. n .. ")"
        extra = ',"response_format":' .. schema
    end
    local body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"'
        .. prompt .. '"}]' .. extra .. '}'
    return wrk.format("POST", "/v1/chat/completions", headers, body)
end
EOF

requests_answered() { # the sum of flowgate_requests_total over its labels
    curl -sf "$FG_URL/metrics" | awk '/^flowgate_requests_total/ { s += $NF } END { printf "%d", s }'
}
rss_mb() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$FG_PID/status"; }
hwm_mb() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$FG_PID/status"; }
# du may find a file gone between listing and reading it (retention, sled's cleaning): the
# size it read is kept, never a failure that would end the soak under `set -e`.
data_mb() { { du -sm "$DATA" 2>/dev/null || true; } | awk '{ v = $1 } END { print v + 0 }'; }
# read_data: sets DATA_NOW to the data directory's size and keeps the largest in MAX_DATA.
MAX_DATA=0
read_data() {
    DATA_NOW=$(data_mb)
    if ((DATA_NOW > MAX_DATA)); then MAX_DATA=$DATA_NOW; fi
}
cpu_s() { awk '{ printf "%.1f", ($14 + $15) / 100 }' "/proc/$FG_PID/stat"; }

log "flowgate memory soak, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(git -C "$ROOT" rev-parse --short HEAD)"
log "mix per 100 requests: $MIX_PLAIN plain, $MIX_STREAM streamed, $MIX_CACHE cache hits (50 prompts), $MIX_ERROR upstream errors, $MIX_STRUCT structured; 20 agents"
log "config: max_disk_mb=${MAX_DISK_MB:-unbounded} sled_cache_mb=${SLED_CACHE_MB:-default} connections=$CONNS"
log "$(printf '%10s %8s %8s %9s %9s %8s %8s' requests rss_MB hwm_MB data_MB queue cpu_s req/s)"
log "$(printf '%10s %8s %8s %9s %9s %8s %8s' 0 "$(rss_mb)" "$(hwm_mb)" "$(data_mb)" 0 "$(cpu_s)" -)"

# wrk runs until killed; the loop below stops it once REQUESTS were answered.
wrk -t1 -c"$CONNS" -d3600s --latency -s "$TMP/mixed.lua" "$FG_URL" >"$OUT/wrk.txt" 2>&1 &
LOAD_PID=$!
next=$EVERY
first_rss="" last_t=$(date +%s.%N) last_n=0
# The data directory's largest size (MAX_DATA), read about every 2 s and at each line printed.
polls=0
while :; do
    sleep 0.5
    polls=$((polls + 1))
    if ((polls % 4 == 0)); then read_data; fi
    kill -0 "$FG_PID" 2>/dev/null || die "flowgate exited (see $OUT/flowgate.stderr)"
    kill -0 "$LOAD_PID" 2>/dev/null || die "wrk exited early: $(cat "$OUT/wrk.txt")"
    n=$(requests_answered)
    if ((n >= next)); then
        now=$(date +%s.%N)
        rate=$(awk -v a="$n" -v b="$last_n" -v t="$now" -v s="$last_t" 'BEGIN { printf "%.0f", (a - b) / (t - s) }')
        rss=$(rss_mb)
        [[ -n $first_rss ]] || first_rss=$rss
        read_data
        log "$(printf '%10s %8s %8s %9s %9s %8s %8s' "$n" "$rss" "$(hwm_mb)" "$DATA_NOW" \
            "$(metric flowgate_recorder_queue_depth)" "$(cpu_s)" "$rate")"
        last_t=$now last_n=$n
        while ((next <= n)); do next=$((next + EVERY)); done
    fi
    ((n >= REQUESTS)) && break
done
stop_pid "$LOAD_PID" wrk 5
LOAD_PID=""
sleep 2
rss=$(rss_mb)
log "$(printf '%10s %8s %8s %9s %9s %8s %8s' "$(requests_answered)" "$rss" "$(hwm_mb)" "$(data_mb)" \
    "$(metric flowgate_recorder_queue_depth)" "$(cpu_s)" "(idle)")"
log ""
log "RSS: first sample ${first_rss} MB, last ${rss} MB, peak $(hwm_mb) MB (target <= 150 MB, growth < 10%)"
log "growth first -> last: $(awk -v a="$first_rss" -v b="$rss" 'BEGIN { printf "%+.1f%%", (b - a) * 100 / a }')"
read_data
bound="no bound"
if [[ -n $MAX_DISK_MB ]]; then
    bound="bound ${MAX_DISK_MB} MB: $( ((MAX_DATA <= MAX_DISK_MB)) && echo PASS || echo FAIL)"
fi
log "data dir: largest ${MAX_DATA} MB (read about every 2 s), at the end ${DATA_NOW} MB; $bound"
log "runs recorded: $(metric flowgate_runs_recorded_total)  pruned by retention: $(metric flowgate_runs_pruned_total)  recorder errors: $(metric flowgate_recorder_errors_total)"
log "responses by status:"
curl -sf "$FG_URL/metrics" | awk '/^flowgate_requests_total/ { match($0, /status="[^"]*"/); s[substr($0, RSTART + 8, RLENGTH - 9)] += $NF } END { for (k in s) printf "  %s: %d\n", k, s[k] }' | sort | tee -a "$REPORT"
curl -sf "$FG_URL/metrics" >"$OUT/metrics.txt" || true
