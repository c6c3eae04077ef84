#!/usr/bin/env bash
# Attribution throughput and memory benchmark: generates a log (default 10M clicks and 200k
# conversions), then attributes it from scratch on one thread in a separate process, so the
# peak RSS printed by the run phase is attribution's alone.
#
#   benches/attribution.sh                  # full size, temp dir removed afterwards
#   CLICKS=200000 CONVERSIONS=4000 benches/attribution.sh
#   DIR=/tmp/attr-log benches/attribution.sh   # a given DIR is kept: re-run `attribution run DIR` on it
#
# Targets: >= 500,000 events/s and peak RSS < 512 MiB for the run phase.
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -p tally-benches --bin attribution
bin="${CARGO_TARGET_DIR:-target}/release/attribution"

if [[ -n "${DIR:-}" ]]; then
    dir=$DIR # given: kept afterwards
else
    tmp=$(mktemp -d /tmp/tally-attribution-bench.XXXXXX)
    dir=$tmp/data
    cleanup() { [[ -n "${KEEP:-}" ]] && echo "kept $dir" || rm -rf "$tmp"; }
fi
[[ -n "${tmp:-}" ]] && trap cleanup EXIT

df -h "$(dirname "$dir")" | tail -1 | awk '{print "free space under " $6 ": " $4}'
"$bin" gen "$dir"
"$bin" run "$dir"
"$bin" replay "$dir"
