#!/usr/bin/env bash
# flowgate proxy-overhead benchmark: the same chat-completions load against the mock upstream
# directly, through nginx, and through flowgate (which records every run, as in production).
# Run by hand from anywhere: `bash bench/run.sh`. See bench/README.md for how to read it.
#
# Knobs (environment variables):
#   BENCH_DURATION=10        seconds per measured run
#   BENCH_WARMUP=2           seconds of warm-up before each throughput run (not reported)
#   BENCH_CONNECTIONS=64     concurrent connections of the load tool
#   BENCH_RATE=1000          requests/s of the fixed-rate (latency) scenario
#   BENCH_PROXY_WORKERS=1    nginx worker_processes and flowgate server.workers
#   BENCH_TOOL=auto          auto | oha | wrk (wrk cannot pace requests: no fixed-rate scenario)
#   BENCH_SKIP_BUILD=0       1: use the existing target/release binaries
#   BENCH_BIN_DIR=           a folder with flowgate and flowgate-mock-upstream to use instead
#                            of the checkout's target/release (nothing is built)
#   BENCH_KEEP_TMP=0         1: keep the temp dir (configs, flowgate's sled data) after the run
#   BENCH_IDLE_WAIT=120      seconds to wait for other programs to leave the CPU before the load
#   BENCH_SCENARIOS="throughput rate stream ttft"   which scenarios to run
#   BENCH_TTFT_PACING="chunk_delay_ms=5"   ttft: the mock upstream's directives for its streams
#                            (a pause between chunks; add `;chunk_chars=1` for a chunk per character)
#   BENCH_ROUNDS=3           throughput rounds (direct, nginx, flowgate in turn); the verdict
#                            uses the median over rounds of flowgate/nginx in the same round
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-64}
RATE=${BENCH_RATE:-1000}
PROXY_WORKERS=${BENCH_PROXY_WORKERS:-1}
TOOL=${BENCH_TOOL:-auto}
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
KEEP_TMP=${BENCH_KEEP_TMP:-0}
IDLE_WAIT=${BENCH_IDLE_WAIT:-120}
SCENARIOS=${BENCH_SCENARIOS:-throughput rate stream ttft}
TTFT_PACING=${BENCH_TTFT_PACING:-chunk_delay_ms=5}
ROUNDS=${BENCH_ROUNDS:-3}
BIN_DIR=${BENCH_BIN_DIR:-}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/$STAMP
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flowgate-bench.XXXXXX")
REPORT=$OUT/report.txt
SUMMARY=$OUT/summary.tsv

PIDS=()        # every long-running process this script started
UP_PID="" NGX_PID="" FG_PID=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # flowgate first (it drains its recorder on SIGTERM), then the proxy, then the upstream.
    stop_pid "$FG_PID" flowgate 40
    stop_pid "$NGX_PID" nginx 10
    stop_pid "$UP_PID" mock-upstream 10
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid" "pid $pid" 5; done
    if [[ $KEEP_TMP == 1 ]]; then
        echo "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    echo "raw output (load-tool JSON, logs, configs, report): $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# 1. Tools.
# ---------------------------------------------------------------------------------------------
ensure_tools

# ---------------------------------------------------------------------------------------------
# 2. Build.
# ---------------------------------------------------------------------------------------------
cd "$ROOT"
ensure_binaries
if [[ " $SCENARIOS " == *" ttft "* ]]; then
    ensure_ttft
fi

# ---------------------------------------------------------------------------------------------
# 3. Processes.
# ---------------------------------------------------------------------------------------------
start_mock
start_nginx || {
    cat "$OUT/nginx.stderr" "$OUT/nginx-error.log" >&2 2>/dev/null || true
    die "nginx did not start (see $OUT/nginx-error.log)"
}
# The ttft scenario's model: the same upstream model, paced (the mock's directives ride in the
# model string), so that the first token and the end of a stream are apart.
PACED_UPSTREAM="gpt-4o-mini;$TTFT_PACING"
start_flowgate bench-model "" "[models.\"bench-paced\"]
providers = [{ provider = \"upstream\", model = \"$PACED_UPSTREAM\", input_per_mtok = 0.15, output_per_mtok = 0.60 }]" ||
    die "$FG_ERROR"

# ---------------------------------------------------------------------------------------------
# 4. Requests.
# ---------------------------------------------------------------------------------------------
PATH_CC=/v1/chat/completions
body() { # model stream(true|false)
    if [[ $2 == true ]]; then
        printf '{"model":"%s","messages":[{"role":"user","content":"Hello, benchmark"}],"stream":true}' "$1"
    else
        printf '{"model":"%s","messages":[{"role":"user","content":"Hello, benchmark"}]}' "$1"
    fi
}
declare -A URL=([direct]=$UP_URL [nginx]=$NGX_URL [flowgate]=$FG_URL)
declare -A MODEL=([direct]=gpt-4o-mini [nginx]=gpt-4o-mini [flowgate]=bench-model)
declare -A PACED=([direct]=$PACED_UPSTREAM [flowgate]=bench-paced)

check_flowgate_alive() {
    if ! kill -0 "$FG_PID" 2>/dev/null; then
        local rc=0
        wait "$FG_PID" || rc=$?
        FG_PID=""
        tail -n 40 "$OUT/flowgate.stderr" | tee -a "$REPORT"
        die "flowgate died during the benchmark (exit status $rc); log: $OUT/flowgate.stderr"
    fi
}
# After every run: all three servers must still be up. (On Ctrl-C they all get SIGINT, while
# oha catches it and exits normally, so bash would otherwise carry on with the next run.)
check_servers_alive() {
    local dead=()
    kill -0 "$UP_PID" 2>/dev/null || dead+=(mock-upstream)
    kill -0 "$NGX_PID" 2>/dev/null || dead+=(nginx)
    kill -0 "$FG_PID" 2>/dev/null || dead+=(flowgate)
    if ((${#dead[@]} >= 2)); then
        die "${dead[*]} have stopped (interrupted?)"
    fi
    if ((${#dead[@]} > 0)); then
        check_flowgate_alive
        die "${dead[*]} stopped during the benchmark (see $OUT/*.stderr, $OUT/nginx-error.log)"
    fi
}

# Smoke test: one request per target and mode, must be 200; responses are kept.
smoke() { # target stream
    local t=$1 s=$2 code
    code=$(curl -sS --max-time 10 -o "$OUT/smoke-$t-stream_$s.body" -D "$OUT/smoke-$t-stream_$s.headers" \
        -w '%{http_code}' -H 'Authorization: Bearer bench' -H 'Content-Type: application/json' \
        --data-binary "$(body "${MODEL[$t]}" "$s")" "${URL[$t]}$PATH_CC") || code=000
    if [[ $code != 200 ]]; then
        head -c 2000 "$OUT/smoke-$t-stream_$s.body" >&2 || true
        die "smoke request to $t (stream=$s) answered HTTP $code"
    fi
    if [[ $s == true ]] && ! grep -q 'data: \[DONE\]' "$OUT/smoke-$t-stream_$s.body"; then
        die "smoke stream from $t has no 'data: [DONE]' (see $OUT/smoke-$t-stream_$s.body)"
    fi
}
for t in direct nginx flowgate; do smoke "$t" false; done
for t in direct flowgate; do smoke "$t" true; done
wait_recorder 2
RECORDED_BASE=$RECORDED

# The wrk fallback's request script: POST with the body from the environment, summary as JSON.
cat >"$TMP/wrk.lua" <<'EOF'
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non2xx3xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
EOF

# CPU accounting: every run records the CPU time used by the upstream, nginx, flowgate and the
# load tool, and by the whole machine, so that interference (from the other servers, flowgate's
# recorder catching up, or anything else running on the machine) is visible.
snapshot() { # prefix -> sets ${prefix}_{BUSY,TOTAL,UP,NGX,FG,KIDS}
    machine_ticks "$1"
    printf -v "${1}_UP" '%s' "$(proc_ticks "$UP_PID")"
    printf -v "${1}_NGX" '%s' "$(proc_ticks "${NGX_PIDS[@]}")"
    printf -v "${1}_FG" '%s' "$(proc_ticks "$FG_PID")"
    children_us "${1}_KIDS" # microseconds
}

FG_SENT=0 # requests the load tool sent to flowgate (warm-ups included)
printf 'target\tscenario\trps_ok\tp50_ms\tp99_ms\tsent\tok_200\tnon_200\terrors\tupstream_us_per_req\tproxy_us_per_req\tloadtool_us_per_req\tother_cpu_pct\tmachine_busy_pct\tflowgate_cpu_s\n' >"$SUMMARY"

# flowgate_sent N: counts N more requests sent to flowgate, then lets the recorder catch up so
# that its backlog does not eat into the next run's CPU.
flowgate_sent() {
    FG_SENT=$((FG_SENT + $1))
    wait_recorder $((RECORDED_BASE + FG_SENT))
    echo "    flowgate recorder: $((RECORDED - RECORDED_BASE))/$FG_SENT runs recorded (waited ${RECORDER_WAIT}s)" >&2
}

# load NAME TARGET SCENARIO(throughput|rate|stream) SECONDS [record(1|0)]
# Runs the load tool; writes $OUT/NAME.{json,txt}; appends a row to summary.tsv when record=1.
load() {
    local name=$1 t=$2 scenario=$3 secs=$4 rec=${5:-1}
    local stream=false url body_s row cpu
    [[ $scenario == stream ]] && stream=true
    url=${URL[$t]}$PATH_CC
    body_s=$(body "${MODEL[$t]}" "$stream")
    echo "  $name: $t, $scenario, ${secs}s, $CONNS connections$([[ $scenario == rate ]] && echo ", $RATE req/s")" >&2
    if [[ $TOOL == wrk && $scenario == rate ]]; then
        echo "    skipped: wrk cannot pace requests at a fixed rate (install oha)" >&2
        [[ $rec == 1 ]] && printf '%s\t%s\tn/a\tn/a\tn/a\t0\t0\t0\t0\tn/a\tn/a\tn/a\tn/a\tn/a\tn/a\n' "$t" "$scenario" >>"$SUMMARY"
        return 0
    fi
    snapshot A
    if [[ $TOOL == oha ]]; then
        local extra=()
        [[ $scenario == rate ]] && extra=(-q "$RATE" --latency-correction)
        oha --no-tui "${OHA_JSON_FLAG[@]}" -z "${secs}s" -c "$CONNS" -w "${extra[@]}" \
            -m POST -H 'Authorization: Bearer bench' -T application/json -d "$body_s" \
            "$url" >"$OUT/$name.json" 2>"$OUT/$name.stderr" || die "oha failed for $name: $(cat "$OUT/$name.stderr")"
        snapshot B
        row=$(jq -r --arg t "$t" --arg s "$scenario" '
            (.statusCodeDistribution // {}) as $sc | (.errorDistribution // {}) as $ed
            | ([$sc[]] | add // 0) as $resp | ([$ed[]] | add // 0) as $errs
            | ($sc["200"] // 0) as $ok
            | [$t, $s,
               (if .summary.total > 0 then $ok / .summary.total else 0 end | floor),
               ((.latencyPercentiles.p50 // 0) * 1000 * 1000 | round / 1000),
               ((.latencyPercentiles.p99 // 0) * 1000 * 1000 | round / 1000),
               ($resp + $errs), $ok, ($resp - $ok), $errs] | @tsv' "$OUT/$name.json")
    else
        BENCH_BODY=$body_s wrk -t 2 -c "$CONNS" -d "${secs}s" --latency -s "$TMP/wrk.lua" "$url" \
            >"$OUT/$name.txt" 2>&1 || die "wrk failed for $name: $(tail -5 "$OUT/$name.txt")"
        snapshot B
        grep '^WRKJSON ' "$OUT/$name.txt" | sed 's/^WRKJSON //' >"$OUT/$name.json"
        row=$(jq -r --arg t "$t" --arg s "$scenario" '
            (.connect + .read + .write + .timeout) as $errs
            | [$t, $s, ((.requests - .non2xx3xx) / (.duration_us / 1e6) | floor),
               (.p50_us / 1000), (.p99_us / 1000),
               .requests, (.requests - .non2xx3xx), .non2xx3xx, $errs] | @tsv' "$OUT/$name.json")
    fi
    # CPU per request (µs) of the upstream, the proxy under test and the load tool; the share of
    # the machine's busy CPU used by none of them (kernel softirq for loopback, other programs).
    cpu=$(awk -v hz="$CLK_TCK" -v t="$t" -v sent="$(cut -f6 <<<"$row")" \
        -v busy=$((B_BUSY - A_BUSY)) -v total=$((B_TOTAL - A_TOTAL)) \
        -v up=$((B_UP - A_UP)) -v ngx=$((B_NGX - A_NGX)) -v fg=$((B_FG - A_FG)) \
        -v kids=$((B_KIDS - A_KIDS)) 'BEGIN {
            n = (sent > 0) ? sent : 1
            up_s = up / hz; ngx_s = ngx / hz; fg_s = fg / hz; oha_s = kids / 1e6; busy_s = busy / hz
            proxy = (t == "nginx") ? sprintf("%.1f", ngx_s * 1e6 / n) : (t == "flowgate") ? sprintf("%.1f", fg_s * 1e6 / n) : "-"
            other = busy_s - up_s - ngx_s - fg_s - oha_s; if (other < 0) other = 0
            printf "%.1f\t%s\t%.1f\t%.0f\t%.0f\t%.2f", up_s * 1e6 / n, proxy, oha_s * 1e6 / n,
                (busy_s > 0 ? 100 * other / busy_s : 0), (total > 0 ? 100 * busy / total : 0), fg_s }')
    row="$row"$'\t'"$cpu"
    check_servers_alive
    [[ $t == flowgate ]] && flowgate_sent "$(cut -f6 <<<"$row")"
    [[ $rec == 1 ]] && printf '%s\n' "$row" >>"$SUMMARY"
    sleep 1
}

# ttft NAME TARGET: streamed requests at $RATE req/s (open loop) by flowgate-ttft, each timed
# to its first content token and to its end; appends a row to ttft.tsv.
TTFT_TSV=$OUT/ttft.tsv
printf 'target\tsent\tok\tfailed\tskipped\tfirst_p50_ms\tfirst_p99_ms\tend_p50_ms\tend_p99_ms\tsend_lag_p99_ms\tproxy_us_per_req\n' >"$TTFT_TSV"
ttft() {
    local name=$1 t=$2 row sent_all proxy
    echo "  $name: $t, streamed, ${DURATION}s at $RATE req/s (+${WARMUP}s warm-up), upstream paced by $TTFT_PACING" >&2
    snapshot A
    "$TTFT" --url "${URL[$t]}" --model "${PACED[$t]}" --rate "$RATE" --duration "$DURATION" \
        --warmup "$WARMUP" >"$OUT/$name.json" 2>"$OUT/$name.stderr" ||
        die "flowgate-ttft failed for $name: $(tail -3 "$OUT/$name.stderr")"
    snapshot B
    check_servers_alive
    row=$(jq -r --arg t "$t" '[$t, .sent, .ok, ([.failures[]] | add // 0), .skipped,
        .first_token_ms.p50, .first_token_ms.p99, .end_ms.p50, .end_ms.p99, .send_lag_ms.p99] | @tsv' "$OUT/$name.json")
    sent_all=$(jq -r '.sent_with_warmup' "$OUT/$name.json")
    proxy="-"
    if [[ $t == flowgate ]]; then
        proxy=$(awk -v hz="$CLK_TCK" -v fg=$((B_FG - A_FG)) -v n="$sent_all" \
            'BEGIN { printf "%.1f", (n > 0) ? fg / hz * 1e6 / n : 0 }')
        flowgate_sent "$sent_all"
    fi
    printf '%s\t%s\n' "$row" "$proxy" >>"$TTFT_TSV"
    sleep 1
}

# ---------------------------------------------------------------------------------------------
# 5. Scenarios.
# ---------------------------------------------------------------------------------------------
# Wait (up to BENCH_IDLE_WAIT seconds) for the machine to be quiet: with 2 cores, a compile
# running beside the benchmark halves every figure.
wait_idle "$IDLE_WAIT"
GIT_REV=$(git_revision)
{
    echo "flowgate benchmark $STAMP — commit $GIT_REV"
    echo "machine: $(machine_description)"
    echo "NOTE: the load tool, the mock upstream, nginx and flowgate all share these cores, so"
    echo "      every figure includes CPU contention; compare the targets with each other, not"
    echo "      with production numbers."
    echo "load tool: $($TOOL --version 2>&1 | head -1); proxy: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
    echo "upstream: flowgate-mock-upstream, 1 worker thread, no recording, zero delay ($UP_URL)"
    echo "nginx: worker_processes $PROXY_WORKERS, upstream keepalive 256, access_log off ($NGX_URL)"
    echo "flowgate: server.workers $PROXY_WORKERS (plus its recorder/sled threads), runs recorded to sled ($FG_URL)"
    echo "          the request has no temperature 0, so flowgate's in-flight coalescing never applies"
    echo "machine CPU busy over 2 s before the load (servers idle): ${IDLE_BUSY}%$(
        awk -v b="$IDLE_BUSY" 'BEGIN { if (b > 10) print "  WARNING: something else is using the CPU; figures will be disturbed" }')"
    echo "load: POST $PATH_CC, $CONNS connections, ${DURATION}s per run (+${WARMUP}s warm-up before each"
    echo "      throughput run); $(if [[ $TOOL == oha ]]; then echo "fixed-rate runs use -q $RATE with latency correction"; else echo "no fixed-rate runs with wrk"; fi)"
} | tee -a "$REPORT"
echo

if [[ " $SCENARIOS " == *" throughput "* ]]; then
    # Rounds, each target in turn: the machine's speed drifts (other tenants of the host), and
    # a ratio taken within one round and then the median over rounds is robust to that drift.
    for ((round = 1; round <= ROUNDS; round++)); do
        echo "scenario: max throughput, round $round of $ROUNDS" >&2
        for t in direct nginx flowgate; do
            load "warmup-$t-r$round" "$t" throughput "$WARMUP" 0
            load "throughput-$t-r$round" "$t" throughput "$DURATION"
        done
    done
fi
if [[ " $SCENARIOS " == *" rate "* ]]; then
    echo "scenario: fixed rate $RATE req/s" >&2
    for t in direct nginx flowgate; do
        load "rate-$t" "$t" rate "$DURATION"
    done
fi
if [[ " $SCENARIOS " == *" stream "* ]]; then
    echo "scenario: streaming throughput" >&2
    for t in direct flowgate; do
        load "warmup-stream-$t" "$t" stream "$WARMUP" 0
        load "stream-$t" "$t" stream "$DURATION"
    done
fi
if [[ " $SCENARIOS " == *" ttft "* ]]; then
    echo "scenario: time to first token, streamed, $RATE req/s" >&2
    for t in direct flowgate; do
        ttft "ttft-$t" "$t"
    done
fi

# ---------------------------------------------------------------------------------------------
# 6. Results.
# ---------------------------------------------------------------------------------------------
wait_recorder $((RECORDED_BASE + FG_SENT))
RECORDED_LOAD=$((RECORDED - RECORDED_BASE))
curl -sS --max-time 5 "$FG_URL/metrics" >"$OUT/flowgate-metrics.txt" || true
RECORDER_ERRORS=$(awk '$1 == "flowgate_recorder_errors_total" { print $2 }' "$OUT/flowgate-metrics.txt")

values() { # target scenario column-number -> one value per run (round), in order
    awk -F'\t' -v t="$1" -v s="$2" -v c="$3" '$1 == t && $2 == s { print $c }' "$SUMMARY"
}
field() { values "$@" | median; } # target scenario column-number -> median over rounds
round_ratios() { # column-number -> flowgate/nginx throughput of each round
    paste <(values flowgate throughput "$1") <(values nginx throughput "$1") |
        awk '{ if ($2 + 0 == 0 || $1 == "n/a") print "n/a"; else printf "%.2f\n", $1 / $2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0 || a == "n/a") print "n/a"; else printf "%.2f", a / b }'; }
minus() { # a b -> a - b in ms, n/a when either is missing
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || a == "" || b == "n/a" || b == "") print "n/a"; else printf "%.3f", a - b }'
}
verdict() { # value op target
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        if (v == "n/a" || v == "") { print "n/a"; exit }
        ok = (op == ">=") ? (v + 0 >= t + 0) : (op == "<=") ? (v + 0 <= t + 0) : (v + 0 < t + 0)
        print ok ? "PASS" : "FAIL" }'
}

{
    echo
    printf '%-9s %-10s %8s %8s %8s %8s %8s %7s %6s | %8s %8s %8s | %6s %5s\n' \
        target scenario "req/s" "p50 ms" "p99 ms" sent "200" non-200 errors "upstr" proxy "load" other busy
    printf '%s\n' "------------------------------------------------------------------------------+----------------------------+-------------"
    tail -n +2 "$SUMMARY" | while IFS=$'\t' read -r t s rps p50 p99 sent ok non errs up px lt oth busy _; do
        mark=" "
        [[ $oth != n/a ]] && ((${oth%.*} > 15)) && mark="!"
        [[ $oth == n/a ]] || oth+=%
        [[ $busy == n/a ]] || busy+=%
        printf '%-9s %-10s %8s %8s %8s %8s %8s %7s %6s | %8s %8s %8s | %6s %5s %s\n' \
            "$t" "$s" "$rps" "$p50" "$p99" "$sent" "$ok" "$non" "$errs" "$up" "$px" "$lt" "$oth" "$busy" "$mark"
    done
    if awk -F'\t' 'NR > 1 && $13 != "n/a" && $13 + 0 > 15 { found = 1 } END { exit !found }' "$SUMMARY"; then
        echo "! other > 15%: CPU went to programs outside the benchmark during this run; its figures"
        echo "  are disturbed (on a quiet machine other stays near 0%). Rerun when the machine is idle."
    fi
    echo "req/s counts 200 responses only; latencies are end-to-end, to the last byte of the body."
    echo "upstr/proxy/load: CPU microseconds per request used by the mock upstream, the proxy under"
    echo "test and the load tool; other: share of the busy CPU used by none of them (kernel loopback"
    echo "work, other programs); busy: machine CPU utilisation during the run."
    echo
    TP_RATIO=$(round_ratios 3 | median)
    TP_ROUNDS=$(round_ratios 3 | paste -sd' ')
    TP_DIRECT=$(ratio "$(field flowgate throughput 3)" "$(field direct throughput 3)")
    NGX_DIRECT=$(ratio "$(field nginx throughput 3)" "$(field direct throughput 3)")
    ST_RATIO=$(ratio "$(field flowgate stream 3)" "$(field direct stream 3)")
    ADDED_P99=$(minus "$(field flowgate rate 5)" "$(field direct rate 5)")
    ADDED_P99_NGX=$(minus "$(field nginx rate 5)" "$(field direct rate 5)")
    ADDED_P50=$(minus "$(field flowgate rate 4)" "$(field direct rate 4)")
    SAT_P99=$(ratio "$(field flowgate throughput 5)" "$(field nginx throughput 5)")
    ttft_field() { awk -F'\t' -v t="$1" -v c="$2" 'NR > 1 && $1 == t { v = $c } END { print (v == "" ? "n/a" : v) }' "$TTFT_TSV"; }
    ADDED_TTFT=$(minus "$(ttft_field flowgate 7)" "$(ttft_field direct 7)")
    ADDED_TTFT_P50=$(minus "$(ttft_field flowgate 6)" "$(ttft_field direct 6)")
    # The targets are issue [15]'s (bench/README.md, "Targets").
    echo "flowgate rps / nginx rps (throughput):       $TP_RATIO   target >= 0.65: $(verdict "$TP_RATIO" '>=' 0.65)"
    echo "  median over $ROUNDS rounds (each round's ratio: $TP_ROUNDS); figures below are medians too"
    echo "flowgate p99 / nginx p99 (throughput):       $SAT_P99   target <= 2: $(verdict "$SAT_P99" '<=' 2)"
    echo "flowgate added p99 over direct @ $RATE rps:  $ADDED_P99 ms   target <= 0.5 ms: $(verdict "$ADDED_P99" '<=' 0.5)"
    echo "  for reference: flowgate added p50 @ $RATE rps $ADDED_P50 ms; nginx added p99 $ADDED_P99_NGX ms"
    echo "  for reference: flowgate/direct rps $TP_DIRECT, nginx/direct rps $NGX_DIRECT (throughput)"
    echo "flowgate stream rps / direct stream rps:     $ST_RATIO   target >= 0.5: $(verdict "$ST_RATIO" '>=' 0.5)"
    echo "flowgate added first-token p99 @ $RATE rps:  $ADDED_TTFT ms   target <= 0.5 ms: $(verdict "$ADDED_TTFT" '<=' 0.5)"
    echo "  for reference: added first-token p50 $ADDED_TTFT_P50 ms; direct first token p50/p99" \
        "$(ttft_field direct 6)/$(ttft_field direct 7) ms, end p99 $(ttft_field direct 9) ms;" \
        "flowgate $(ttft_field flowgate 6)/$(ttft_field flowgate 7) ms, end p99 $(ttft_field flowgate 9) ms," \
        "$(ttft_field flowgate 11) us CPU a stream; the tool's own send lag p99 $(ttft_field direct 10) and $(ttft_field flowgate 10) ms"
    echo "proxy CPU per request (throughput): flowgate $(field flowgate throughput 11) us, nginx $(field nginx throughput 11) us" \
        "(ratio $(round_ratios 11 | median))"
    FG_BG=$(awk -F'\t' 'NR > 1 && $1 != "flowgate" { s += $15 } END { printf "%.2f", s }' "$SUMMARY")
    echo "flowgate CPU during the other targets' runs (background work): ${FG_BG}s"
    echo
    echo "runs recorded by flowgate (flowgate_runs_recorded_total, load only): $RECORDED_LOAD"
    echo "requests the load tool sent to flowgate (all runs incl. warm-ups):   $FG_SENT"
    if [[ $TOOL == wrk ]]; then
        echo "  (wrk does not count requests in flight at each deadline: up to $CONNS per run go uncounted)"
    fi
    echo "flowgate_recorder_errors_total: ${RECORDER_ERRORS:-absent}; flowgate_cache_coalesced_total:" \
        "$(awk '$1 == "flowgate_cache_coalesced_total" { print $2 }' "$OUT/flowgate-metrics.txt")"
    echo "flowgate_requests_total by outcome:"
    grep '^flowgate_requests_total' "$OUT/flowgate-metrics.txt" | sed 's/^/  /' || echo "  (none)"
} | tee -a "$REPORT"

# Problems: non-200s, errors, flowgate warnings, exit status.
{
    echo
    awk -F'\t' 'NR > 1 && ($8 + 0 > 0 || $9 + 0 > 0) { print "non-200/errors: " $1 " " $2 ": " $8 " non-200, " $9 " errors" }' "$SUMMARY"
    awk -F'\t' 'NR > 1 && ($4 + 0 > 0 || $5 + 0 > 0) { print "ttft " $1 ": " $4 " failed, " $5 " not sent (too many in flight)" }' "$TTFT_TSV"
    for f in "$OUT"/ttft-*.json; do
        [[ -e $f ]] || continue
        jq -r --arg f "$(basename "$f")" '(.failures // {}) | to_entries[] | "  \($f): \(.key) x\(.value)"' "$f" 2>/dev/null || true
    done
    if [[ $TOOL == oha ]]; then
        for f in "$OUT"/*.json; do
            jq -r --arg f "$(basename "$f")" '
                ((.statusCodeDistribution // {}) | to_entries[] | select(.key != "200") | "  \($f): HTTP \(.key) x\(.value)"),
                ((.errorDistribution // {}) | to_entries[] | "  \($f): \(.key) x\(.value)")' "$f" 2>/dev/null || true
        done
    fi
    warns=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/flowgate.stderr" | grep -cE ' (WARN|ERROR) ' || true)
    echo "flowgate log: $warns WARN/ERROR lines ($OUT/flowgate.stderr)"
    if ((warns > 0)); then
        sed 's/\x1b\[[0-9;]*m//g' "$OUT/flowgate.stderr" | grep -E ' (WARN|ERROR) ' | head -n 10 | sed 's/^/  /'
    fi
} | tee -a "$REPORT"

check_flowgate_alive
fg_stop_start=$(date +%s.%N)
kill -TERM "$FG_PID"
for ((i = 0; i < 400; i++)); do
    kill -0 "$FG_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$FG_PID" 2>/dev/null; then
    log "PROBLEM: flowgate still running 40s after SIGTERM; sending SIGKILL"
    kill -KILL "$FG_PID" 2>/dev/null || true
fi
FG_RC=0
wait "$FG_PID" || FG_RC=$?
fg_stop_end=$(date +%s.%N)
FG_PID=""
log "flowgate stopped on SIGTERM with exit status $FG_RC after $(awk -v a="$fg_stop_start" -v b="$fg_stop_end" 'BEGIN { printf "%.1f", b - a }')s"
log "sled data dir after the run: $(du -sh "$TMP/flowgate-data" 2>/dev/null | cut -f1)"
