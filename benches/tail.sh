#!/usr/bin/env bash
# Where the redirect path's latency tail comes from: back-to-back wrk runs against one Tally
# server, one line per run, so runs in which RocksDB flushes a memtable stand out.
#
# Per run it prints req/s, p99 and max (wrk), the CPU time of RocksDB's flush ("high") and
# compaction ("low") threads in clock ticks (a flush ran when `hi` is not 0), how many log
# commits took longer than 1.28 ms and 5.12 ms (tally_log_commit_duration_seconds from the
# admin listener: is the writer itself held up?) and the host's steal time in ticks summed
# over CPUs (/proc/stat: was the virtual machine descheduled by its hypervisor?).
#
# Usage (run as root on a Debian machine with the Rust toolchain):
#   benches/tail.sh                                   # 12 runs of 2 s
#   RUNS=3 SECS=10 TALLY_BIN=target/release/tally benches/tail.sh
#
# Knobs (environment): TALLY_BIN (default: cargo build --release -p tally-cli), RUNS (12),
# SECS (2), CONNECTIONS (50), TALLY_WORKERS (1, as benches/load.sh). Attribution is off: the
# ingest path alone. The script reports figures and exits 0 on a completed measurement.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${RUNS:-12}"
SECS="${SECS:-2}"
CONNECTIONS="${CONNECTIONS:-50}"
TALLY_WORKERS="${TALLY_WORKERS:-1}"

die() { printf '[tail] error: %s\n' "$*" >&2; exit 1; }
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || die "SECS must be a positive number of seconds (got '$SECS')"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer (got '$CONNECTIONS')"

# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
pkgs=()
command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
[[ ${#pkgs[@]} -gt 0 ]] && apt_install "${pkgs[@]}"

if [[ -z "${TALLY_BIN:-}" || ! -x "${TALLY_BIN}" ]]; then
    ensure_toolchain
    ensure_build_deps
    (cd "$REPO" && cargo build --release -p tally-cli)
    TALLY_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/tally"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tally-tail.XXXXXX")"
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

read -r PORT ADMIN < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])' 2>/dev/null || echo 18181 19464)

mkdir -p "$TMP/config"
cp "$REPO/config/program.toml" "$TMP/config/"
sed -e 's/^in_process = .*/in_process = false/' -e 's/^level = .*/level = "warn"/' \
    -e "s/^listen = \"127.0.0.1:9464\"/listen = \"127.0.0.1:$ADMIN\"/" \
    "$REPO/config/tally.toml" >"$TMP/config/tally.toml"
grep -q "127.0.0.1:$ADMIN" "$TMP/config/tally.toml" || die "could not move the admin listener in the config copy"
# The example program names its advertisers' credentials; clicks only here, so any values do.
export TALLY_SECRET_ACME_TOKEN=bench-acme-token-0123456789 TALLY_SECRET_ACME_HMAC=bench-acme-hmac-0123456789 \
    TALLY_SECRET_GLOBEX_TOKEN=bench-globex-token-0123456789

ulimit -n 65536 2>/dev/null || true
TALLY_WORKER_THREADS="$TALLY_WORKERS" "$TALLY_BIN" serve --config "$TMP/config/tally.toml" \
    --listen "127.0.0.1:$PORT" --data-dir "$TMP/data" >"$TMP/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$PORT/readyz" && break
    kill -0 "$PID" 2>/dev/null || { cat "$TMP/server.log" >&2; die "tally exited before becoming ready"; }
    sleep 0.1
done
curl -fs -o /dev/null "http://127.0.0.1:$ADMIN/metrics" || die "no metrics on 127.0.0.1:$ADMIN"

commits() { # commits at or under 1.28 ms, at or under 5.12 ms, all
    curl -fs "http://127.0.0.1:$ADMIN/metrics" | awk '
        /^tally_log_commit_duration_seconds_bucket\{le="0.00128"\}/ { a = $2 }
        /^tally_log_commit_duration_seconds_bucket\{le="0.00512"\}/ { b = $2 }
        /^tally_log_commit_duration_seconds_count/ { c = $2 }
        END { print a + 0, b + 0, c + 0 }'
}
bg_ticks() { # utime + stime of RocksDB's high- and low-priority pool threads
    local hi=0 lo=0 t name ticks
    for t in /proc/"$PID"/task/*; do
        name="$(cat "$t/comm" 2>/dev/null)" || continue
        ticks="$(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null)" || continue
        case "$name" in rocksdb:high*) hi=$((hi + ticks)) ;; rocksdb:low*) lo=$((lo + ticks)) ;; esac
    done
    echo "$hi $lo"
}
steal() { awk '/^cpu / { print $9 }' /proc/stat; }

printf '%-4s %10s %9s %9s %4s %4s %8s %8s %6s\n' run req/s p99 max hi lo '>1.28ms' '>5.12ms' steal
read -r a0 b0 c0 < <(commits)
read -r h0 l0 < <(bg_ticks)
s0="$(steal)"
for r in $(seq "$RUNS"); do
    out="$(wrk -t1 -c"$CONNECTIONS" -d"${SECS}s" --latency "http://127.0.0.1:$PORT/c/demo?sub1=bench" 2>&1)"
    rps="$(awk '/Requests\/sec/ { print $2 }' <<<"$out")"
    p99="$(awk '$1 == "99%" { print $2 }' <<<"$out")"
    max="$(awk '/Latency/ { print $4; exit }' <<<"$out")"
    read -r a b c < <(commits)
    read -r h l < <(bg_ticks)
    s="$(steal)"
    printf '%-4s %10s %9s %9s %4d %4d %8d %8d %6d\n' "$r" "${rps:-?}" "${p99:-?}" "${max:-?}" \
        $((h - h0)) $((l - l0)) $(((c - a) - (c0 - a0))) $(((c - b) - (c0 - b0))) $((s - s0))
    a0=$a b0=$b c0=$c h0=$h l0=$l s0=$s
done
