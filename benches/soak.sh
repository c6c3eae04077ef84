#!/usr/bin/env bash
# Soak: sustained mixed load (clicks, pixels, postbacks) on `tally serve` with the attribution
# worker live, for a bounded time, then a count check.
#
# The load runs as consecutive wrk segments of SEGMENT each, so the script prints throughput,
# p50/p99 and the server's RSS over time. At the end it stops the server with SIGTERM and checks:
#   sent >= answered; for pixels and postbacks, acknowledged (2xx) = stored = attributed;
#   for clicks, redirected = stored + counted unrecorded (tally_clicks_unrecorded_total).
# "stored" comes from `tally export events`, "attributed" from `tally commissions` (one ledger
# entry per conversion: every txid is unique), and `tally log stats` is printed beside them.
#
#   benches/soak.sh                                  # 60 s
#   DURATION=600 SEGMENT=60 CONNECTIONS=64 benches/soak.sh
#   TALLY_BIN=/path/to/release/tally benches/soak.sh    # skip the cargo build
#
# Knobs (environment):
#   DURATION     total load time in seconds                         (default 60)
#   SEGMENT      seconds per wrk segment (one line of the time series) (default 10)
#   CONNECTIONS  wrk connections                                     (default 32)
#   THREADS      wrk threads                                         (default 2)
#   MIX          percent clicks,pixels,postbacks                     (default 80,10,10)
#   TALLY_BIN    tally binary; unset: `cargo build --release --bin tally`
#   KEEP_TMP=1   keep the temp dir (config, data, server log)
#
# Exits 0 when the counts check out, 1 when they do not, 2 when it could not measure.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-60}"
SEGMENT="${SEGMENT:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
MIX="${MIX:-80,10,10}"
KEEP_TMP="${KEEP_TMP:-0}"
TOKEN=soak-acme-token-0123456789
# The example program names its advertisers' credentials; the server resolves them from these.
export TALLY_SECRET_ACME_TOKEN=$TOKEN TALLY_SECRET_ACME_HMAC=soak-acme-hmac-0123456789 \
    TALLY_SECRET_GLOBEX_TOKEN=soak-globex-token-0123456789

log() { printf '[soak] %s\n' "$*" >&2; }
die() { printf '[soak] error: %s\n' "$*" >&2; exit 2; }

