#!/usr/bin/env bash
# Program management at scale (issue 26): imports AFFILIATES (default 100,000) ambassadors with
# a link and a coupon each through the admin API of an in-process server, then times one edit
# with that many in force and a restart. Prints figures; asserts none.
#
#   benches/program.sh
#   AFFILIATES=10000 benches/program.sh
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -p tally-benches --bin program
"${CARGO_TARGET_DIR:-target}/release/program"
