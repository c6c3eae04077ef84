#!/usr/bin/env bash
# End-to-end load benchmark: Tally's redirect path against a bare nginx `return 302`.
#
# Both servers run on 127.0.0.1 in the same run, under the same wrk load, and the script
# prints req/s, p50, p99 and the server's CPU time per request for each, plus the tally/nginx
# throughput ratio (with ROUNDS > 1 also each round's ratio and their median). Afterwards it
# stops Tally with SIGTERM and prints `tally log stats`, so the reader sees that the
# clicks were committed.
#
# Usage (from anywhere; run as root on a Debian machine with the Rust toolchain):
#   benches/load.sh
#   DURATION=30s CONNECTIONS=100 ROUNDS=3 benches/load.sh
#   TALLY_BIN=target/release/tally benches/load.sh     # skip the cargo build
#
# Knobs (environment):
#   TALLY_BIN        existing tally binary; if unset/missing, `cargo build --release -p tally-cli`
#   TALLY_WORKERS    Tally worker threads, passed as TALLY_WORKER_THREADS      (default 1)
#   REQUESTS         plain: wrk's bare GET (no user agent, one client address); browser:
#                    4,096 distinct browser-like requests cycled by a wrk Lua script, each
#                    with a user agent (the signals bench's eight families), Accept-Language,
#                    client hints and an X-Forwarded-For spread over IPv4 (Tally trusts it
#                    from 127.0.0.1); nginx gets the same requests          (default plain)
#   SIGNALS          off: no GeoIP or ASN database; on: GeoLite2-shaped City and ASN
#                    databases of NETWORKS IPv4 networks (benches/src/bin/signals.rs
#                    writes them), so each click is located; use with REQUESTS=browser
#                    (default off)
#   NETWORKS         networks in each SIGNALS=on database                 (default 1000000)
#   ROUTES           off: the link's offer has no routing rules; on: five (country,
#                    device, OS with hours, a weighted A/B split, weekend desktops) before
#                    its destination. Either way browser requests click the link `bench`
#                    of an offer added for the run                          (default off)
#   ATTRIBUTION      off: the ingest path alone (the issue's comparison); in-process: also
#                    the attribution worker inside `tally serve`, as the default config
#                    runs it (on 2 CPUs it takes a large share of them)    (default off)
#   NGINX_WORKERS    nginx worker_processes                                    (default 1)
#   THREADS          wrk threads                                               (default 1)
#   CONNECTIONS      wrk connections                                           (default 50)
#   DURATION         wrk duration per measured run (wrk syntax: 10s, 1m)       (default 10s)
#   WARMUP           discarded warm-up per target before the rounds; 0 = none  (default 2s)
#   ROUNDS           measured rounds, alternating nginx then tally; medians    (default 1)
#   NGINX_PORT       port for nginx  (default: a free port, 18080 without python3)
#   TALLY_PORT       port for Tally  (default: a free port, 18081 without python3)
#   SERVER_CPUS      taskset CPU list for both servers, e.g. 1   (default: no pinning)
#   WRK_CPUS         taskset CPU list for wrk, e.g. 0            (default: no pinning)
#   NGINX_BIN        nginx binary    (default: nginx on PATH, else /usr/sbin/nginx)
#   KEEP_TMP=1       keep the temp dir (configs, logs, raw wrk output) for inspection
#
# The script reports figures; it exits 0 on a completed measurement even when a target
# is missed, and non-zero only when it could not measure.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"

TALLY_WORKERS="${TALLY_WORKERS:-1}"
NGINX_WORKERS="${NGINX_WORKERS:-1}"
THREADS="${THREADS:-1}"
CONNECTIONS="${CONNECTIONS:-50}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-1}"
ATTRIBUTION="${ATTRIBUTION:-off}"
REQUESTS="${REQUESTS:-plain}"
SIGNALS="${SIGNALS:-off}"
NETWORKS="${NETWORKS:-1000000}"
ROUTES="${ROUTES:-off}"
COMMIT_ON_PARK="${COMMIT_ON_PARK:-true}"
SERVER_CPUS="${SERVER_CPUS:-}"
WRK_CPUS="${WRK_CPUS:-}"
KEEP_TMP="${KEEP_TMP:-0}"

