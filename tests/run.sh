#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the end-to-end tests with the
# official `openai` Python SDK (and `instructor`) against the real binary and the mock upstream,
# and the web UI in headless Chromium (tests/e2e/test_ui.py, Playwright).
set -euo pipefail
cd "$(dirname "$0")/.."

# A PostgreSQL server for the PostgreSQL backend's tests (started here if none answers).
source tests/postgres.sh
echo "PostgreSQL tests on ${FLOWGATE_TEST_DATABASE_URL}"
# A Redis server for the limits shared across instances (started here if none answers).
source tests/redis.sh
echo "Redis tests on ${FLOWGATE_TEST_REDIS_URL}"

cargo build --workspace --bins
cargo test --workspace

# Prometheus and promtool (Debian's `prometheus` package: only its binaries are used) for the
# dashboard and alert-rule tests, which fail without them.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  as_root=""
  if [ "$(id -u)" -ne 0 ]; then as_root=sudo; fi
  $as_root apt-get update
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
fi

# HAProxy (Debian's `haproxy` package) for the multi-instance tests (tests/e2e/test_ha.py,
# which run deploy/haproxy.cfg in front of three instances); they fail without it.
if ! command -v haproxy >/dev/null 2>&1; then
  as_root=""
  if [ "$(id -u)" -ne 0 ]; then as_root=sudo; fi
  $as_root apt-get update
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy
fi

# The web UI's browser tests drive Debian's Chromium (Playwright's own browser downloads are
# not used). A missing browser fails those tests; it is installed here when it can be.
if [ -z "${CHROMIUM_BIN:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
  else
    echo "chromium is missing and cannot be installed: the browser tests will fail" >&2
  fi
fi

# Python end-to-end suite, in a venv of its own.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import openai, instructor, pytest, yaml, playwright' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r tests/e2e/requirements.txt
fi
export FLOWGATE_BIN="$PWD/target/debug/flowgate"
export MOCK_UPSTREAM_BIN="$PWD/target/debug/flowgate-mock-upstream"
.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider
