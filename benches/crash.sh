#!/usr/bin/env bash
# Long run of the crash harness (crates/tally-cli/tests/cli/crash.rs): SIGKILL `tally serve`
# KILLS times per sync policy while clients drive clicks and postbacks, then check the log
# against every client's history (lost, duplicated, gaps, unexpected) and `tally verify`.
# The CI run of the same tests uses 5 kills and ~2 000 events per policy.
#
# Usage (from the repository root):
#   benches/crash.sh                          # 200 kills, 1 000 000 acknowledged per policy
#   KILLS=20 EVENTS=50000 benches/crash.sh
#
# Knobs (environment):
#   KILLS    kills per sync policy                          (default 200)
#   EVENTS   acknowledged events to aim for, per policy     (default 1000000)
#   CLIENTS  concurrent keep-alive clients                  (default 8)
#   SEED     seed for the kill moments                      (default: the clock)
#
# Prints one line per policy: kills, seconds, attempted / acknowledged / failed / timed out /
# stored, and lost / duplicated / gaps / unexpected (all must be 0; the test fails otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
export TALLY_CRASH_KILLS="${KILLS:-200}"
export TALLY_CRASH_EVENTS="${EVENTS:-1000000}"
export TALLY_CRASH_CLIENTS="${CLIENTS:-8}"
if [[ -n "${SEED:-}" ]]; then export TALLY_CRASH_SEED="$SEED"; fi
# The test build: the harness needs the binary built with tally-log's `test-util` feature
# only for its negative control, which is skipped here by the test filter.
exec cargo test --workspace crash_harness_sigkill -- --nocapture --test-threads 1