[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION is whole seconds (got '$DURATION')"
[[ "$SEGMENT" =~ ^[1-9][0-9]*$ ]] || die "SEGMENT is whole seconds (got '$SEGMENT')"
IFS=, read -r P_CLICK P_PIXEL P_POSTBACK <<<"$MIX"
[[ $((P_CLICK + P_PIXEL + P_POSTBACK)) -eq 100 ]] || die "MIX must add up to 100 (got '$MIX')"

pkgs=()
command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
if [[ ${#pkgs[@]} -gt 0 ]]; then
    # shellcheck source=scripts/lib.sh
    source "$REPO/scripts/lib.sh"
    apt_install "${pkgs[@]}"
fi

if [[ -z "${TALLY_BIN:-}" ]]; then
    log "building tally (release)"
    # shellcheck source=scripts/lib.sh
    source "$REPO/scripts/lib.sh"
    ensure_toolchain
    (cd "$REPO" && cargo build --release --bin tally)
    TALLY_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/tally"
fi
[[ -x "$TALLY_BIN" ]] || die "no tally binary at $TALLY_BIN"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tally-soak.XXXXXX")"
SERVER_PID=""
cleanup() {
    local rc=$?
    trap - EXIT
    [[ -n "$SERVER_PID" ]] && kill -KILL "$SERVER_PID" 2>/dev/null || true
    if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

cp "$REPO/config/program.toml" "$TMP/program.toml"
cat >"$TMP/tally.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[log]
data_dir = "data"
[program]
path = "program.toml"
[logging]
level = "warn"
EOF

# Newer builds have a separate admin listener for /metrics; older ones serve it publicly.
admin_args=()
"$TALLY_BIN" serve --help | grep -q -- --admin-listen && admin_args=(--admin-listen 127.0.0.1:0)
"$TALLY_BIN" serve --config "$TMP/tally.toml" --listen 127.0.0.1:0 "${admin_args[@]}" \
    >"$TMP/server.out" 2>"$TMP/server.err" &
SERVER_PID=$!
for _ in $(seq 1 300); do
    grep -q '^tally listening on ' "$TMP/server.out" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/server.err" >&2; die "tally exited at start"; }
    sleep 0.1
done
ADDR="$(sed -n 's/^tally listening on //p' "$TMP/server.out" | head -1)"
[[ -n "$ADDR" ]] || die "tally did not report its address"
METRICS_ADDR="$(sed -n 's/^tally admin listening on //p' "$TMP/server.out" | head -1)"
METRICS_ADDR="${METRICS_ADDR:-$ADDR}"
log "tally pid $SERVER_PID on $ADDR (metrics on $METRICS_ADDR), $(nproc) CPUs"

# Clicks for the conversions to refer to.
CIDS=()
for _ in $(seq 1 50); do
    loc="$(curl -s -o /dev/null -w '%{redirect_url}' "http://$ADDR/c/demo?sub1=soak-seed")"
    cid="$(sed -n 's/.*[?&]cid=\([0-9A-Z]\{26\}\).*/\1/p' <<<"$loc")"
    [[ -n "$cid" ]] || die "no click ID in the redirect to '$loc'"
    CIDS+=("\"$cid\"")
done
SEED_CLICKS=${#CIDS[@]}

cat >"$TMP/mix.lua" <<EOF
-- Mixed load with a unique txid per conversion, so every acknowledged one is a ledger entry.
local cids = { $(IFS=,; echo "${CIDS[*]}") }
local threads = {}
local seg = tonumber(os.getenv("SOAK_SEGMENT") or "0")
function setup(thread)
    thread:set("id", #threads + 1)
    table.insert(threads, thread)
end
function init(args)
    sent = { click = 0, pixel = 0, postback = 0 }
    acked = { click = 0, pixel = 0, postback = 0 }
    refused = 0
    n = 0
end
function request()
    n = n + 1
    local r = math.random(100)
    if r <= $P_CLICK then
        sent.click = sent.click + 1
        return wrk.format("GET", "/c/demo?sub1=soak&sub2=" .. n)
    end
    local cid = cids[math.random(#cids)]
    local txid = "s" .. seg .. "-" .. id .. "-" .. n
    if r <= $((P_CLICK + P_PIXEL)) then
        sent.pixel = sent.pixel + 1
        return wrk.format("GET", "/px.gif?cid=" .. cid .. "&offer=shoes&goal=signup&txid=" .. txid)
    end
    sent.postback = sent.postback + 1
    return wrk.format("GET", "/postback?cid=" .. cid .. "&offer=shoes&goal=signup&txid=" .. txid .. "&token=$TOKEN")
end
function response(status, headers, body)
    if status == 302 then
        acked.click = acked.click + 1
    elseif status == 200 and (headers["content-type"] or headers["Content-Type"] or ""):find("image/gif", 1, true) then
        acked.pixel = acked.pixel + 1
    elseif status == 200 then
        acked.postback = acked.postback + 1
    else
        refused = refused + 1
    end
end
function done(summary, latency, requests)
    local t = { sc = 0, sp = 0, sb = 0, ac = 0, ap = 0, ab = 0, rf = 0 }
    for _, th in ipairs(threads) do
        local s, a = th:get("sent"), th:get("acked")
        t.sc, t.sp, t.sb = t.sc + s.click, t.sp + s.pixel, t.sb + s.postback
        t.ac, t.ap, t.ab = t.ac + a.click, t.ap + a.pixel, t.ab + a.postback
        t.rf = t.rf + th:get("refused")
    end
    io.write(string.format("SOAK %d %d %d %d %d %d %d %d %.0f %.0f %d\n", t.sc, t.sp, t.sb, t.ac, t.ap, t.ab, t.rf,
        summary.requests, latency:percentile(50), latency:percentile(99),
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
EOF

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0; }
metric() { # sum of the samples of a metric family, from /metrics
    curl -s "http://$METRICS_ADDR/metrics" | awk -v m="$1" 'index($0, m) == 1 && $1 !~ /^#/ { s += $NF } END { printf "%d\n", s }'
}

S_C=0 S_P=0 S_B=0 A_C=0 A_P=0 A_B=0 REFUSED=0 ERRORS=0
RSS_START=$(rss_kib)
segments=$(((DURATION + SEGMENT - 1) / SEGMENT))
printf '%-8s %10s %10s %10s %12s\n' "t(s)" "req/s" "p50(ms)" "p99(ms)" "RSS(MiB)"
printf '%-8s %10s %10s %10s %12.1f\n' 0 - - - "$(awk -v k="$RSS_START" 'BEGIN { print k / 1024 }')"
for ((s = 1; s <= segments; s++)); do
    out="$(SOAK_SEGMENT=$s wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SEGMENT}s" --timeout 10s -s "$TMP/mix.lua" "http://$ADDR" 2>&1)" \
        || die "wrk failed: $out"
    read -r _ sc sp sb ac ap ab rf total p50 p99 errs <<<"$(grep '^SOAK ' <<<"$out")"
    S_C=$((S_C + sc)) S_P=$((S_P + sp)) S_B=$((S_B + sb))
    A_C=$((A_C + ac)) A_P=$((A_P + ap)) A_B=$((A_B + ab))
    REFUSED=$((REFUSED + rf)) ERRORS=$((ERRORS + errs))
    awk -v t=$((s * SEGMENT)) -v n="$total" -v d="$SEGMENT" -v p50="$p50" -v p99="$p99" -v rss="$(rss_kib)" \
        'BEGIN { printf "%-8s %10.0f %10.2f %10.2f %12.1f\n", t, n / d, p50 / 1000, p99 / 1000, rss / 1024 }'
done
RSS_END=$(rss_kib)
UNRECORDED=$(metric tally_clicks_unrecorded_total)

# Let attribution catch up with every conversion the log holds, then stop the server.
DATA="$TMP/data"
conversions_stored() { "$TALLY_BIN" export events --data-dir "$DATA" | grep -c '"type":"conversion"' || true; }
attributed() { "$TALLY_BIN" commissions --data-dir "$DATA" --format jsonl | grep -c '"kind":"commission"' || true; }
STORED_CONV=$(conversions_stored)
for _ in $(seq 1 300); do
    [[ "$(attributed)" -ge "$STORED_CONV" ]] && break
    sleep 1
done
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || die "tally did not exit cleanly on SIGTERM"
SERVER_PID=""

EVENTS="$TMP/events.jsonl"
"$TALLY_BIN" export events --data-dir "$DATA" >"$EVENTS"
STORED_CLICKS=$(grep -c '"type":"click"' "$EVENTS" || true)
STORED_PIXEL=$(grep '"type":"conversion"' "$EVENTS" | grep -c '"conversion_source":"pixel"' || true)
STORED_POSTBACK=$(grep '"type":"conversion"' "$EVENTS" | grep -c '"conversion_source":"postback"' || true)
ATTRIBUTED=$(attributed)
echo
echo "duration ${DURATION}s, $CONNECTIONS connections, mix clicks/pixels/postbacks $MIX"
echo "server RSS: start $((RSS_START / 1024)) MiB, end $((RSS_END / 1024)) MiB"
echo "wrk socket errors: $ERRORS, non-2xx/302 answers: $REFUSED"
echo "tally log stats:"
"$TALLY_BIN" log stats --data-dir "$DATA" | sed 's/^/  /'
printf '%-10s %10s %10s %10s %12s\n' kind sent acked stored unrecorded
printf '%-10s %10d %10d %10d %12d\n' click "$((S_C + SEED_CLICKS))" "$((A_C + SEED_CLICKS))" "$STORED_CLICKS" "$UNRECORDED"
printf '%-10s %10d %10d %10d %12s\n' pixel "$S_P" "$A_P" "$STORED_PIXEL" -
printf '%-10s %10d %10d %10d %12s\n' postback "$S_B" "$A_B" "$STORED_POSTBACK" -
echo "conversions attributed (ledger entries): $ATTRIBUTED of $((STORED_PIXEL + STORED_POSTBACK)) stored"

ok=1
# A request wrk sent but had no answer for when a segment ended may or may not be stored:
# stored may exceed acked by at most the unanswered ones, never fall short of acked.
check() { # name, acked, stored, unanswered
    if [[ "$3" -lt "$2" || "$3" -gt $(($2 + $4)) ]]; then
        echo "FAIL $1: acked $2, stored $3 (unanswered $4)"; ok=0
    fi
}
check clicks "$((A_C + SEED_CLICKS - UNRECORDED))" "$STORED_CLICKS" "$((S_C - A_C))"
check pixels "$A_P" "$STORED_PIXEL" "$((S_P - A_P))"
check postbacks "$A_B" "$STORED_POSTBACK" "$((S_B - A_B))"
if [[ $((A_P + A_B)) -eq 0 && $((S_P + S_B)) -gt 0 ]]; then
    echo "FAIL no conversion was acknowledged"; ok=0
fi
if [[ "$ATTRIBUTED" -ne "$((STORED_PIXEL + STORED_POSTBACK))" ]]; then
    echo "FAIL attributed $ATTRIBUTED != stored conversions $((STORED_PIXEL + STORED_POSTBACK))"; ok=0
fi
[[ $ok -eq 1 ]] && echo "count check: OK (acked = stored = attributed)" && exit 0
exit 1