URL_PATH='/c/demo?sub1=bench'
READY_TIMEOUT_S=30
STOP_TIMEOUT_S=20

log() { printf '[load] %s\n' "$*" >&2; }
die() { printf '[load] error: %s\n' "$*" >&2; exit 1; }

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ "$COMMIT_ON_PARK" == true || "$COMMIT_ON_PARK" == false ]] ||
    die "COMMIT_ON_PARK must be true or false (got '$COMMIT_ON_PARK')"
[[ "$ATTRIBUTION" == off || "$ATTRIBUTION" == in-process ]] ||
    die "ATTRIBUTION must be off or in-process (got '$ATTRIBUTION')"
[[ "$REQUESTS" == plain || "$REQUESTS" == browser ]] || die "REQUESTS must be plain or browser (got '$REQUESTS')"
[[ "$SIGNALS" == off || "$SIGNALS" == on ]] || die "SIGNALS must be off or on (got '$SIGNALS')"
[[ "$NETWORKS" =~ ^[1-9][0-9]*$ ]] || die "NETWORKS must be a positive integer (got '$NETWORKS')"
[[ "$ROUTES" == off || "$ROUTES" == on ]] || die "ROUTES must be off or on (got '$ROUTES')"
[[ "$ROUTES" == off || "$REQUESTS" == browser ]] || die "ROUTES=on needs REQUESTS=browser"
[[ "$DURATION" =~ ^[1-9][0-9]*[smh]?$ ]] || die "DURATION must look like 10, 10s, 2m or 1h (got '$DURATION')"
[[ "$WARMUP" =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 0, 2s or 1m (got '$WARMUP')"

# --- 1. dependencies ---------------------------------------------------------------------
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"

NEED_BUILD=1
if [[ -n "${TALLY_BIN:-}" && -x "${TALLY_BIN}" && ! -d "${TALLY_BIN}" ]]; then
    NEED_BUILD=0
elif [[ -n "${TALLY_BIN:-}" ]]; then
    log "TALLY_BIN=$TALLY_BIN is not an executable file; building instead"
fi

NGINX_BIN="${NGINX_BIN:-$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)}"

pkgs=()
command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)
[[ -x "$NGINX_BIN" ]] || pkgs+=(nginx-light)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
command -v pgrep >/dev/null 2>&1 || pkgs+=(procps) # nginx's workers, for its CPU per request
if [[ "$NEED_BUILD" -eq 1 ]]; then
    dpkg -s libclang-dev >/dev/null 2>&1 || pkgs+=(libclang-dev)
fi
if [[ ${#pkgs[@]} -gt 0 ]]; then
    apt_install "${pkgs[@]}"
    NGINX_BIN="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"
fi
[[ -x "$NGINX_BIN" ]] || die "nginx not found at $NGINX_BIN"
command -v wrk >/dev/null 2>&1 || die "wrk not found"

# --- 2. build ------------------------------------------------------------------------------
if [[ "$NEED_BUILD" -eq 1 ]]; then
    log "building tally (release) in $REPO"
    ensure_toolchain
    (cd "$REPO" && cargo build --release -p tally-cli)
    TALLY_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/tally"
    [[ -x "$TALLY_BIN" ]] || die "build finished but $TALLY_BIN is missing"
fi
TALLY_BIN="$(cd "$(dirname "$TALLY_BIN")" && pwd)/$(basename "$TALLY_BIN")"
SIGNALS_BIN="$(dirname "$TALLY_BIN")/signals"
if [[ "$SIGNALS" == on && ! -x "$SIGNALS_BIN" ]]; then
    log "building the signals bench (release) for its databases"
    ensure_toolchain
    (cd "$REPO" && cargo build --release -p tally-benches --bin signals)
    SIGNALS_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/signals"
fi
TALLY_CONFIG="$REPO/config/tally.toml"
[[ -f "$TALLY_CONFIG" ]] || log "warning: $TALLY_CONFIG does not exist; tally may refuse to start"

# --- 3. temp dir, cleanup -----------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tally-load.XXXXXX")"
PIDS=()       # process-group leaders we started (setsid), killed on exit
TALLY_PID=""

kill_tree() { # $1 = pid (also its process group when started via setsid), $2 = signal
    kill "-$2" -- "-$1" 2>/dev/null || kill "-$2" "$1" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid i alive
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill_tree "$pid" TERM; done
    for ((i = 0; i < 50; i++)); do # up to 5 s for a graceful exit
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill_tree "$pid" KILL; done
    wait 2>/dev/null || true
    if [[ "$KEEP_TMP" == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ulimit -n 65536 2>/dev/null || true

# The example config with the attribution worker on or off; the program file goes beside it
# (relative paths are relative to the config file).
mkdir -p "$TMP/config"
cp "$REPO/config/program.toml" "$TMP/config/"
in_process=false
[[ "$ATTRIBUTION" == in-process ]] && in_process=true
sed -e "s/^in_process = .*/in_process = $in_process/" \
    -e "s/^commit_on_park = .*/commit_on_park = $COMMIT_ON_PARK/" "$TALLY_CONFIG" >"$TMP/config/tally.toml"
grep -q "^in_process = $in_process\$" "$TMP/config/tally.toml" ||
    die "could not set [attribution] in_process in the copy of $TALLY_CONFIG"
grep -q "^commit_on_park = $COMMIT_ON_PARK\$" "$TMP/config/tally.toml" ||
    die "could not set [log] commit_on_park in the copy of $TALLY_CONFIG"
TALLY_CONFIG="$TMP/config/tally.toml"
if [[ "$REQUESTS" == browser ]]; then
    # The offer `bench` (the example's destination), with the routing rules of ROUTES=on,
    # appended last so `[[offers.routes]]` attach to it.
    URL_PATH='/c/bench?sub1=bench'
    {
        printf '\n[[offers]]\nid = "bench"\nadvertiser = "acme"\n'
        printf 'destination = "https://shop.example/landing?cid={click_id}&aff={aff_id}&s1={sub1}"\n'
        printf 'allowed_hosts = ["shop.example"]\ncurrency = "USD"\n'
        printf '  [[offers.goals]]\n  id = "sale"\n  payout = { kind = "fixed", amount = "1.00" }\n'
        if [[ "$ROUTES" == on ]]; then
            cat <<'ROUTES'
  [[offers.routes]]
  name = "uk-mobile"
  country = ["GB", "IE"]
  device = ["mobile", "tablet"]
  destination = "https://uk.shop.example/m?cid={click_id}&aff={aff_id}"
  [[offers.routes]]
  name = "dach"
  country = ["DE", "AT", "CH"]
  language = ["de"]
  destination = "https://de.shop.example/?cid={click_id}&aff={aff_id}"
  [[offers.routes]]
  name = "ios-night"
  os = ["iOS"]
  hours = "22-6"
  destination = "https://shop.example/night?cid={click_id}&aff={aff_id}"
  [[offers.routes]]
  name = "android-ab"
  os = ["Android"]
  destinations = [{ name = "a", url = "https://shop.example/a?cid={click_id}", weight = 50 }, { name = "b", url = "https://shop.example/b?cid={click_id}", weight = 50 }]
  [[offers.routes]]
  name = "desktop-weekend"
  device = ["desktop"]
  days = ["sat", "sun"]
  destination = "https://shop.example/weekend?cid={click_id}&aff={aff_id}"
ROUTES
        fi
        printf '\n[[links]]\ncode = "bench"\noffer = "bench"\naffiliate = "aff1"\n'
    } >>"$TMP/config/program.toml"
    # wrk connects from 127.0.0.1: the clicks' addresses come in X-Forwarded-For.
    sed -i 's/^trusted_proxies = \[\]$/trusted_proxies = ["127.0.0.1"]/' "$TALLY_CONFIG"
    grep -q '^trusted_proxies = \["127.0.0.1"\]$' "$TALLY_CONFIG" ||
        die "could not set [privacy] trusted_proxies in the copy of the config"
fi
if [[ "$SIGNALS" == on ]]; then
    log "writing GeoLite2-shaped databases ($NETWORKS networks each)"
    NETWORKS="$NETWORKS" "$SIGNALS_BIN" fixture "$TMP/config" >&2 || die "could not write the databases"
    sed -i -e 's/^geoip_database = ""$/geoip_database = "City.mmdb"/' \
        -e 's/^asn_database = ""$/asn_database = "ASN.mmdb"/' "$TALLY_CONFIG"
    grep -q '^asn_database = "ASN.mmdb"$' "$TALLY_CONFIG" || die "could not set [signals] in the copy of the config"
fi
# The browser-like requests: built once per wrk thread, cycled. Generated text, so nginx and
# Tally read exactly the same bytes.
cat >"$TMP/browser.lua" <<'LUA'
local agents = {
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
  "Mozilla/5.0 (Linux; Android 13; SM-S908B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/21E236 [FBAN/FBIOS;FBAV/460.0.0.38.108;FBBV/590000000;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.4;FBSS/3;FBCR/;FBID/phone;FBLC/en_US;FBOP/80]",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
}
local languages = { "en-US,en;q=0.9", "de-DE,de;q=0.9,en;q=0.8", "fr-FR,fr;q=0.9", "es-ES,es;q=0.9", "pt-BR,pt;q=0.9" }
local requests, n = {}, 0
init = function(args)
  math.randomseed(7)
  for i = 1, 4096 do
    local ip = string.format("%d.%d.%d.%d", math.random(1, 223), math.random(0, 255), math.random(0, 255), math.random(1, 254))
    local ua = agents[(i % #agents) + 1]
    local mobile = ua:find("Mobile") and "?1" or "?0"
    requests[i] = wrk.format("GET", "URL_PATH", {
      ["X-Forwarded-For"] = ip, ["User-Agent"] = ua,
      ["Accept-Language"] = languages[(i % #languages) + 1], ["Sec-CH-UA-Mobile"] = mobile,
    })
  end
end
request = function()
  n = n % #requests + 1
  return requests[n]
end
LUA
sed -i "s|URL_PATH|$URL_PATH|" "$TMP/browser.lua"
WRK_SCRIPT=()
[[ "$REQUESTS" == browser ]] && WRK_SCRIPT=(-s "$TMP/browser.lua")
# The example program names its advertisers' credentials and the server resolves them at
# start; this load never posts back, so any values do.
export TALLY_SECRET_ACME_TOKEN=bench-acme-token-0123456789 TALLY_SECRET_ACME_HMAC=bench-acme-hmac-0123456789 \
    TALLY_SECRET_GLOBEX_TOKEN=bench-globex-token-0123456789

# Start "$@" in the background in its own session/process group, so the cleanup can
# signal the whole group. setsid does not fork here (a `&` child is not a group leader),
# so $! is the server's own pid.
start_bg() { # $1 = log file, rest = command
    local out="$1"; shift
    local pin=()
    [[ -n "$SERVER_CPUS" ]] && pin=(taskset -c "$SERVER_CPUS")
    setsid "${pin[@]}" "$@" </dev/null >"$out" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

# --- ports -----------------------------------------------------------------------------
if [[ -z "${NGINX_PORT:-}" || -z "${TALLY_PORT:-}" ]]; then
    if command -v python3 >/dev/null 2>&1; then
        read -r p1 p2 < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
    else
        p1=18080 p2=18081
    fi
    NGINX_PORT="${NGINX_PORT:-$p1}"
    TALLY_PORT="${TALLY_PORT:-$p2}"
fi

# --- 4. nginx baseline --------------------------------------------------------------------
mkdir -p "$TMP/nginx-temp"
{
    [[ "$(id -u)" -eq 0 ]] && echo 'user root root;'
    cat <<EOF
daemon off;
master_process on;
worker_processes $NGINX_WORKERS;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {
    worker_connections 16384;
}
http {
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path $TMP/nginx-temp/body;
EOF
    # Temp paths default to /var/lib/nginx; point them into $TMP for each module built in.
    nginx_v="$("$NGINX_BIN" -V 2>&1)"
    for m in proxy fastcgi uwsgi scgi; do
        [[ "$nginx_v" == *"--without-http_${m}_module"* ]] || echo "    ${m}_temp_path $TMP/nginx-temp/$m;"
    done
    cat <<EOF
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /c/ {
            add_header Cache-Control no-store always;
            return 302 "https://shop.example/landing?cid=01ARZ3NDEKTSV4RRFFQ69G5FAV&aff=aff1";
        }
    }
}
EOF
} >"$TMP/nginx.conf"

log "starting nginx on 127.0.0.1:$NGINX_PORT (workers=$NGINX_WORKERS)"
start_bg "$TMP/nginx.out" "$NGINX_BIN" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf" -p "$TMP"
NGINX_PID=$BG_PID

# --- 5. Tally -------------------------------------------------------------------------------
log "starting tally on 127.0.0.1:$TALLY_PORT (TALLY_WORKER_THREADS=$TALLY_WORKERS)"
start_bg "$TMP/tally.log" env TALLY_WORKER_THREADS="$TALLY_WORKERS" \
    "$TALLY_BIN" serve --config "$TALLY_CONFIG" --listen "127.0.0.1:$TALLY_PORT" --data-dir "$TMP/data"
TALLY_PID=$BG_PID

http_code() { curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

wait_ready() { # $1 name, $2 pid, $3 log file, $4 check command...
    local name="$1" pid="$2" logf="$3" deadline=$((SECONDS + READY_TIMEOUT_S))
    shift 3
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 || true
            die "$name exited before becoming ready (log tail above)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$logf" >&2 || true
            die "$name not ready after ${READY_TIMEOUT_S}s (log tail above)"
        fi
        sleep 0.2
    done
}
nginx_ready() { [[ "$(http_code "http://127.0.0.1:$NGINX_PORT$URL_PATH")" == 302 ]]; }
tally_ready() { curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$TALLY_PORT/readyz" 2>/dev/null; }

wait_ready nginx "$NGINX_PID" "$TMP/nginx-error.log" nginx_ready
wait_ready tally "$TALLY_PID" "$TMP/tally.log" tally_ready
# One probe through the redirect path (it records one click; counted below).
probe="$(http_code "http://127.0.0.1:$TALLY_PORT/c/demo?sub1=bench-probe")"
WARNINGS=()
warn() { log "warning: $*"; WARNINGS+=("$*"); }
[[ "$probe" == 302 ]] || warn "tally answered a /c/demo probe with HTTP $probe, not 302"
TALLY_SENT=1

# --- 6./7. load ---------------------------------------------------------------------------
dur_secs() { # wrk duration (10, 10s, 2m, 1h) -> whole seconds
    local d="$1"
    case "$d" in
        *h) echo $(( ${d%h} * 3600 )) ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *s) echo "${d%s}" ;;
        *) echo "$d" ;;
    esac
}

# Run wrk against $2 (port) for $3, raw output to $4, then check server $5 is still alive.
# Bounded by timeout(1); --foreground keeps wrk in our process group so Ctrl-C reaches it.
run_wrk() { # $1 name, $2 port, $3 duration, $4 out file, $5 server pid
    local secs pin=()
    secs="$(dur_secs "$3")" || die "bad duration '$3'"
    [[ -n "$WRK_CPUS" ]] && pin=(taskset -c "$WRK_CPUS")
    if ! timeout --foreground -k 5 $((secs + 30)) "${pin[@]}" \
        wrk -t "$THREADS" -c "$CONNECTIONS" -d "$3" --latency "${WRK_SCRIPT[@]}" \
        "http://127.0.0.1:$2$URL_PATH" >"$4" 2>&1; then
        cat "$4" >&2
        die "wrk against $1 failed"
    fi
    kill -0 "$5" 2>/dev/null || { cat "$4" >&2; die "$1 died during the load run"; }
}

# Parse a wrk --latency output -> "req_s p50_ms p99_ms non_2xx_3xx socket_errors requests"
parse_wrk() {
    awk '
        function ms(v,   n, u) {
            n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
            if (u == "us") return n / 1000
            if (u == "ms") return n
            if (u == "s")  return n * 1000
            if (u == "m")  return n * 60000
            if (u == "h")  return n * 3600000
            return -1
        }
        /^Requests\/sec:/              { rps = $2 }
        /^[ \t]*50%[ \t]/              { p50 = ms($2) }
        /^[ \t]*99%[ \t]/              { p99 = ms($2) }
        /Non-2xx or 3xx responses:/    { bad = $NF }
        /Socket errors:/               { sub(/.*Socket errors: */, ""); gsub(/,/, ""); sockerr = $0 }
        / requests in /                { reqs = $1 }
        END {
            if (rps == "" || p50 == "" || p99 == "") exit 1
            if (sockerr == "") sockerr = "none"
            gsub(/ /, "_", sockerr)
            printf "%s %.3f %.3f %d %s %d\n", rps, p50, p99, bad + 0, sockerr, reqs + 0
        }' "$1"
}

# CPU time (user + system, clock ticks) of a server: the process and its children, which for
# nginx are the workers and for Tally the process's own threads (counted in its /proc stat).
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
cpu_ticks() { # $1 pid
    local total=0 p t
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        t="$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null)" || continue
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

declare -A RPS P50 P99 CPU
RATIOS=""
measure() { # $1 name, $2 port, $3 pid, $4 round
    local out="$TMP/wrk-$1-$4.txt" res rps p50 p99 bad sockerr reqs c0 c1
    log "round $4: $1 (wrk -t$THREADS -c$CONNECTIONS -d$DURATION)"
    c0="$(cpu_ticks "$3")"
    run_wrk "$1" "$2" "$DURATION" "$out" "$3"
    c1="$(cpu_ticks "$3")"
    res="$(parse_wrk "$out")" || { cat "$out" >&2; die "could not parse wrk output for $1"; }
    read -r rps p50 p99 bad sockerr reqs <<<"$res"
    [[ "$bad" -gt 0 ]] && warn "$1 round $4: $bad non-2xx/3xx responses"
    [[ "$sockerr" != none ]] && warn "$1 round $4: socket errors: ${sockerr//_/ }"
    [[ "$1" == tally ]] && TALLY_SENT=$((TALLY_SENT + reqs))
    RPS[$1]+="$rps "; P50[$1]+="$p50 "; P99[$1]+="$p99 "
    CPU[$1]+="$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$reqs" \
        'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }') "
}

if [[ ! "$WARMUP" =~ ^0+[smh]?$ ]]; then
    for t in nginx tally; do
        log "warm-up: $t ($WARMUP, discarded)"
        if [[ $t == nginx ]]; then
            run_wrk nginx "$NGINX_PORT" "$WARMUP" "$TMP/wrk-nginx-warmup.txt" "$NGINX_PID"
        else
            run_wrk tally "$TALLY_PORT" "$WARMUP" "$TMP/wrk-tally-warmup.txt" "$TALLY_PID"
            w="$(parse_wrk "$TMP/wrk-tally-warmup.txt")" && TALLY_SENT=$((TALLY_SENT + ${w##* }))
        fi
    done
fi

for ((r = 1; r <= ROUNDS; r++)); do
    measure nginx "$NGINX_PORT" "$NGINX_PID" "$r"
    measure tally "$TALLY_PORT" "$TALLY_PID" "$r"
    # The two runs of a round are seconds apart, so their ratio is less exposed to a host
    # whose speed drifts than the ratio of medians taken over the whole session.
    n_last="${RPS[nginx]% }"; t_last="${RPS[tally]% }"
    RATIOS+="$(awk -v t="${t_last##* }" -v n="${n_last##* }" 'BEGIN { printf "%.2f", (n > 0 ? t / n : 0) }') "
done

# --- 8. summary -------------------------------------------------------------------------
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.2f", m }'; }

echo
medians=""; [[ "$ROUNDS" -gt 1 ]] && medians=" (medians)"
echo "wrk: -t$THREADS -c$CONNECTIONS -d$DURATION, rounds=$ROUNDS$medians," \
    "nginx workers=$NGINX_WORKERS, tally workers=$TALLY_WORKERS, attribution $ATTRIBUTION, commit_on_park $COMMIT_ON_PARK," \
    "requests $REQUESTS, signals $SIGNALS$([[ "$SIGNALS" == on ]] && echo " ($NETWORKS networks)"), routes $ROUTES, $(nproc) CPUs"
if [[ "$ROUNDS" -gt 1 ]]; then
    for t in nginx tally; do echo "$t req/s per round: ${RPS[$t]% }"; done
    echo "tally/nginx per round: ${RATIOS% }"
fi
# cpu_us/req: the server's CPU time (all its threads or workers) per request answered. wrk
# shares the same two CPUs, so this is what each server leaves for the load generator.
printf '%-8s %-10s %-7s %-7s %s\n' target req/s p50_ms p99_ms cpu_us/req
for t in nginx tally; do
    printf '%-8s %-10s %-7s %-7s %s\n' "$t" \
        "$(median <<<"${RPS[$t]}")" "$(median <<<"${P50[$t]}")" "$(median <<<"${P99[$t]}")" \
        "$(median <<<"${CPU[$t]}")"
done
n_rps="$(median <<<"${RPS[nginx]}")"; t_rps="$(median <<<"${RPS[tally]}")"
t_p99="$(median <<<"${P99[tally]}")"
awk -v t="$t_rps" -v n="$n_rps" 'BEGIN {
    printf "ratio tally/nginx throughput: %s  (target >= 0.85, aim 1.0)\n", (n > 0 ? sprintf("%.2f", t / n) : "n/a") }'
[[ "$ROUNDS" -gt 1 ]] && echo "median of the per-round ratios: $(median <<<"$RATIOS")"
echo "tally p99: $t_p99 ms (target < 2 ms)"
for w in "${WARNINGS[@]}"; do echo "WARNING: $w"; done

# --- stop Tally, then show what it stored -----------------------------------------------------
echo
log "stopping tally (SIGTERM, up to ${STOP_TIMEOUT_S}s)"
kill -TERM "$TALLY_PID" 2>/dev/null || true
deadline=$((SECONDS + STOP_TIMEOUT_S))
while kill -0 "$TALLY_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
if kill -0 "$TALLY_PID" 2>/dev/null; then
    log "warning: tally did not exit within ${STOP_TIMEOUT_S}s; sending SIGKILL"
    kill_tree "$TALLY_PID" KILL
fi
tally_rc=0; wait "$TALLY_PID" 2>/dev/null || tally_rc=$?
echo "tally exited with status $tally_rc"
echo "requests completed against tally (probe + warm-up + measured): $TALLY_SENT"
echo "  (wrk does not count requests still in flight when a run stops, up to $CONNECTIONS per run,"
echo "   so the stored count may exceed this by that much)"
echo "tally log stats:"
if ! timeout --foreground -k 5 60 "$TALLY_BIN" log stats --data-dir "$TMP/data" 2>&1; then
    echo "(tally log stats failed; see above)"
fi
exit 0
