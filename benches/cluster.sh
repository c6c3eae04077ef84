#!/usr/bin/env bash
# Cluster benchmark: Tally's edges shipping through NATS JetStream to the attribution tier.
#
# On 127.0.0.1, in one run, with the same wrk load (GET /c/demo, bare requests):
#   A. a single node (`tally serve`, no bus): redirects/s and p99, the baseline;
#   B0. one edge with [bus] and NATS, the tier not running: what shipping costs the redirect
#      path (the edge against A);
#   B. one edge with [bus] and the tier (`tally attribute --bus`): the edge's redirects/s and
#      p99 against A's, the shipping lag under load (max events and seconds behind), and
#      end-to-end events/s (events the edge took ÷ the time until the tier's merged log held
#      them all);
#   C. two edges and the tier, both edges loaded at once: redirects/s per edge against A's,
#      and end-to-end events/s;
#   D. a backlog: NATS stopped, an edge takes BACKLOG clicks (its log is the buffer), NATS
#      starts again: the time to drain the backlog (ship lag to zero) and until the tier
#      has merged it.
# Each phase uses its own stream, so phases do not see each other's events. Everything
# shares this machine's CPUs (wrk, the edges, NATS and the tier): the figures say what one
# machine does, and what limits each is printed with it.
#
# Usage (as root on a Debian machine with the Rust toolchain):
#   benches/cluster.sh
#   DURATION=20s BACKLOG=1000000 NATS_NODES=3 benches/cluster.sh
#   TALLY_BIN=target/release/tally benches/cluster.sh      # skip the cargo build
#
# Knobs (environment):
#   TALLY_BIN      existing tally binary; if unset, `cargo build --release -p tally-cli`
#   TALLY_WORKERS  HTTP worker threads per Tally process                        (default 1)
#   CONNECTIONS    wrk connections per edge                                     (default 50)
#   DURATION       wrk duration of phases A, B, C (wrk syntax: 10s, 1m)          (default 10s)
#   BACKLOG        clicks taken while NATS is down in phase D; 0 skips D        (default 1000000)
#   NATS_NODES     1, or 3 for a clustered JetStream with 3 replicas            (default 1)
#   PIN=1          CPU 1 for each Tally's HTTP thread and log writer, CPU 0 for everything
#                  else (wrk, NATS, the tier, and an edge's shipper and program threads):
#                  A against B0 then compares the redirect path on a CPU of its own
#                  (default 0: no pinning; needs 2 CPUs)
#   KEEP_TMP=1     keep the temp dir (configs, logs, data) for inspection
#
# Exits 0 on a completed measurement whatever the figures; non-zero only when it could not
# measure.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
TALLY_WORKERS="${TALLY_WORKERS:-1}"
CONNECTIONS="${CONNECTIONS:-50}"
DURATION="${DURATION:-10s}"
BACKLOG="${BACKLOG:-1000000}"
NATS_NODES="${NATS_NODES:-1}"
KEEP_TMP="${KEEP_TMP:-0}"
PIN="${PIN:-0}"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

[[ "$NATS_NODES" == 1 || "$NATS_NODES" == 3 ]] || die "NATS_NODES must be 1 or 3 (got '$NATS_NODES')"
[[ "$DURATION" =~ ^[1-9][0-9]*[smh]?$ ]] || die "DURATION must look like 10, 10s or 2m (got '$DURATION')"
[[ "$BACKLOG" =~ ^[0-9]+$ ]] || die "BACKLOG must be a whole number (got '$BACKLOG')"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer (got '$CONNECTIONS')"

# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
NATS_BIN="$(command -v nats-server 2>/dev/null || echo /usr/sbin/nats-server)"
pkgs=()
command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
[[ -x "$NATS_BIN" ]] || pkgs+=(nats-server)
if [[ -z "${TALLY_BIN:-}" ]]; then dpkg -s libclang-dev >/dev/null 2>&1 || pkgs+=(libclang-dev); fi
if [[ ${#pkgs[@]} -gt 0 ]]; then apt_install --no-install-recommends "${pkgs[@]}"; fi
NATS_BIN="$(command -v nats-server 2>/dev/null || echo /usr/sbin/nats-server)"

if [[ -z "${TALLY_BIN:-}" ]]; then
    log "building tally (release)"
    ensure_toolchain
    (cd "$REPO" && cargo build --release -p tally-cli)
    TALLY_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/tally"
fi
[[ -x "$TALLY_BIN" ]] || die "no tally binary at $TALLY_BIN"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tally-cluster.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ulimit -n 65536 2>/dev/null || true

# With PIN=1: the CPU list each kind of process runs on.
pin() { # $1 = http|other
    if [[ "$PIN" == 1 ]]; then
        if [[ "$1" == http ]]; then echo "taskset -c 1"; else echo "taskset -c 0"; fi
    fi
}
start_bg() { # $1 = log file, rest = command; sets BG_PID
    local out="$1"; shift
    setsid "$@" </dev/null >"$out" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}
stop_pid() { # graceful, then forced
    local pid=$1 i
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
}
free_ports() { # $1 = how many
    python3 -c '
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}
wait_port() { # $1 = port
    local i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after 30 s"
}
metric() { # $1 = port, $2 = metric name: its value, or empty
    # awk reads to the end: exiting early would make curl fail on a closed pipe (pipefail).
    curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m && !seen { print $2; seen = 1 }'
}
now() { date +%s.%N; }

# The example config, attribution out of the process (edges of a cluster never attribute;
# the single node is measured on its ingest path alone, as benches/load.sh does).
mkdir -p "$TMP/config"
cp "$REPO/config/program.toml" "$TMP/config/"
sed -e "s/^in_process = .*/in_process = false/" -e "s/^replicas = .*/replicas = $NATS_NODES/" \
    "$REPO/config/tally.toml" >"$TMP/config/tally.toml"
CONFIG="$TMP/config/tally.toml"
export TALLY_SECRET_ACME_TOKEN=bench-acme-token-0123456789 TALLY_SECRET_ACME_HMAC=bench-acme-hmac-0123456789 \
    TALLY_SECRET_GLOBEX_TOKEN=bench-globex-token-0123456789 TALLY_SECRET_CUSTOMER_KEY=bench-customer-key-0123456789

# --- NATS ---------------------------------------------------------------------------------
read -r -a NATS_PORTS <<<"$(free_ports $((2 * NATS_NODES)))"
NATS_PIDS=()
NATS_URLS=""
start_nats() {
    local i client cluster routes j
    NATS_PIDS=()
    for ((i = 0; i < NATS_NODES; i++)); do
        client=${NATS_PORTS[$((2 * i))]} cluster=${NATS_PORTS[$((2 * i + 1))]}
        {
            echo "server_name: n$i"
            echo "listen: 127.0.0.1:$client"
            echo "jetstream { store_dir: \"$TMP/nats/n$i\" }"
            if [[ $NATS_NODES -gt 1 ]]; then
                routes=""
                for ((j = 0; j < NATS_NODES; j++)); do
                    [[ $j -eq $i ]] || routes+="nats-route://127.0.0.1:${NATS_PORTS[$((2 * j + 1))]},"
                done
                echo "cluster { name: bench, listen: 127.0.0.1:$cluster, routes: [${routes%,}] }"
            fi
        } >"$TMP/nats-$i.conf"
        # shellcheck disable=SC2046
        start_bg "$TMP/nats-$i.log" $(pin other) "$NATS_BIN" -c "$TMP/nats-$i.conf"
        NATS_PIDS+=("$BG_PID")
    done
    for ((i = 0; i < NATS_NODES; i++)); do wait_port "${NATS_PORTS[$((2 * i))]}"; done
    # JetStream in a cluster needs its meta leader before streams can be made.
    [[ $NATS_NODES -gt 1 ]] && sleep 5
    return 0
}
stop_nats() { local pid; for pid in "${NATS_PIDS[@]}"; do stop_pid "$pid"; done; }
for ((i = 0; i < NATS_NODES; i++)); do NATS_URLS+="nats://127.0.0.1:${NATS_PORTS[$((2 * i))]},"; done
NATS_URLS="${NATS_URLS%,}"

# --- Tally --------------------------------------------------------------------------------
start_edge() { # $1 = node id (0 = single node, no bus), $2 = stream; sets EDGE_PORT, ADMIN_PORT, EDGE_PID
    local node=$1 stream=$2 ports
    read -r EDGE_PORT ADMIN_PORT <<<"$(free_ports 2)"
    ports=(--listen "127.0.0.1:$EDGE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" --worker-threads "$TALLY_WORKERS")
    if [[ $node -eq 0 ]]; then
        # shellcheck disable=SC2046
        start_bg "$TMP/single.log" $(pin http) "$TALLY_BIN" serve --config "$CONFIG" --data-dir "$TMP/single" "${ports[@]}"
    else
        # shellcheck disable=SC2046
        start_bg "$TMP/edge-$stream-$node.log" $(pin http) env TALLY_SERVER_NODE_ID="$node" TALLY_BUS_STREAM="$stream" \
            TALLY_BUS_SUBJECT_PREFIX="$stream" \
            "$TALLY_BIN" serve --config "$CONFIG" --data-dir "$TMP/edge-$stream-$node" --bus "$NATS_URLS" "${ports[@]}"
    fi
    EDGE_PID=$BG_PID
    wait_port "$EDGE_PORT"
    wait_port "$ADMIN_PORT"
    if [[ "$PIN" == 1 ]]; then # the bus's threads off the redirect path's CPU
        local t
        for t in /proc/"$EDGE_PID"/task/*; do
            case "$(cat "$t/comm" 2>/dev/null)" in
                tally-shipper | tally-program) taskset -pc 0 "${t##*/}" >/dev/null ;;
            esac
        done
    fi
}
start_tier() { # $1 = stream; sets TIER_PORT, TIER_PID
    read -r TIER_PORT <<<"$(free_ports 1)"
    # shellcheck disable=SC2046
    start_bg "$TMP/tier-$1.log" $(pin other) env TALLY_BUS_STREAM="$1" TALLY_BUS_SUBJECT_PREFIX="$1" "$TALLY_BIN" attribute --config "$CONFIG" \
        --data-dir "$TMP/tier-$1" --bus "$NATS_URLS" --metrics-listen "127.0.0.1:$TIER_PORT"
    TIER_PID=$BG_PID
    wait_port "$TIER_PORT"
}
run_wrk() { # $1 = port, $2 = output file, $3 = duration
    # shellcheck disable=SC2046
    $(pin other) wrk -t1 -c"$CONNECTIONS" -d"$3" --latency "http://127.0.0.1:$1/c/demo?sub1=bench" >"$2" 2>&1
}
rps() { awk '/^Requests\/sec:/ { print int($2) }' "$1"; }
p99() { awk '$1 == "99%" { print $2 }' "$1"; }
# Samples an edge's ship lag every 0.2 s into $2 (events seconds) until $3 (a pid) exits.
sample_lag() {
    while kill -0 "$3" 2>/dev/null; do
        echo "$(metric "$1" tally_bus_ship_lag_events) $(metric "$1" tally_bus_ship_lag_seconds)" >>"$2"
        sleep 0.2
    done
}
max_col() { awk -v c="$2" 'BEGIN { m = 0 } $c != "" && $c + 0 > m { m = $c + 0 } END { print m }' "$1"; }
# Waits until the tier's merged log holds $2 events; prints the seconds it took from $3.
wait_merged() {
    local port=$1 want=$2 since=$3 have i
    for ((i = 0; i < 6000; i++)); do
        have=$(metric "$port" tally_log_last_sequence)
        [[ -n "$have" && "$have" -ge "$want" ]] && { echo "$(now) - $since" | bc -l; return 0; }
        sleep 0.1
    done
    die "the tier merged ${have:-0} of $want events in 10 minutes"
}
ratio() { echo "scale=2; $1 / $2" | bc -l; }
# CPU seconds (user + system) of a process, or of its threads named $2.
cpu_secs() { # $1 = pid, $2 = thread name (optional)
    local tick total=0 t name
    tick=$(getconf CLK_TCK)
    for t in /proc/"$1"/task/*; do
        name=$(cat "$t/comm" 2>/dev/null) || continue
        [[ -n "${2:-}" && "$name" != "$2" ]] && continue
        # Fields 14 and 15 of stat, after the parenthesised name (which may hold spaces).
        total=$((total + $(sed 's/^.*) //' "$t/stat" | awk '{ print $12 + $13 }')))
    done
    echo "scale=2; $total / $tick" | bc -l
}
command -v bc >/dev/null 2>&1 || apt_install --no-install-recommends bc

log "tally $("$TALLY_BIN" --version 2>/dev/null | head -1); nats-server $("$NATS_BIN" --version | awk '{print $2}'); $NATS_NODES NATS node(s); $(nproc) CPUs"

# --- A. single node -----------------------------------------------------------------------
log "A: single node, $DURATION at $CONNECTIONS connections"
start_edge 0 -
a_cpu0=$(cpu_secs "$EDGE_PID")
run_wrk "$EDGE_PORT" "$TMP/wrk-a.txt" "$DURATION"
A_RPS=$(rps "$TMP/wrk-a.txt") A_P99=$(p99 "$TMP/wrk-a.txt")
A_CPU=$(echo "$(cpu_secs "$EDGE_PID") - $a_cpu0" | bc -l)
A_EVENTS=$(metric "$ADMIN_PORT" tally_log_last_sequence)
stop_pid "$EDGE_PID"

start_nats

# --- B0. one edge shipping, no tier -------------------------------------------------------
# What shipping costs the redirect path: the edge and NATS, without the tier's CPU.
log "B0: one edge with the bus, the tier not running"
start_edge 1 BENCH_B0
nats_cpu0=$(cpu_secs "${NATS_PIDS[0]}") edge_cpu0=$(cpu_secs "$EDGE_PID") ship_cpu0=$(cpu_secs "$EDGE_PID" tally-shipper)
run_wrk "$EDGE_PORT" "$TMP/wrk-b0.txt" "$DURATION"
B0_RPS=$(rps "$TMP/wrk-b0.txt") B0_P99=$(p99 "$TMP/wrk-b0.txt")
B0_NATS_CPU=$(echo "$(cpu_secs "${NATS_PIDS[0]}") - $nats_cpu0" | bc -l)
B0_EDGE_CPU=$(echo "$(cpu_secs "$EDGE_PID") - $edge_cpu0" | bc -l)
B0_SHIP_CPU=$(echo "$(cpu_secs "$EDGE_PID" tally-shipper) - $ship_cpu0" | bc -l)
B0_EVENTS=$(metric "$ADMIN_PORT" tally_log_last_sequence)
stop_pid "$EDGE_PID"

# --- B. one edge and the tier -------------------------------------------------------------
log "B: one edge with the bus, and the tier"
start_tier BENCH_B
start_edge 1 BENCH_B
EDGE1_ADMIN=$ADMIN_PORT
run_wrk "$EDGE_PORT" "$TMP/wrk-b.txt" "$DURATION" &
WRK=$!
started=$(now)
sample_lag "$EDGE1_ADMIN" "$TMP/lag-b.txt" "$WRK"
wait "$WRK"
B_RPS=$(rps "$TMP/wrk-b.txt") B_P99=$(p99 "$TMP/wrk-b.txt")
B_EVENTS=$(metric "$EDGE1_ADMIN" tally_log_last_sequence)
B_SECS=$(wait_merged "$TIER_PORT" "$B_EVENTS" "$started")
B_LAG_EVENTS=$(max_col "$TMP/lag-b.txt" 1) B_LAG_SECS=$(max_col "$TMP/lag-b.txt" 2)
stop_pid "$EDGE_PID"
stop_pid "$TIER_PID"

# --- C. two edges and the tier ------------------------------------------------------------
log "C: two edges with the bus, loaded at once, and the tier"
start_tier BENCH_C
start_edge 1 BENCH_C
E1=$EDGE_PORT E1_ADMIN=$ADMIN_PORT E1_PID=$EDGE_PID
start_edge 2 BENCH_C
E2=$EDGE_PORT E2_ADMIN=$ADMIN_PORT E2_PID=$EDGE_PID
started=$(now)
run_wrk "$E1" "$TMP/wrk-c1.txt" "$DURATION" &
W1=$!
run_wrk "$E2" "$TMP/wrk-c2.txt" "$DURATION" &
W2=$!
sample_lag "$E1_ADMIN" "$TMP/lag-c.txt" "$W1"
wait "$W1" "$W2"
C1_RPS=$(rps "$TMP/wrk-c1.txt") C2_RPS=$(rps "$TMP/wrk-c2.txt")
C1_P99=$(p99 "$TMP/wrk-c1.txt") C2_P99=$(p99 "$TMP/wrk-c2.txt")
C_EVENTS=$(($(metric "$E1_ADMIN" tally_log_last_sequence) + $(metric "$E2_ADMIN" tally_log_last_sequence)))
C_SECS=$(wait_merged "$TIER_PORT" "$C_EVENTS" "$started")
stop_pid "$E1_PID"
stop_pid "$E2_PID"
stop_pid "$TIER_PID"

# --- D. a backlog -------------------------------------------------------------------------
if [[ "$BACKLOG" -gt 0 ]]; then
    log "D: $BACKLOG clicks while NATS is down, then NATS back"
    start_tier BENCH_D
    start_edge 1 BENCH_D
    sleep 2 # the stream exists and the first program change is shipped
    stop_nats
    run_wrk "$EDGE_PORT" "$TMP/wrk-d.txt" 10m &
    WRK=$!
    while [[ "$(metric "$ADMIN_PORT" tally_bus_ship_lag_events)" -lt "$BACKLOG" ]]; do
        kill -0 "$WRK" 2>/dev/null || die "wrk stopped before the backlog reached $BACKLOG"
        sleep 0.2
    done
    kill "$WRK" 2>/dev/null || true
    wait "$WRK" 2>/dev/null || true
    D_EVENTS=$(metric "$ADMIN_PORT" tally_log_last_sequence)
    D_LAG=$(metric "$ADMIN_PORT" tally_bus_ship_lag_events)
    back=$(now)
    start_nats
    while [[ "$(metric "$ADMIN_PORT" tally_bus_ship_lag_events)" != 0 ]]; do sleep 0.1; done
    D_DRAIN=$(echo "$(now) - $back" | bc -l)
    D_MERGED=$(wait_merged "$TIER_PORT" "$D_EVENTS" "$back")
    stop_pid "$EDGE_PID"
    stop_pid "$TIER_PID"
fi

# --- report -------------------------------------------------------------------------------
printf '\n'
printf 'cluster benchmark: %s CPUs, %s NATS node(s) (replicas %s), %s HTTP thread(s) per Tally, wrk -c%s -d%s%s\n' \
    "$(nproc)" "$NATS_NODES" "$NATS_NODES" "$TALLY_WORKERS" "$CONNECTIONS" "$DURATION" \
    "$([[ "$PIN" == 1 ]] && echo ', pinned: Tally on CPU 1, wrk, NATS, tier and shipper on CPU 0')"
printf '%-44s %10s %8s %8s\n' "" "req/s" "p99" "ratio"
printf '%-44s %10s %8s %8s\n' "A single node" "$A_RPS" "$A_P99" "1.00"
printf '%-44s %10s %8s %8s\n' "B0 one edge, shipping, no tier" "$B0_RPS" "$B0_P99" "$(ratio "$B0_RPS" "$A_RPS")"
printf '%-44s %10s %8s %8s\n' "B one edge, shipping, tier merging" "$B_RPS" "$B_P99" "$(ratio "$B_RPS" "$A_RPS")"
printf '%-44s %10s %8s %8s\n' "C edge 1 of 2, both loaded" "$C1_RPS" "$C1_P99" "$(ratio "$C1_RPS" "$A_RPS")"
printf '%-44s %10s %8s %8s\n' "C edge 2 of 2, both loaded" "$C2_RPS" "$C2_P99" "$(ratio "$C2_RPS" "$A_RPS")"
printf '\n'
printf 'Redirect path CPU per request (the Tally process, the shipper thread left out): A %.2f us, B0 %.2f us\n' \
    "$(echo "$A_CPU * 1000000 / $A_EVENTS" | bc -l)" "$(echo "($B0_EDGE_CPU - $B0_SHIP_CPU) * 1000000 / $B0_EVENTS" | bc -l)"
printf 'B0 CPU for %s events: the edge %.1f s (its shipper thread %.1f s), NATS (node 1) %.1f s: %.1f + %.1f us per event\n' \
    "$B0_EVENTS" "$B0_EDGE_CPU" "$B0_SHIP_CPU" "$B0_NATS_CPU" \
    "$(echo "$B0_SHIP_CPU * 1000000 / $B0_EVENTS" | bc -l)" "$(echo "$B0_NATS_CPU * 1000000 / $B0_EVENTS" | bc -l)"
printf 'B end to end: %s events merged %.1f s after the load began: %.0f events/s\n' "$B_EVENTS" "$B_SECS" "$(echo "$B_EVENTS / $B_SECS" | bc -l)"
printf 'B shipping lag under load: at most %s events, %.2f s\n' "$B_LAG_EVENTS" "$B_LAG_SECS"
printf 'C end to end: %s events from 2 edges merged %.1f s after the load began: %.0f events/s\n' "$C_EVENTS" "$C_SECS" "$(echo "$C_EVENTS / $C_SECS" | bc -l)"
printf 'C shipping lag of edge 1 under load: at most %s events, %.2f s\n' "$(max_col "$TMP/lag-c.txt" 1)" "$(max_col "$TMP/lag-c.txt" 2)"
if [[ "$BACKLOG" -gt 0 ]]; then
    printf 'D backlog: %s events behind when NATS came back; shipped in %.1f s (%.0f events/s), merged by the tier in %.1f s\n' \
        "$D_LAG" "$D_DRAIN" "$(echo "$D_LAG / $D_DRAIN" | bc -l)" "$D_MERGED"
fi
printf '\nWhat limits them: on one machine wrk, the edges, NATS and the tier share the CPUs. An edge answers\n'
printf 'before shipping (the shipper is another reader of committed records): B0 against A is what shipping\n'
printf 'costs the redirect path; B and C add the tier (and C a second edge and wrk) on the same CPUs, so\n'
printf 'their per-edge rates are bounded by CPU, not by the bus. End-to-end and drain rates are bounded by\n'
printf 'one message in flight per edge (a round trip per %s records) and by the tier'"'"'s merge writes.\n' \
    "$(awk -F' *= *' '/^max_records/ { print $2 }' "$CONFIG")"
