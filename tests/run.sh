#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the end-to-end tests with the
# official `openai` Python SDK (and `instructor`) against the real binary and the mock upstream.
set -euo pipefail
cd "$(dirname "$0")/.."

# A PostgreSQL server for the PostgreSQL backend's tests (started here if none answers).
source tests/postgres.sh
echo "PostgreSQL tests on ${FLOWGATE_TEST_DATABASE_URL}"

cargo build --workspace --bins
cargo test --workspace

# Python end-to-end suite, in a venv of its own.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import openai, instructor, pytest' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r tests/e2e/requirements.txt
fi
export FLOWGATE_BIN="$PWD/target/debug/flowgate"
export MOCK_UPSTREAM_BIN="$PWD/target/debug/flowgate-mock-upstream"
.venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider
