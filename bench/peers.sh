#!/usr/bin/env bash
# flowgate against its peers: the same chat-completions request, the same zero-latency mock
# upstream and the same load tool (oha), in one run, through nginx (a plain reverse proxy, the
# yardstick), flowgate (recording every run, as in production), the LiteLLM proxy (PyPI) and
# Portkey's gateway (npm). Run by hand from anywhere: `bash bench/peers.sh`. See bench/README.md
# ("Peers") for how to read it.
#
# Knobs (environment variables):
#   BENCH_PEERS="nginx flowgate litellm portkey"   which peers to run, in this order each round
#   BENCH_DURATION=10        seconds per measured run
#   BENCH_WARMUP=2           seconds of warm-up before each run (not reported)
#   BENCH_CONNECTIONS=64     concurrent connections of the load tool
#   BENCH_ROUNDS=3           rounds of every peer in turn; figures are medians over rounds, the
#                            ratios are taken within each round, then their median
#   BENCH_SKIP_BUILD=0       1: use the existing target/release binaries
#   BENCH_BIN_DIR=           a folder with flowgate and flowgate-mock-upstream to use instead
#                            of the checkout's target/release (nothing is built)
#   BENCH_KEEP_TMP=0         1: keep the temp dir (configs, flowgate's sled data) after the run
#   BENCH_IDLE_WAIT=120      seconds to wait for other programs to leave the CPU before the load
#   BENCH_PEERS_CACHE=~/.cache/flowgate-bench/peers   where LiteLLM and Portkey are installed
#                            (once per version; delete a version's folder to reinstall it)
#   BENCH_LITELLM_VERSION=1.106.12   `litellm[proxy]` from PyPI, in a venv of its own
#   BENCH_PORTKEY_VERSION=1.15.2     `@portkey-ai/gateway` from npm
#   BENCH_PYTHON=python3     the Python that makes LiteLLM's venv
#   BENCH_LITELLM_PORT, BENCH_PORTKEY_PORT   their ports (default: a free loopback port)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${BENCH_PEERS:-nginx flowgate litellm portkey}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-64}
ROUNDS=${BENCH_ROUNDS:-3}
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
BIN_DIR=${BENCH_BIN_DIR:-}
KEEP_TMP=${BENCH_KEEP_TMP:-0}
IDLE_WAIT=${BENCH_IDLE_WAIT:-120}
CACHE=${BENCH_PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flowgate-bench/peers}
LITELLM_VERSION=${BENCH_LITELLM_VERSION:-1.106.12}
PORTKEY_VERSION=${BENCH_PORTKEY_VERSION:-1.15.2}
PYTHON=${BENCH_PYTHON:-python3}
PROXY_WORKERS=1 # nginx worker_processes, flowgate server.workers, LiteLLM --num_workers
TOOL=oha
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for p in $PEERS; do
    case $p in
    nginx | flowgate | litellm | portkey) ;;
    *)
        echo "unknown peer '$p' in BENCH_PEERS (known: nginx flowgate litellm portkey)" >&2
        exit 2
        ;;
    esac
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/peers-$STAMP
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flowgate-peers.XXXXXX")
REPORT=$OUT/report.txt
SUMMARY=$OUT/summary.tsv

PIDS=() # every long-running process this script started
UP_PID="" NGX_PID="" FG_PID=""
declare -A P_PID P_URL P_VERSION P_FAIL

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # flowgate first (it drains its recorder on SIGTERM), then the peers, then the upstream.
    stop_pid "$FG_PID" flowgate 40
    local p pid
    for p in "${!P_PID[@]}"; do stop_pid "${P_PID[$p]}" "$p" 10; done
    stop_pid "$UP_PID" mock-upstream 10
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

fail_peer() { # peer reason
    P_FAIL[$1]=$2
    log "$1: FAILED: $2"
}
active() { [[ " $PEERS " == *" $1 "* && -z ${P_FAIL[$1]:-} ]]; }

# ---------------------------------------------------------------------------------------------
# 1. Tools and binaries.
# ---------------------------------------------------------------------------------------------
ensure_tools
cd "$ROOT"
if [[ " $PEERS " == *" flowgate "* ]]; then
    ensure_binaries
else
    SKIP_BUILD=1 ensure_binaries # the mock upstream only
fi

# ---------------------------------------------------------------------------------------------
# 2. The request, the same for every peer (Portkey also needs its routing headers). The model is
#    `bench-model`: flowgate's catalog already has a `gpt-4o-mini`; flowgate and LiteLLM map it
#    to the upstream's gpt-4o-mini, nginx and Portkey pass it on as it is (the mock answers any).
# ---------------------------------------------------------------------------------------------
PATH_CC=/v1/chat/completions
BODY='{"model":"bench-model","messages":[{"role":"user","content":"Hello, benchmark"}]}'
headers() { # peer -> the request's headers, one a line
    echo 'Authorization: Bearer bench'
    echo 'Content-Type: application/json'
    if [[ $1 == portkey ]]; then
        echo 'x-portkey-provider: openai'
        echo "x-portkey-custom-host: $UP_URL/v1"
    fi
}

# smoke PEER: one request, which must answer 200 with the mock upstream's completion.
smoke() {
    local p=$1 code args=()
    while IFS= read -r h; do args+=(-H "$h"); done < <(headers "$p")
    code=$(curl -sS --max-time 30 -o "$OUT/smoke-$p.body" -D "$OUT/smoke-$p.headers" -w '%{http_code}' \
        "${args[@]}" --data-binary "$BODY" "${P_URL[$p]}$PATH_CC" 2>"$OUT/smoke-$p.stderr") || code=000
    if [[ $code != 200 ]]; then
        SMOKE_ERROR="smoke request answered HTTP $code: $(head -c 300 "$OUT/smoke-$p.body" "$OUT/smoke-$p.stderr" 2>/dev/null | tr '\n' ' ')"
        return 1
    fi
    if ! jq -e '.choices[0].message.content == "Hello, benchmark"' "$OUT/smoke-$p.body" >/dev/null 2>&1; then
        SMOKE_ERROR="smoke request answered 200 without the mock upstream's completion (see $OUT/smoke-$p.body)"
        return 1
    fi
}

