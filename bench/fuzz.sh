#!/usr/bin/env bash
# A longer run of the property tests of the parsers that take untrusted input (request bodies,
# model strings, SSE and Bedrock event-stream decoding, JSON extraction, templates). The test
# suite runs them with proptest's default case count; this runs each with PROPTEST_CASES
# (default 20000) and prints how long each took (debug builds: the test profile compiles
# in seconds, the release one with fat LTO in minutes). A failure prints the minimal failing input:
# fix the bug and keep the input as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-20000}"
cargo build --workspace --tests --quiet
for filter in provider::sse provider::bedrock::tests::decoding_properties \
  structured::tests::extraction_properties model_ref::tests::properties \
  templates::tests::properties; do
  start=$(date +%s%N)
  cargo test --quiet -p flowgate-actors --lib -- "$filter" >/dev/null
  printf '%-50s %6d cases  %6d ms\n' "$filter" "$PROPTEST_CASES" $(( ($(date +%s%N) - start) / 1000000 ))
done
start=$(date +%s%N)
cargo test --quiet -p flowgate --bin flowgate -- http::chat::tests::properties >/dev/null
printf '%-50s %6d cases  %6d ms\n' "http::chat::tests::properties" "$PROPTEST_CASES" $(( ($(date +%s%N) - start) / 1000000 ))
