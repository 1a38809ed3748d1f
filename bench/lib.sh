# Shell functions shared by bench/run.sh and bench/peers.sh (sourced, not run).
#
# The caller sets, before using them: ROOT (the checkout), OUT (the results folder), REPORT (the
# report file in it), TMP (a temp dir, mode 0755 for nginx's workers), PROXY_WORKERS, TOOL
# (auto | oha | wrk), SKIP_BUILD and BIN_DIR (empty: the checkout's target/release).
# shellcheck shell=bash disable=SC2034  # the variables set here are read by the caller

log() { printf '%s\n' "$*" | tee -a "$REPORT"; }
die() {
    log "ERROR: $*"
    exit 1
}

stop_pid() { # pid name grace_seconds
    local pid=$1 name=$2 grace=$3 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "warning: $name (pid $pid) did not stop within ${grace}s of SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Tools and binaries.
# ---------------------------------------------------------------------------------------------
SUDO=""
if [[ $(id -u) != 0 ]]; then SUDO=sudo; fi
apt_updated=0
apt_install() {
    if [[ $apt_updated == 0 ]]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}

# ensure_tools: jq, curl, nginx and the load tool ($TOOL: auto | oha | wrk; resolved to oha or
# wrk); sets OHA_JSON_FLAG for the installed oha's JSON output.
ensure_tools() {
    export PATH="$PATH:$HOME/.cargo/bin:/usr/sbin:/sbin"
    command -v jq >/dev/null || apt_install jq
    command -v curl >/dev/null || apt_install curl

    if [[ $TOOL == auto || $TOOL == oha ]] && ! command -v oha >/dev/null; then
        echo "installing oha (cargo install oha --locked; a few minutes, once)..."
        if ! cargo install oha --locked; then
            [[ $TOOL == oha ]] && die "cargo install oha failed"
            echo "cargo install oha failed; falling back to wrk"
        fi
    fi
    if [[ $TOOL == auto ]]; then
        if command -v oha >/dev/null; then TOOL=oha; else TOOL=wrk; fi
    fi
    if [[ $TOOL == wrk ]] && ! command -v wrk >/dev/null; then apt_install wrk; fi
    command -v "$TOOL" >/dev/null || die "load tool $TOOL is not available"

    if ! command -v nginx >/dev/null; then
        apt_install nginx-light || apt_install nginx
    fi
    command -v nginx >/dev/null || die "nginx is not available"

    OHA_JSON_FLAG=()
    if [[ $TOOL == oha ]]; then
        if oha --help | grep -q -- '--output-format'; then
            OHA_JSON_FLAG=(--output-format json)
        elif oha --help | grep -q -- '--json'; then
            OHA_JSON_FLAG=(--json)
        else
            die "this oha has neither --output-format json nor --json; upgrade it (cargo install oha --locked --force)"
        fi
    fi
}

# ensure_binaries: sets FLOWGATE and MOCK. With BIN_DIR (BENCH_BIN_DIR) set, its binaries are
# used as they are; else the checkout's release build, built first unless SKIP_BUILD=1.
ensure_binaries() {
    local dir=${BIN_DIR:-$ROOT/target/release}
    if [[ -z ${BIN_DIR:-} && $SKIP_BUILD != 1 ]]; then
        # The root package is the workspace's only default member: name both packages.
        echo "building release binaries (cargo build --release --bins -p flowgate -p flowgate-mock-upstream)..."
        (cd "$ROOT" && cargo build --release --bins -p flowgate -p flowgate-mock-upstream) 2>&1 | tee "$OUT/build.log"
        [[ ${PIPESTATUS[0]} == 0 ]] || die "cargo build failed (see $OUT/build.log)"
    fi
    FLOWGATE=$dir/flowgate
    MOCK=$dir/flowgate-mock-upstream
    [[ -x $FLOWGATE && -x $MOCK ]] || die "missing $FLOWGATE or $MOCK (build failed?)"
}

# ensure_ttft: sets TTFT, run.sh's first-token load tool (bench/ttft), from the checkout's
# release build (in CARGO_TARGET_DIR when set): built unless SKIP_BUILD=1 finds it there. A
# measuring tool, not what is measured: BENCH_BIN_DIR does not apply to it.
ensure_ttft() {
    local target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$ROOT/$target
    TTFT=$target/release/flowgate-ttft
    if [[ $SKIP_BUILD != 1 || ! -x $TTFT ]]; then
        echo "building the first-token load tool (cargo build --release -p flowgate-bench-ttft)..."
        (cd "$ROOT" && cargo build --release -p flowgate-bench-ttft) 2>&1 | tee "$OUT/build-ttft.log"
        [[ ${PIPESTATUS[0]} == 0 ]] || die "cargo build failed (see $OUT/build-ttft.log)"
    fi
    [[ -x $TTFT ]] || die "missing $TTFT (build failed?)"
}

# ---------------------------------------------------------------------------------------------
# Processes.
# ---------------------------------------------------------------------------------------------
# wait_listening NAME PID STDOUT_FILE STDERR_FILE -> sets LISTEN_URL from "listening on http://...";
# on failure returns 1 with the reason in LISTEN_ERROR.
wait_listening() {
    local name=$1 pid=$2 out=$3 err=$4 i line
    LISTEN_ERROR=""
    for ((i = 0; i < 300; i++)); do
        line=$(grep -m1 -o 'listening on http://[0-9.:]*' "$out" 2>/dev/null || true)
        if [[ -n $line ]]; then
            LISTEN_URL=${line#listening on }
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$err" >&2 || true
            LISTEN_ERROR="$name exited before listening (log: $err)"
            return 1
        fi
        sleep 0.1
    done
    LISTEN_ERROR="$name did not print 'listening on' within 30s (log: $err)"
    return 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # -> a loopback port nothing listens on (another program may still take it first)
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        port_in_use "$port" || break
    done
    echo "$port"
}

# start_mock: the mock upstream, zero delay, not recording, one worker thread -> UP_PID, UP_URL,
# UP_PORT.
start_mock() {
    "$MOCK" --listen 127.0.0.1:0 --workers 1 --no-record \
        >"$OUT/mock-upstream.stdout" 2>"$OUT/mock-upstream.stderr" &
    UP_PID=$!
    PIDS+=("$UP_PID")
    wait_listening mock-upstream "$UP_PID" "$OUT/mock-upstream.stdout" "$OUT/mock-upstream.stderr" ||
        die "$LISTEN_ERROR"
    UP_URL=$LISTEN_URL
    UP_PORT=${UP_URL##*:}
}

# start_nginx: a plain reverse proxy to the mock upstream with upstream keep-alive, on a free
# port -> NGX_PID, NGX_PIDS (master and workers), NGX_PORT, NGX_URL; returns 1 if it did not
# start (see $OUT/nginx-error.log).
start_nginx() {
    local attempt port i ngx_workers
    chmod 0755 "$TMP" # nginx workers may run as `nobody` and use the temp paths below
    mkdir -p "$TMP/nginx"
    NGX_PORT="" NGX_PID=""
    for _ in 1 2 3 4 5 6 7 8; do
        port=$(free_port)
        nginx_config "$port" >"$TMP/nginx.conf"
        cp "$TMP/nginx.conf" "$OUT/nginx.conf"
        nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" -e "$OUT/nginx-error.log" \
            >"$OUT/nginx.stdout" 2>"$OUT/nginx.stderr" &
        NGX_PID=$!
        for ((i = 0; i < 100; i++)); do
            kill -0 "$NGX_PID" 2>/dev/null || break
            if port_in_use "$port"; then
                NGX_PORT=$port
                break 2
            fi
            sleep 0.1
        done
        stop_pid "$NGX_PID" nginx 5
        NGX_PID=""
    done
    [[ -n $NGX_PORT ]] || return 1
    PIDS+=("$NGX_PID")
    NGX_URL=http://127.0.0.1:$NGX_PORT
    NGX_PIDS=("$NGX_PID")
    for _ in 1 2 3 4 5 6 7 8 9 10; do # the workers appear right after the master
        mapfile -t ngx_workers < <(pgrep -P "$NGX_PID" || true)
        ((${#ngx_workers[@]} >= PROXY_WORKERS)) && break
        sleep 0.1
    done
    NGX_PIDS+=("${ngx_workers[@]}")
}

nginx_config() { # port
    cat <<EOF
# Generated by bench/$(basename "$0").
worker_processes $PROXY_WORKERS;
daemon off;
pid $TMP/nginx.pid;
error_log $OUT/nginx-error.log warn;
events {
    worker_connections 8192;
}
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream mock {
        server 127.0.0.1:$UP_PORT;
        keepalive 256;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# start_flowgate MODEL [RECORDER_LINES] [MORE_TOML]: flowgate recording every run into a sled
# store in the temp dir ($TMP/flowgate-data), MODEL mapped to the upstream's gpt-4o-mini, with
# RECORDER_LINES added to its [recorder] table and MORE_TOML (tables) at the end -> FG_PID,
# FG_URL; returns 1 with the reason in FG_ERROR if it did not start.
start_flowgate() {
    local model=$1 recorder_lines=${2:-} more_toml=${3:-}
    FG_ERROR=""
    cat >"$TMP/flowgate.toml" <<EOF
# Generated by bench/$(basename "$0").
[server]
listen = "127.0.0.1:0"
data_dir = "$TMP/flowgate-data"
workers = $PROXY_WORKERS

[recorder]
flush_interval_ms = 200
$recorder_lines

[providers.upstream]
type = "openai"
base_url = "$UP_URL/v1"
api_key = "bench"

[models."$model"]
providers = [{ provider = "upstream", model = "gpt-4o-mini", input_per_mtok = 0.15, output_per_mtok = 0.60 }]

$more_toml
EOF
    cp "$TMP/flowgate.toml" "$OUT/flowgate.toml"
    if ! "$FLOWGATE" check-config --config "$TMP/flowgate.toml" >"$OUT/flowgate-check-config.txt" 2>&1; then
        FG_ERROR="flowgate check-config failed: $(cat "$OUT/flowgate-check-config.txt")"
        return 1
    fi
    "$FLOWGATE" serve --config "$TMP/flowgate.toml" >"$OUT/flowgate.stdout" 2>"$OUT/flowgate.stderr" &
    FG_PID=$!
    PIDS+=("$FG_PID")
    if ! wait_listening flowgate "$FG_PID" "$OUT/flowgate.stdout" "$OUT/flowgate.stderr"; then
        FG_ERROR=$LISTEN_ERROR
        return 1
    fi
    FG_URL=$LISTEN_URL
}

metric() { # NAME -> value of an unlabelled flowgate metric (0 if absent)
    { curl -sS --max-time 5 "$FG_URL/metrics" || true; } | awk -v n="$1" '$1 == n { v = $2 } END { print (v == "" ? 0 : v) }'
}

# wait_recorder EXPECTED: waits (max 30 s) until flowgate_runs_recorded_total >= EXPECTED or
# stops moving for 3 s; sets RECORDED and RECORDER_WAIT (seconds waited).
wait_recorder() {
    local expected=$1 last=-1 still=0 i start now
    start=$(date +%s.%N)
    for ((i = 0; i < 300; i++)); do
        RECORDED=$(metric flowgate_runs_recorded_total)
        RECORDED=${RECORDED%.*}
        if ((RECORDED >= expected)); then break; fi
        if ((RECORDED == last)); then
            still=$((still + 1))
            ((still >= 30)) && break
        else
            still=0
        fi
        last=$RECORDED
        sleep 0.1
    done
    now=$(date +%s.%N)
    RECORDER_WAIT=$(awk -v a="$start" -v b="$now" 'BEGIN { printf "%.1f", b - a }')
}

# ---------------------------------------------------------------------------------------------
# CPU accounting.
# ---------------------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { # pid... -> utime + stime (all threads) in clock ticks
    local total=0 p a
    for p in "$@"; do
        [[ -n $p && -r /proc/$p/stat ]] || continue
        read -r -a a <<<"$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null)" || continue
        ((${#a[@]} > 12)) && total=$((total + a[11] + a[12]))
    done
    echo "$total"
}
descendants() { # pid -> the pid and all its descendants, one a line
    local p
    echo "$1"
    for p in $(pgrep -P "$1" || true); do descendants "$p"; done
}
machine_ticks() { # prefix -> sets ${prefix}_BUSY and ${prefix}_TOTAL (clock ticks since boot)
    local u n sy i w irq sirq st
    read -r _ u n sy i w irq sirq st _ </proc/stat
    printf -v "${1}_BUSY" '%s' $((u + n + sy + irq + sirq + st))
    printf -v "${1}_TOTAL" '%s' $((u + n + sy + irq + sirq + st + i + w))
}
# children_us VAR: sets VAR to the CPU microseconds of this shell's waited-for children (the load
# tool). Not in a $(...): a subshell's `times` does not see its parent's children.
children_us() {
    times >"$TMP/times"
    printf -v "$1" '%s' "$(awk 'NR == 2 { t = 0; for (f = 1; f <= 2; f++) { split($f, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }; printf "%d", t * 1000000 }' "$TMP/times")"
}

# wait_idle SECONDS: waits (up to SECONDS) for the machine to be quiet — with 2 cores, a compile
# running beside the benchmark halves every figure; sets IDLE_BUSY (% busy over the last 2 s).
wait_idle() {
    local deadline=$((SECONDS + $1))
    while :; do
        machine_ticks I0
        sleep 2
        machine_ticks I1
        IDLE_BUSY=$(awk -v b=$((I1_BUSY - I0_BUSY)) -v t=$((I1_TOTAL - I0_TOTAL)) 'BEGIN { printf "%.0f", (t > 0 ? 100 * b / t : 0) }')
        ((IDLE_BUSY <= 15 || SECONDS >= deadline)) && break
        echo "machine CPU ${IDLE_BUSY}% busy before the load (other programs); waiting for it to quieten..." >&2
    done
}

machine_description() { # -> "N cores (CPU model), M GiB"
    echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
}

git_revision() { # -> short commit of the checkout, flagged if it has uncommitted changes
    local rev
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$ROOT" --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        rev="$rev (+ uncommitted changes)"
    fi
    echo "$rev"
}

median() { median_as %.2f; }     # numbers on stdin -> their median (n/a if none or not numbers)
median_raw() { median_as %.6g; } # the same, a mean of two not rounded to 2 decimals
median_as() { # printf format of a mean of two; numbers on stdin -> their median
    sort -g | awk -v f="$1" '{ v[NR] = $1 } END {
        if (NR == 0 || v[1] == "n/a") print "n/a"
        else if (NR % 2) print v[(NR + 1) / 2]
        else printf f, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