# wait_http URL PID SECONDS: until URL answers 200 (0), the process exits (1) or time runs out (2).
wait_http() {
    local url=$1 pid=$2 secs=$3 i
    for ((i = 0; i < secs * 5; i++)); do
        [[ $(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$url" 2>/dev/null) == 200 ]] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 2
}

# ---------------------------------------------------------------------------------------------
# 3. Installs (cached by version; a folder without its .installed mark is redone).
# ---------------------------------------------------------------------------------------------
install_litellm() { # -> LITELLM_BIN, or returns 1 with INSTALL_ERROR
    local dir=$CACHE/litellm-$LITELLM_VERSION
    LITELLM_BIN=$dir/venv/bin/litellm
    [[ -f $dir/.installed && -x $LITELLM_BIN ]] && return 0
    command -v "$PYTHON" >/dev/null || {
        INSTALL_ERROR="$PYTHON not found (BENCH_PYTHON)"
        return 1
    }
    echo "installing litellm[proxy]==$LITELLM_VERSION into $dir (once, about a minute)..." >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    if ! { "$PYTHON" -m venv "$dir/venv" &&
        "$dir/venv/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"; } \
        >"$OUT/litellm-install.log" 2>&1; then
        INSTALL_ERROR="pip install litellm[proxy]==$LITELLM_VERSION failed: $(grep -m1 ERROR "$OUT/litellm-install.log" || tail -n 1 "$OUT/litellm-install.log") (log: $OUT/litellm-install.log)"
        return 1
    fi
    touch "$dir/.installed"
}

install_portkey() { # -> PORTKEY_JS, or returns 1 with INSTALL_ERROR
    local dir=$CACHE/portkey-$PORTKEY_VERSION
    PORTKEY_JS=$dir/node_modules/@portkey-ai/gateway/build/start-server.js
    [[ -f $dir/.installed && -f $PORTKEY_JS ]] && return 0
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        INSTALL_ERROR="node and npm are needed (apt-get install nodejs npm)"
        return 1
    fi
    echo "installing @portkey-ai/gateway@$PORTKEY_VERSION into $dir (once)..." >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    if ! npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
        "@portkey-ai/gateway@$PORTKEY_VERSION" >"$OUT/portkey-install.log" 2>&1; then
        INSTALL_ERROR="npm install @portkey-ai/gateway@$PORTKEY_VERSION failed: $(tail -n 1 "$OUT/portkey-install.log") (log: $OUT/portkey-install.log)"
        return 1
    fi
    [[ -f $PORTKEY_JS ]] || {
        INSTALL_ERROR="the package has no build/start-server.js (log: $OUT/portkey-install.log)"
        return 1
    }
    touch "$dir/.installed"
}

# ---------------------------------------------------------------------------------------------
# 4. Peers: each started on the loopback, then smoke-tested; a peer that fails is reported as
#    failed and the others go on.
# ---------------------------------------------------------------------------------------------
start_peer_nginx() {
    if ! start_nginx; then
        fail_peer nginx "did not start: $(tail -n 3 "$OUT/nginx.stderr" "$OUT/nginx-error.log" 2>/dev/null | tr '\n' ' ')"
        return
    fi
    P_PID[nginx]=$NGX_PID P_URL[nginx]=$NGX_URL
    P_VERSION[nginx]="$(nginx -v 2>&1 | sed 's/^nginx version: //'): worker_processes 1, upstream keepalive 256, access_log off"
}

start_peer_flowgate() {
    if ! start_flowgate bench-model; then
        fail_peer flowgate "$FG_ERROR"
        return
    fi
    P_PID[flowgate]=$FG_PID P_URL[flowgate]=$FG_URL
    local built
    built="commit $(git_revision)"
    [[ -n $BIN_DIR ]] && built="from BENCH_BIN_DIR, not built from this checkout"
    P_VERSION[flowgate]="$("$FLOWGATE" --version) ($FLOWGATE, $built): server.workers 1, every run recorded to sled"
}

start_peer_litellm() {
    install_litellm || {
        fail_peer litellm "$INSTALL_ERROR"
        return
    }
    local port=${BENCH_LITELLM_PORT:-$(free_port)} rc=0
    mkdir -p "$TMP/litellm"
    # One model routed to the mock upstream as an OpenAI-compatible endpoint. No master key (as
    # flowgate and nginx here check none), no database, spend and error logs off, the model cost
    # map read from the package (it otherwise downloads one at start).
    cat >"$TMP/litellm/config.yaml" <<EOF
# Generated by bench/peers.sh.
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: $UP_URL/v1
      api_key: bench
litellm_settings:
  set_verbose: false
  json_logs: false
  turn_off_message_logging: true
general_settings:
  dangerously_permit_weak_or_unset_master_key: true
  disable_spend_logs: true
  disable_error_logs: true
EOF
    cp "$TMP/litellm/config.yaml" "$OUT/litellm.yaml"
    (cd "$TMP/litellm" && exec env LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
        NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost \
        "$LITELLM_BIN" --config "$TMP/litellm/config.yaml" --host 127.0.0.1 --port "$port" \
        --num_workers "$PROXY_WORKERS" >"$OUT/litellm.stdout" 2>"$OUT/litellm.stderr") &
    P_PID[litellm]=$!
    PIDS+=("${P_PID[litellm]}")
    P_URL[litellm]=http://127.0.0.1:$port
    P_VERSION[litellm]="litellm[proxy] $LITELLM_VERSION ($("$CACHE/litellm-$LITELLM_VERSION/venv/bin/python" --version 2>&1)): uvicorn, 1 worker, no master key, spend and error logs off"
    echo "starting litellm on 127.0.0.1:$port (its start takes 10-30 s)..." >&2
    wait_http "${P_URL[litellm]}/health/liveliness" "${P_PID[litellm]}" 180 || rc=$?
    case $rc in
    0) ;;
    1) fail_peer litellm "exited at start: $(tail -n 3 "$OUT/litellm.stderr" | tr '\n' ' ') (log: $OUT/litellm.stderr)" ;;
    *) fail_peer litellm "did not answer /health/liveliness within 180 s (log: $OUT/litellm.stderr)" ;;
    esac
}

start_peer_portkey() {
    install_portkey || {
        fail_peer portkey "$INSTALL_ERROR"
        return
    }
    local port=${BENCH_PORTKEY_PORT:-$(free_port)} i
    # Its server listens on every interface, on --port (8787 by default); this preload makes the
    # listen that names no host take 127.0.0.1, so that it is reachable from this machine only.
    cat >"$TMP/portkey-loopback.cjs" <<'EOF'
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args[1] === undefined || typeof args[1] === "function")) {
    args.splice(1, args[1] === undefined ? 1 : 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
EOF
    # --headless and NODE_ENV=production: no web console, no log streaming.
    (cd "$TMP" && exec env NODE_ENV=production node --require "$TMP/portkey-loopback.cjs" \
        "$PORTKEY_JS" --port="$port" --headless >"$OUT/portkey.stdout" 2>"$OUT/portkey.stderr") &
    P_PID[portkey]=$!
    PIDS+=("${P_PID[portkey]}")
    P_URL[portkey]=http://127.0.0.1:$port
    P_VERSION[portkey]="@portkey-ai/gateway $PORTKEY_VERSION (node $(node --version)): --headless, NODE_ENV=production, x-portkey-provider openai + x-portkey-custom-host"
    for ((i = 0; i < 300; i++)); do
        port_in_use "$port" && return 0
        if ! kill -0 "${P_PID[portkey]}" 2>/dev/null; then
            fail_peer portkey "exited at start: $(tail -n 3 "$OUT/portkey.stderr" | tr '\n' ' ') (log: $OUT/portkey.stderr)"
            return
        fi
        sleep 0.2
    done
    fail_peer portkey "did not listen on 127.0.0.1:$port within 60 s (log: $OUT/portkey.stderr)"
}

start_mock
for p in $PEERS; do
    "start_peer_$p"
    if active "$p"; then
        if smoke "$p"; then
            echo "$p: smoke request answered 200 from the mock upstream (${P_URL[$p]})" >&2
        else
            fail_peer "$p" "$SMOKE_ERROR"
        fi
    fi
done
FG_SENT=0 RECORDED_BASE=0
if active flowgate; then
    wait_recorder 1
    RECORDED_BASE=$RECORDED
fi

# ---------------------------------------------------------------------------------------------
# 5. Load: every peer in turn, in rounds.
# ---------------------------------------------------------------------------------------------
printf 'peer\tround\trps_ok\tp50_ms\tp99_ms\tsent\tok_200\tnon_200\terrors\tproxy_us_per_req\tloadtool_us_per_req\tother_cpu_pct\tmachine_busy_pct\n' >"$SUMMARY"

# shellcheck disable=SC2046 # one pid a word
proxy_ticks() { proc_ticks $(descendants "${P_PID[$1]}"); } # peer -> CPU of its processes
# load NAME PEER SECONDS ROUND(0: warm-up, not recorded)
load() {
    local name=$1 p=$2 secs=$3 round=$4 args=() row cpu px_a px_b up_a up_b
    while IFS= read -r h; do args+=(-H "$h"); done < <(headers "$p")
    echo "  $name: $p, ${secs}s, $CONNS connections" >&2
    machine_ticks A
    px_a=$(proxy_ticks "$p")
    up_a=$(proc_ticks "$UP_PID")
    children_us A_KIDS
    if ! oha --no-tui "${OHA_JSON_FLAG[@]}" -z "${secs}s" -c "$CONNS" -w -m POST "${args[@]}" \
        -d "$BODY" "${P_URL[$p]}$PATH_CC" >"$OUT/$name.json" 2>"$OUT/$name.stderr"; then
        fail_peer "$p" "oha failed in $name: $(head -c 300 "$OUT/$name.stderr")"
        return
    fi
    machine_ticks B
    px_b=$(proxy_ticks "$p")
    up_b=$(proc_ticks "$UP_PID")
    children_us B_KIDS
    kill -0 "$UP_PID" 2>/dev/null || die "the mock upstream stopped (interrupted?)"
    if ! kill -0 "${P_PID[$p]}" 2>/dev/null; then
        fail_peer "$p" "exited during $name (see $OUT/$p.stderr)"
        return
    fi
    row=$(jq -r --arg p "$p" --arg r "$round" '
        (.statusCodeDistribution // {}) as $sc | (.errorDistribution // {}) as $ed
        | ([$sc[]] | add // 0) as $resp | ([$ed[]] | add // 0) as $errs
        | ($sc["200"] // 0) as $ok
        | [$p, $r,
           (if .summary.total > 0 then $ok / .summary.total else 0 end | floor),
           ((.latencyPercentiles.p50 // 0) * 1000 * 1000 | round / 1000),
           ((.latencyPercentiles.p99 // 0) * 1000 * 1000 | round / 1000),
           ($resp + $errs), $ok, ($resp - $ok), $errs] | @tsv' "$OUT/$name.json")
    # CPU per request (µs) of the peer's processes and of the load tool; the share of the
    # machine's busy CPU used by none of them nor the upstream (kernel loopback work, other
    # programs).
    cpu=$(awk -v hz="$CLK_TCK" -v sent="$(cut -f6 <<<"$row")" -v busy=$((B_BUSY - A_BUSY)) \
        -v total=$((B_TOTAL - A_TOTAL)) -v px=$((px_b - px_a)) -v up=$((up_b - up_a)) \
        -v kids=$((B_KIDS - A_KIDS)) 'BEGIN {
            n = (sent > 0) ? sent : 1
            px_s = px / hz; up_s = up / hz; oha_s = kids / 1e6; busy_s = busy / hz
            other = busy_s - px_s - up_s - oha_s; if (other < 0) other = 0
            printf "%.1f\t%.1f\t%.0f\t%.0f", px_s * 1e6 / n, oha_s * 1e6 / n,
                (busy_s > 0 ? 100 * other / busy_s : 0), (total > 0 ? 100 * busy / total : 0) }')
    if [[ $p == flowgate ]]; then
        FG_SENT=$((FG_SENT + $(cut -f6 <<<"$row")))
        # Let the recorder catch up so that its backlog does not eat into the next peer's run.
        wait_recorder $((RECORDED_BASE + FG_SENT))
        echo "    flowgate recorder: $((RECORDED - RECORDED_BASE))/$FG_SENT runs recorded (waited ${RECORDER_WAIT}s)" >&2
    fi
    ((round > 0)) && printf '%s\t%s\n' "$row" "$cpu" >>"$SUMMARY"
    sleep 1
}

wait_idle "$IDLE_WAIT"
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
{
    echo "flowgate and its peers — $(date -u '+%Y-%m-%d %H:%M UTC') ($STAMP)"
    echo "machine: $(machine_description); $(uname -sr); load average $LOADAVG before the load"
    echo "NOTE: the load tool, the mock upstream and the peer under load share these cores; compare"
    echo "      the peers with each other (the ratios), not with production numbers."
    echo "load tool: $(oha --version 2>&1 | head -1); POST $PATH_CC, non-streamed, $CONNS connections,"
    echo "      ${DURATION}s per run after a ${WARMUP}s warm-up, $ROUNDS rounds of every peer in turn"
    echo "upstream: flowgate-mock-upstream, 1 worker thread, no recording, zero delay ($UP_URL)"
    for p in $PEERS; do
        if [[ -n ${P_VERSION[$p]:-} ]]; then echo "$p: ${P_VERSION[$p]}"; fi
    done
    echo "machine CPU busy over 2 s before the load (servers idle): ${IDLE_BUSY}%$(
        awk -v b="$IDLE_BUSY" 'BEGIN { if (b > 15) print "  WARNING: something else is using the CPU; figures will be disturbed" }')"
} | tee -a "$REPORT"
echo

for ((round = 1; round <= ROUNDS; round++)); do
    echo "round $round of $ROUNDS" >&2
    for p in $PEERS; do
        active "$p" || continue
        load "warmup-$p-r$round" "$p" "$WARMUP" 0
        active "$p" || continue
        load "$p-r$round" "$p" "$DURATION" "$round"
    done
done

# ---------------------------------------------------------------------------------------------
# 6. Results.
# ---------------------------------------------------------------------------------------------
values() { # peer column-number -> one value per round, in order
    awk -F'\t' -v p="$1" -v c="$2" '$1 == p { print $c }' "$SUMMARY"
}
field() { values "$@" | median_raw; }
fmt() { # decimals value -> the value with that many decimals (n/a stays n/a)
    awk -v d="$1" -v v="$2" 'BEGIN { if (v == "n/a" || v == "") print "n/a"; else printf "%.*f", d, v }'
}
round_ratios() { # peer base -> peer/base req/s of each round both ran
    join -t $'\t' <(awk -F'\t' -v p="$1" '$1 == p { print $2 "\t" $3 }' "$SUMMARY" | sort) \
        <(awk -F'\t' -v p="$2" '$1 == p { print $2 "\t" $3 }' "$SUMMARY" | sort) |
        sort -n | awk -F'\t' '{ if ($3 + 0 == 0) print "n/a"; else printf "%.4f\n", $2 / $3 }'
}
ratio() { # peer base -> median of the rounds' ratios ("-" if the peer is the base)
    if [[ $1 == "$2" ]]; then echo "1.00"; else round_ratios "$1" "$2" | median_raw; fi
}
sum_col() { awk -F'\t' -v p="$1" -v c="$2" '$1 == p { s += $c } END { print s + 0 }' "$SUMMARY"; }

{
    echo
    printf '%-9s %9s %9s %9s %8s %10s %9s %9s %6s\n' peer "req/s" "p50 ms" "p99 ms" non-200 "proxy us" "x nginx" "x flowgt" other
    printf '%s\n' "------------------------------------------------------------------------------------------"
    for p in $PEERS; do
        if [[ -z $(values "$p" 3) ]]; then
            printf '%-9s FAILED: %s\n' "$p" "${P_FAIL[$p]:-no measured run}"
            continue
        fi
        printf '%-9s %9s %9s %9s %8s %10s %9s %9s %5s%%\n' "$p" "$(fmt 0 "$(field "$p" 3)")" \
            "$(fmt 2 "$(field "$p" 4)")" "$(fmt 2 "$(field "$p" 5)")" \
            $(($(sum_col "$p" 8) + $(sum_col "$p" 9))) "$(fmt 1 "$(field "$p" 10)")" \
            "$(fmt 3 "$(ratio "$p" nginx)")" "$(fmt 3 "$(ratio "$p" flowgate)")" \
            "$(fmt 0 "$(field "$p" 12)")"
        if [[ -n ${P_FAIL[$p]:-} ]]; then echo "          (then FAILED: ${P_FAIL[$p]})"; fi
    done
    echo
    echo "req/s: 200 responses per second; p50/p99: latency to the last byte; non-200: responses other"
    echo "than 200 plus connection errors, all rounds. Medians over the rounds; x nginx / x flowgt:"
    echo "the peer's req/s over nginx's / flowgate's in the same round, median over the rounds."
    echo "proxy us: CPU microseconds per request used by the peer's processes (all threads and"
    echo "children); other: the share of the machine's busy CPU used by none of the peer, the load"
    echo "tool and the mock upstream (kernel loopback work, and any other program: above ~15%, the"
    echo "run was disturbed by another program)."
    for p in $PEERS; do
        for base in nginx flowgate; do
            [[ $p != "$base" && -n $(values "$p" 3) && -n $(values "$base" 3) ]] || continue
            echo "  $p/$base per round: $(round_ratios "$p" "$base" | paste -sd' ')"
        done
    done
    if active flowgate; then
        wait_recorder $((RECORDED_BASE + FG_SENT))
        echo "flowgate: $((RECORDED - RECORDED_BASE)) runs recorded of $FG_SENT requests sent (warm-ups included)"
    fi
    echo "machine load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$REPORT"

# Problems: status codes other than 200 and errors, per run.
{
    for f in "$OUT"/*.json; do
        [[ -e $f ]] || continue
        jq -r --arg f "$(basename "$f")" '
            ((.statusCodeDistribution // {}) | to_entries[] | select(.key != "200") | "  \($f): HTTP \(.key) x\(.value)"),
            ((.errorDistribution // {}) | to_entries[] | "  \($f): \(.key) x\(.value)")' "$f" 2>/dev/null || true
    done
    for p in $PEERS; do
        if [[ -n ${P_FAIL[$p]:-} ]]; then echo "$p FAILED: ${P_FAIL[$p]}"; fi
    done
} | tee -a "$REPORT"

# Only the yardsticks are required; a third-party peer that cannot be installed or started is
# reported above and does not fail the run.
[[ -z ${P_FAIL[nginx]:-} && -z ${P_FAIL[flowgate]:-} ]] || exit 1
