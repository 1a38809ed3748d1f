#!/usr/bin/env bash
# flowgate instructions per request, counted by callgrind: flowgate (the same config as
# bench/run.sh: one HTTP worker, every run recorded to sled) runs under
# `valgrind --tool=callgrind`, the mock upstream runs normally; for each scenario (a plain
# chat completion, then the same with "stream": true) it gets a warm-up, its counters are
# zeroed, it is sent BENCH_CG_REQUESTS requests at low concurrency, the recorder is let drain,
# and the counters are dumped: total Ir (instructions executed, all threads) / requests.
# Run by hand: `bash bench/callgrind.sh`. See bench/README.md ("Instructions per request").
#
# Knobs (environment variables):
#   BENCH_CG_REQUESTS=2000    measured requests per scenario
#   BENCH_CG_WARMUP=200       warm-up requests per scenario (not counted)
#   BENCH_CG_CONNECTIONS=4    connections of the load tool
#   BENCH_CG_SCENARIOS="plain stream"   which scenarios to run
#   BENCH_CG_START_TIMEOUT=120  seconds to wait for flowgate under valgrind to answer
#   BENCH_TOOL=auto           auto | oha | wrk (auto: oha if installed, else wrk from apt)
#   BENCH_SKIP_BUILD=0        1: use the existing target/release binaries
#   BENCH_BIN_DIR=            a folder with flowgate and flowgate-mock-upstream to use instead
#                             of the checkout's target/release (nothing is built)
#   BENCH_KEEP_TMP=0          1: keep the temp dir (config, flowgate's sled data) after the run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUESTS=${BENCH_CG_REQUESTS:-2000}
WARMUP=${BENCH_CG_WARMUP:-200}
CONNS=${BENCH_CG_CONNECTIONS:-4}
SCENARIOS=${BENCH_CG_SCENARIOS:-plain stream}
START_TIMEOUT=${BENCH_CG_START_TIMEOUT:-120}
TOOL=${BENCH_TOOL:-auto}
KEEP_TMP=${BENCH_KEEP_TMP:-0}
# shellcheck disable=SC2034 # SKIP_BUILD, BIN_DIR, PROXY_WORKERS and PIDS are read by bench/lib.sh
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BIN_DIR=${BENCH_BIN_DIR:-}
# shellcheck disable=SC2034
PROXY_WORKERS=1 # flowgate's server.workers, as in bench/run.sh

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/$STAMP-callgrind
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flowgate-callgrind.XXXXXX")
REPORT=$OUT/report.txt
CG_OUT=$OUT/callgrind.out # callgrind_control --dump writes $CG_OUT.1, .2, ...; exit: $CG_OUT
UP_PID="" FG_PID="" LOAD_PID=""
# shellcheck disable=SC2034 # read by bench/lib.sh
PIDS=()
# log, die, stop_pid, apt_install, ensure_binaries, start_mock, start_flowgate, wait_listening,
# metric, machine_description, git_revision (bench/lib.sh).
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_pid "$LOAD_PID" "load tool" 5
    # flowgate drains its recorder on SIGTERM; under valgrind it is slow, and callgrind then
    # writes its last dump ($CG_OUT).
    stop_pid "$FG_PID" "flowgate (valgrind)" 60
    stop_pid "$UP_PID" mock-upstream 10
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid" "pid $pid" 5; done
    if [[ $KEEP_TMP == 1 ]]; then echo "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    echo "raw output (report, callgrind dumps, top functions, logs, config): $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Tools and binaries. (Not lib.sh's ensure_tools: nginx is not needed here, and building oha
# takes minutes; an installed oha is used, else Debian's wrk.)
# ---------------------------------------------------------------------------------------------
export PATH="$PATH:$HOME/.cargo/bin"
if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then apt_install valgrind; fi
command -v curl >/dev/null || apt_install curl
if [[ $TOOL == auto ]]; then
    if command -v oha >/dev/null; then TOOL=oha; else TOOL=wrk; fi
fi
if [[ $TOOL == wrk ]] && ! command -v wrk >/dev/null; then apt_install wrk; fi
command -v "$TOOL" >/dev/null || die "load tool $TOOL is not available"
for t in valgrind callgrind_control callgrind_annotate; do
    command -v "$t" >/dev/null || die "$t is not available after installing valgrind"
done

cd "$ROOT"
ensure_binaries

# ---------------------------------------------------------------------------------------------
# Processes: the mock upstream as usual; flowgate through a wrapper that runs `serve` (only)
# under callgrind, so that lib.sh's start_flowgate writes and checks the same config as
# run.sh's. The wrapper execs valgrind, which keeps the pid: FG_PID is the valgrind process.
# ---------------------------------------------------------------------------------------------
start_mock

FLOWGATE_BIN=$FLOWGATE
cat >"$TMP/flowgate-under-callgrind" <<EOF
#!/bin/sh
if [ "\$1" = serve ]; then
    exec valgrind --tool=callgrind --callgrind-out-file="$CG_OUT" --log-file="$OUT/valgrind.log" \\
        "$FLOWGATE_BIN" "\$@"
fi
exec "$FLOWGATE_BIN" "\$@"
EOF
chmod +x "$TMP/flowgate-under-callgrind"
FLOWGATE=$TMP/flowgate-under-callgrind

deadline=$((SECONDS + START_TIMEOUT))
if ! start_flowgate bench-model; then
    # wait_listening gives up after 30 s; under valgrind the start may take longer.
    while :; do
        if [[ $FG_ERROR != *"did not print 'listening on'"* ]] || ((SECONDS >= deadline)); then die "$FG_ERROR"; fi
        if wait_listening flowgate "$FG_PID" "$OUT/flowgate.stdout" "$OUT/flowgate.stderr"; then
            FG_URL=$LISTEN_URL
            break
        fi
        FG_ERROR=$LISTEN_ERROR
    done
fi
# Listening is not answering yet: wait for /healthz.
until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$FG_URL/healthz" || true) == 200 ]]; do
    kill -0 "$FG_PID" 2>/dev/null || die "flowgate (under valgrind) exited; see $OUT/flowgate.stderr, $OUT/valgrind.log"
    ((SECONDS < deadline)) || die "flowgate under valgrind did not answer /healthz within ${START_TIMEOUT}s"
    sleep 0.5
done

# ---------------------------------------------------------------------------------------------
# Requests (the same as bench/run.sh's flowgate requests).
# ---------------------------------------------------------------------------------------------
CC_URL=$FG_URL/v1/chat/completions
body() { # stream(true|false)
    if [[ $1 == true ]]; then
        printf '{"model":"bench-model","messages":[{"role":"user","content":"Hello, benchmark"}],"stream":true}'
    else
        printf '{"model":"bench-model","messages":[{"role":"user","content":"Hello, benchmark"}]}'
    fi
}

smoke() { # stream(true|false)
    local code
    code=$(curl -sS --max-time 30 -o "$OUT/smoke-stream_$1.body" -w '%{http_code}' \
        -H 'Authorization: Bearer bench' -H 'Content-Type: application/json' \
        --data-binary "$(body "$1")" "$CC_URL") || code=000
    [[ $code == 200 ]] || die "smoke request (stream=$1) answered HTTP $code: $(head -c 500 "$OUT/smoke-stream_$1.body")"
    if [[ $1 == true ]] && ! grep -q 'data: \[DONE\]' "$OUT/smoke-stream_$1.body"; then
        die "smoke stream has no 'data: [DONE]' (see $OUT/smoke-stream_$1.body)"
    fi
}

# wrk cannot send a given number of requests: its thread stops itself after N responses and
# leaves a mark, on which wrk is sent SIGINT (else it would sleep out its -d). The requests
# then in flight on the other connections are still served: the count comes from /metrics.
cat >"$TMP/wrk.lua" <<'EOF'
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
local limit = tonumber(os.getenv("BENCH_N"))
local n, bad = 0, 0
function response(status, headers, body)
  n = n + 1
  if status ~= 200 then bad = bad + 1 end
  if n == limit then
    local f = io.open(os.getenv("BENCH_MARK"), "w")
    f:close()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  io.write(string.format("WRK requests=%d non2xx=%d errors=%d\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
EOF

load() { # name stream(true|false) requests
    local name=$1 stream=$2 n=$3 rc=0
    if [[ $TOOL == oha ]]; then
        oha --no-tui -n "$n" -c "$CONNS" -m POST -H 'Authorization: Bearer bench' \
            -T application/json -d "$(body "$stream")" "$CC_URL" >"$OUT/$name.txt" 2>&1 &
    else
        rm -f "$TMP/wrk.done"
        BENCH_BODY=$(body "$stream") BENCH_N=$n BENCH_MARK=$TMP/wrk.done wrk -t 1 -c "$CONNS" \
            -d 3600s --timeout 60s -s "$TMP/wrk.lua" "$CC_URL" >"$OUT/$name.txt" 2>&1 &
    fi
    LOAD_PID=$!
    if [[ $TOOL == wrk ]]; then
        until [[ -e $TMP/wrk.done ]] || ! kill -0 "$LOAD_PID" 2>/dev/null; do sleep 0.2; done
        kill -INT "$LOAD_PID" 2>/dev/null || true
    fi
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    ((rc == 0)) || die "$TOOL failed for $name (exit $rc): $(tail -n 5 "$OUT/$name.txt")"
    kill -0 "$FG_PID" 2>/dev/null || die "flowgate (under valgrind) died during $name; see $OUT/flowgate.stderr"
}

# One scrape of /metrics -> SCRAPED_REQUESTS (the sum of flowgate_requests_total), SCRAPED_NON200
# (those whose status is not 200), SCRAPED_RUNS (flowgate_runs_recorded_total), SCRAPED_QUEUE
# (flowgate_recorder_queue_depth).
scrape() {
    local text
    text=$(curl -sS --max-time 30 "$FG_URL/metrics") || die "cannot read $FG_URL/metrics"
    read -r SCRAPED_REQUESTS SCRAPED_NON200 SCRAPED_RUNS SCRAPED_QUEUE < <(awk '
        /^flowgate_requests_total/ { r += $NF; if ($0 !~ /status="200"/) b += $NF }
        $1 == "flowgate_runs_recorded_total" { w = $2 }
        $1 == "flowgate_recorder_queue_depth" { q = $2 }
        END { printf "%d %d %d %d\n", r, b, w, (q == "" ? -1 : q) }' <<<"$text")
}

# wait_drained MIN_REQUESTS: at least MIN_REQUESTS answered since BASE_REQUESTS, a run recorded
# for every request answered so far, and the recorder's queue empty. A scrape costs flowgate more instructions than a request (it
# measures the store on disk), so it polls slowly and counts its scrapes (SCRAPES), which are
# then subtracted.
wait_drained() {
    local min=$1 start=$SECONDS
    SCRAPES=0
    while :; do
        sleep 1
        scrape
        SCRAPES=$((SCRAPES + 1))
        if ((SCRAPED_REQUESTS - BASE_REQUESTS >= min && SCRAPED_RUNS >= SCRAPED_REQUESTS && SCRAPED_QUEUE == 0)); then
            return 0
        fi
        ((SECONDS - start < 120)) || die "the recorder did not drain within 120 s (requests answered $SCRAPED_REQUESTS, runs recorded $SCRAPED_RUNS, queue $SCRAPED_QUEUE)"
    done
}

DUMPS=0
cg() { # zero | dump -> for dump: DUMP_FILE and DUMP_IR (the dump's total Ir, all threads)
    if [[ $1 == zero ]]; then
        callgrind_control --zero "$FG_PID" >>"$OUT/callgrind_control.log" 2>&1 || die "callgrind_control --zero failed (see $OUT/callgrind_control.log)"
        return 0
    fi
    callgrind_control --dump "$FG_PID" >>"$OUT/callgrind_control.log" 2>&1 || die "callgrind_control --dump failed (see $OUT/callgrind_control.log)"
    DUMPS=$((DUMPS + 1))
    DUMP_FILE=$CG_OUT.$DUMPS
    local i
    for ((i = 0; i < 300; i++)); do # the file is complete once its totals line is written
        grep -q '^totals:' "$DUMP_FILE" 2>/dev/null && break
        sleep 0.1
    done
    DUMP_IR=$(awk '$1 == "totals:" { print $2; exit }' "$DUMP_FILE" 2>/dev/null || true)
    [[ -n $DUMP_IR ]] || die "no totals line in $DUMP_FILE"
}

# self_ir DUMP_FILE -> "Ir<TAB>function" for every function with self cost, unsorted, and a
# "(total)" line (their sum, the file's totals). Read from the file itself: callgrind_annotate
# 3.19 counts the calls still running at the dump (calls=0, made before the counters were
# zeroed: thread entries, main) as self cost of their callers, which puts thread_start and
# FnOnce::call_once at the top of its self listing.
self_ir() {
    awk '
        function id_name(s, n) { # "(id) name" | "(id)" | "name" -> the id (remembering its name)
            if (match(s, /^\([0-9]+\)/)) {
                n = substr(s, RLENGTH + 2)
                s = substr(s, 1, RLENGTH)
                if (n != "") name[s] = n
            } else name[s] = s
            return s
        }
        /^fn=/ { fn = id_name(substr($0, 4)); skip = 0; next }
        /^cfn=/ { id_name(substr($0, 5)); next }
        /^calls=/ { skip = 1; next } # the next cost line is the call'"'"'s inclusive cost
        /^[0-9+*-]/ { if (skip) skip = 0; else { self[fn] += $2; total += $2 }; next }
        END {
            for (f in self) if (self[f] > 0) printf "%d\t%s\n", self[f], name[f]
            printf "%d\t(total)\n", total
        }' "$1"
}

top_functions() { # scenario dump_file requests total_ir -> $OUT/top15-<scenario>.txt
    local scenario=$1 file=$2 n=$3 total=$4
    callgrind_annotate --inclusive=yes "$file" >"$OUT/annotate-$scenario-inclusive.txt" 2>&1 || true
    self_ir "$file" | sort -t $'\t' -k1,1nr >"$OUT/self-$scenario.tsv"
    {
        echo "== $scenario: top 15 functions by self Ir ($total Ir, $n requests; Ir/request, share) =="
        # (awk reads the whole file: a head in the pipe would fail it with SIGPIPE under pipefail)
        awk -F '\t' -v n="$n" -v t="$total" '$2 != "(total)" && k++ < 15 {
            printf "%9.0f %5.1f%%  %s\n", $1 / n, 100 * $1 / t, $2 }' "$OUT/self-$scenario.tsv"
        echo
        echo "== $scenario: top 15 functions by inclusive Ir (callgrind_annotate --inclusive=yes) =="
        awk '/PROGRAM TOTALS/ { on = 1; next }
            on && NF && !/^-+$/ && !/^Ir/ { print; if (++k == 15) exit }' "$OUT/annotate-$scenario-inclusive.txt"
    } >"$OUT/top15-$scenario.txt"
}

# ---------------------------------------------------------------------------------------------
# Scenarios.
# ---------------------------------------------------------------------------------------------
log "flowgate instructions per request (callgrind), $(date -u +%Y-%m-%dT%H:%MZ)"
log "machine: $(machine_description), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ -n $BIN_DIR ]]; then
    log "binaries: $BIN_DIR (flowgate sha256 $(sha256sum "$FLOWGATE_BIN" | cut -c1-12)); checkout $(git_revision)"
else
    log "binaries: $ROOT/target/release, checkout $(git_revision)"
fi
log "valgrind: $(valgrind --version); load: $TOOL, $CONNS connections; $WARMUP warm-up + $REQUESTS measured requests per scenario"
log "flowgate: server.workers = 1, every run recorded to sled (config: $OUT/flowgate.toml)"

smoke false
smoke true

printf 'scenario\trequests\ttotal_ir\tscrapes\tir_per_scrape\tnet_ir\tir_per_request\n' >"$OUT/summary.tsv"
ROWS=()
for scenario in $SCENARIOS; do
    case $scenario in
    plain) stream=false ;;
    stream) stream=true ;;
    *) die "unknown scenario $scenario (plain | stream)" ;;
    esac
    echo "scenario $scenario: $WARMUP warm-up requests..." >&2
    load "$scenario-warmup" "$stream" "$WARMUP"
    BASE_REQUESTS=0
    wait_drained 0 # the warm-up's runs are written before the counters are zeroed
    BASE_REQUESTS=$SCRAPED_REQUESTS BASE_NON200=$SCRAPED_NON200

    echo "scenario $scenario: $REQUESTS measured requests..." >&2
    cg zero
    t0=$(date +%s.%N)
    load "$scenario" "$stream" "$REQUESTS"
    t1=$(date +%s.%N)
    wait_drained "$REQUESTS"
    cg dump
    total_ir=$DUMP_IR scrapes=$SCRAPES measured_file=$DUMP_FILE
    sent=$((SCRAPED_REQUESTS - BASE_REQUESTS))
    non200=$((SCRAPED_NON200 - BASE_NON200))
    ((non200 == 0)) || log "WARNING: $scenario: $non200 of the $sent measured requests did not answer 200 (see $OUT/$scenario.txt)"
    cp "$measured_file" "$OUT/callgrind.$scenario.out"

    # What one scrape of /metrics costs now (to subtract the drain wait's scrapes).
    cg zero
    for _ in 1 2 3; do scrape; done
    cg dump
    per_scrape=$((DUMP_IR / 3))

    net=$((total_ir - scrapes * per_scrape))
    per_req=$((net / sent))
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$sent" "$total_ir" "$scrapes" "$per_scrape" "$net" "$per_req" >>"$OUT/summary.tsv"
    ROWS+=("$(printf '%-8s %9d %16d %8d %14d %12d' "$scenario" "$sent" "$total_ir" "$scrapes" "$per_scrape" "$per_req")")
    echo "  $scenario: $sent requests in ${secs}s under valgrind, $total_ir Ir, $per_req Ir/request" >&2

    top_functions "$scenario" "$OUT/callgrind.$scenario.out" "$sent" "$total_ir"
done

log ""
log "$(printf '%-8s %9s %16s %8s %14s %12s' scenario requests "total Ir" scrapes "Ir per scrape" "Ir/request")"
for row in "${ROWS[@]}"; do log "$row"; done
log ""
log "Ir/request = (total Ir - scrapes x Ir per scrape) / requests: every thread of flowgate (HTTP"
log "worker, recorder, sled) from the zeroing to the dump, after the recorder had written every run;"
log "the /metrics scrapes that waited for it are subtracted. Top functions: $OUT/top15-<scenario>.txt"
for scenario in $SCENARIOS; do
    log ""
    log "$(head -n 11 "$OUT/top15-$scenario.txt")"
done
