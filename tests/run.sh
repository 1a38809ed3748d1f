#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the end-to-end tests with the
# official `openai` Python SDK (and `instructor`) against the real binary and the mock upstream,
# and the web UI in headless Chromium (tests/e2e/test_ui.py, Playwright).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
cargo test --workspace

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
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import openai, instructor, pytest, playwright' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r tests/e2e/requirements.txt
fi
export FLOWGATE_BIN="$PWD/target/debug/flowgate"
export MOCK_UPSTREAM_BIN="$PWD/target/debug/flowgate-mock-upstream"
.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider
