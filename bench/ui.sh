#!/usr/bin/env bash
# Times the web UI's pages with 1,000,000 runs stored: loads a data directory the way the
# recorder writes it (runs, stats aggregates, versions and their statistics: the
# `ui_bench_load` example, on `search_bench`'s synthetic runs, spread over 30 days), starts the
# release binary on it (no keys: the loopback default, no sign-in) and requests each page
# UI_REQUESTS times over one kept-alive connection. Prints p50 / p99 / max per page and flags
# those over the target (20 ms). Figures only: passes or fails nothing. 127.0.0.1 only.
#
#   bash bench/ui.sh                      # 1M runs in bench/results/ui-data (kept, reused)
#   UI_RUNS=200000 UI_DIR=/tmp/ui bash bench/ui.sh
#   UI_SKIP_BUILD=1 UI_REQUESTS=100 bash bench/ui.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${UI_RUNS:-1000000}
DIR=${UI_DIR:-$ROOT/bench/results/ui-data-$RUNS}
REQUESTS=${UI_REQUESTS:-200}
TARGET_MS=${UI_TARGET_MS:-20}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$ROOT/bench/results"
OUT=$ROOT/bench/results/ui-$STAMP.txt

if [ -z "${UI_SKIP_BUILD:-}" ]; then
  cargo build --release -p flowgate --bin flowgate
  cargo build --release -p flowgate-actors --example ui_bench_load
fi
"$ROOT/target/release/examples/ui_bench_load" "$RUNS" "$DIR" | tee "$OUT"

TMP=$(mktemp -d)
FLOWGATE_PID=
cleanup() {
  if [ -n "$FLOWGATE_PID" ]; then kill "$FLOWGATE_PID" 2>/dev/null || true; wait "$FLOWGATE_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
cat > "$TMP/flowgate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
data_dir = "$DIR"

[providers.mock]
type = "mock"
EOF
FLOWGATE_LOG=warn "$ROOT/target/release/flowgate" serve --config "$TMP/flowgate.toml" \
  > "$TMP/stdout" 2> "$TMP/stderr" &
FLOWGATE_PID=$!
for _ in $(seq 1 600); do
  grep -q "listening on" "$TMP/stdout" 2>/dev/null && break
  sleep 0.1
done
URL=$(grep -o 'http://[0-9.:]*' "$TMP/stdout" | head -1)
[ -n "$URL" ] || { echo "flowgate did not start:"; cat "$TMP/stderr"; exit 1; }
echo "flowgate (pid $FLOWGATE_PID) on $URL; load: $(uptime | sed 's/.*load average: //')" | tee -a "$OUT"
[ -n "${UI_PAUSE:-}" ] && { echo "paused: press Enter to time the pages"; read -r _; }

python3 - "$URL" "$DIR/ui-bench.txt" "$REQUESTS" "$TARGET_MS" <<'PY' | tee -a "$OUT"
import http.client, random, sys, time, urllib.parse

url, samples, requests, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
host = urllib.parse.urlparse(url)
runs, cursors = [], {}
for line in open(samples):
    kind, value = line.split(" ", 1)
    if kind == "run":
        runs.append(value.strip())
    else:
        cursors[kind] = value.strip()
q = urllib.parse.quote
pages = [
    ("agents list", lambda i: "/agents"),
    ("runs of an agent, first page", lambda i: "/agents/support-bot/runs"),
    ("runs of an agent, deep page", lambda i: f"/agents/support-bot/runs?cursor={cursors['runs_cursor']}"),
    ("runs, filtered (model + status)", lambda i: "/agents/support-bot/runs?f=" + q(f"model|is|{['gpt-4o', 'claude-sonnet-4-5', 'gemini-2.5-pro', 'mistral-large'][i % 4]}") + "&f=" + q(["status|is|success", "status|is|error"][i % 2])),
    ("all runs, first page", lambda i: "/runs"),
    ("run detail", lambda i: f"/runs/{runs[i % len(runs)]}"),
    ("versions, first page", lambda i: "/agents/support-bot/versions"),
    ("versions, deep page", lambda i: f"/agents/support-bot/versions?cursor={q(cursors.get('versions_cursor', ''))}"),
    ("versions of a templated agent", lambda i: "/agents/agent-3/versions"),
    ("cost, 7 days", lambda i: "/cost?days=7"),
    ("cost, 30 days", lambda i: "/cost?days=30"),
    ("providers", lambda i: "/providers"),
]
conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
print(f"{'page':36} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'KiB':>6}")
over = []
for name, path in pages:
    timings, size = [], 0
    for i in range(requests + 5):
        started = time.perf_counter()
        conn.request("GET", path(i))
        response = conn.getresponse()
        body = response.read()
        took = (time.perf_counter() - started) * 1000
        if response.status != 200:
            print(f"{name}: HTTP {response.status} for {path(i)}: {body[:300]!r}")
            sys.exit(1)
        if i >= 5:  # the first few warm the caches up
            timings.append(took)
            size = len(body)
    timings.sort()
    p50 = timings[len(timings) // 2]
    p99 = timings[min(len(timings) - 1, round((len(timings) - 1) * 0.99))]
    flag = "  <-- over %g ms" % target if p99 >= target else ""
    if p99 >= target:
        over.append(name)
    print(f"{name:36} {p50:8.2f} {p99:8.2f} {timings[-1]:8.2f} {size / 1024:6.0f}{flag}")
print(f"{requests} requests per page, one kept-alive connection, time to the last byte on 127.0.0.1")
print("over target (p99): " + (", ".join(over) if over else "none"))
PY
echo "load after: $(uptime | sed 's/.*load average: //')" | tee -a "$OUT"
echo "figures kept in $OUT"
