#!/usr/bin/env bash
# Idle-stream cost of the gateway: CPU of the shared heartbeat scheduler and RSS per idle stream.
#
# For each heartbeat setting in HEARTBEATS it starts a fresh gateway in front of one mock
# upstream whose streams send their first chunk at once and then nothing for 600 s, opens
# STREAMS idle streams with `tidegate-bench --hold` (HTTP/2, prior knowledge), waits SETTLE s,
# measures the gateway's CPU over MEASURE s and its RSS, and prints a markdown table.
# See loadtest/README.md ("Idle streams"). Loopback only.
#
# Environment (defaults in brackets):
#   STREAMS [10000]  HOLD [90]  MEASURE [60]  SETTLE [10]  HEARTBEATS ["1s 0s"]
#     (HEARTBEATS=none writes no [streams] section, for gateways without the setting)
#   PER_CONNECTION [200]  RAMP [2000]  MOCK_DELAY_MS [600000]
#   TIDEGATE_BIN [target/release/tidegate]            gateway and mock; built (with the holder)
#                                                     unless set
#   TIDEGATE_BENCH_BIN [tidegate-bench next to TIDEGATE_BIN]  the holder
#   OUT_DIR      [a new /tmp/tidegate-idle.XXXXXX]    configs, logs, holder reports, results.md
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STREAMS=${STREAMS:-10000}
HOLD=${HOLD:-90}
MEASURE=${MEASURE:-60}
SETTLE=${SETTLE:-10}
HEARTBEATS=${HEARTBEATS:-"1s 0s"}
PER_CONNECTION=${PER_CONNECTION:-200}
RAMP=${RAMP:-2000}
MOCK_DELAY_MS=${MOCK_DELAY_MS:-600000}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/tidegate-idle.XXXXXX)}

LOG_NAME=idle-streams
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh
EXIT_NOTE="logs and reports in $OUT_DIR"

for var in STREAMS HOLD MEASURE SETTLE PER_CONNECTION RAMP MOCK_DELAY_MS; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer (got '${!var}')"
done
((STREAMS >= 1)) || die "STREAMS must be at least 1"
((RAMP >= 1)) || die "RAMP must be at least 1"
((MEASURE >= 1)) || die "MEASURE must be at least 1"
((HOLD >= SETTLE + MEASURE + 5)) ||
    die "HOLD ($HOLD) must be at least SETTLE + MEASURE + 5 = $((SETTLE + MEASURE + 5))"
OPEN_SECS=$(((STREAMS + RAMP - 1) / RAMP))
# The mock clamps every wait to 600 s: the streams must stay idle for the whole hold.
MOCK_IDLE_SECS=$((MOCK_DELAY_MS > 600000 ? 600 : MOCK_DELAY_MS / 1000))
((OPEN_SECS + HOLD + 30 <= MOCK_IDLE_SECS)) ||
    die "the streams would not stay idle: ramp ${OPEN_SECS}s + HOLD ${HOLD}s + 30s > mock delay ${MOCK_IDLE_SECS}s"

# ---- children (loadtest/lib.sh stops the tracked ones at exit) --------------------------------
MOCK_PID=""
GATEWAY_PID=""
HOLDER_PID=""

# ---- /proc sampling ---------------------------------------------------------------------------
# CLK_TCK, cpu_ticks, rss_kib, fd_count, now, calc: loadtest/lib.sh.
# A field of the holder's JSON report by its dotted path (hold.pings_per_min.mean); numbers
# rounded to 2 decimals; nothing if the report or the field is missing, or the field is null.
json_field() {
    python3 - "$1" "$2" <<'PY'
import json, sys
try:
    with open(sys.argv[1]) as f:
        value = json.load(f)
except (OSError, ValueError):
    sys.exit(0)
for key in sys.argv[2].split("."):
    value = value.get(key) if isinstance(value, dict) else None
if isinstance(value, float):
    value = round(value, 2)
if value is not None:
    print(value)
PY
}

# ---- build --------------------------------------------------------------------------------------
find_binaries
command -v python3 >/dev/null || die "python3 is needed to read the holder's JSON report"
mkdir -p "$OUT_DIR"
log "output in $OUT_DIR"

# ---- mock upstream ------------------------------------------------------------------------------
# First chunk (the role delta) at once, the one content chunk after MOCK_DELAY_MS: idle between.
"$TIDEGATE_BIN" mock-upstream --listen 127.0.0.1:0 --chunks 1 --chunk-delay-ms "$MOCK_DELAY_MS" \
    >"$OUT_DIR/mock.log" 2>&1 &
MOCK_PID=$!
track "$MOCK_PID"
wait_for_line "$OUT_DIR/mock.log" 'mock upstream on http://' 15 "$MOCK_PID" || {
    cat "$OUT_DIR/mock.log" >&2
    die "the mock upstream did not report its address"
}
MOCK_URL=$(grep -oE 'http://127\.0\.0\.1:[0-9]+/v1' "$OUT_DIR/mock.log" | head -n 1)
[[ -n $MOCK_URL ]] || die "cannot parse the mock's address from $OUT_DIR/mock.log"
log "mock upstream at $MOCK_URL (pid $MOCK_PID)"

ROWS=()
FAILED_RUNS=0

run_setting() {
    local hb=$1 tag cfg gwlog hlog hjson gw
    tag=${hb//[^A-Za-z0-9]/_}
    cfg=$OUT_DIR/gateway-$tag.toml
    gwlog=$OUT_DIR/gateway-$tag.log
    hlog=$OUT_DIR/holder-$tag.log
    hjson=$OUT_DIR/holder-$tag.json
    htable=$OUT_DIR/holder-$tag.txt

    {
        printf 'listen = "127.0.0.1:0"\n\n[upstream]\nbase_url = "%s"\n\n' "$MOCK_URL"
        # The streams are silent upstream for the whole hold: the default 120 s idle timeout
        # would end them.
        printf '[limits]\nupstream_idle_timeout = "15m"\n\n'
        if [[ $hb != none ]]; then
            printf '[streams]\nheartbeat_interval = "%s"\n\n' "$hb"
        fi
        printf '[shutdown]\ndrain_timeout = "1s"\n'
    } >"$cfg"
    if ! "$TIDEGATE_BIN" check-config "$cfg" >"$OUT_DIR/check-$tag.txt" 2>&1; then
        cat "$OUT_DIR/check-$tag.txt" >&2
        die "the gateway rejects $cfg (HEARTBEATS=none omits [streams])"
    fi

    log "[$hb] starting the gateway"
    "$TIDEGATE_BIN" --config "$cfg" --listen 127.0.0.1:0 >"$gwlog" 2>&1 &
    GATEWAY_PID=$!
    track "$GATEWAY_PID"
    wait_for_line "$gwlog" 'tidegate listening' 15 "$GATEWAY_PID" || {
        cat "$gwlog" >&2
        die "[$hb] the gateway did not start"
    }
    gw=$(grep -m 1 'tidegate listening' "$gwlog" | grep -oE 'listen=[0-9.:]+' | cut -d= -f2)
    [[ -n $gw ]] || die "[$hb] cannot parse the gateway's address from $gwlog"
    sleep 2
    local idle_rss
    idle_rss=$(rss_kib "$GATEWAY_PID")
    log "[$hb] gateway at $gw (pid $GATEWAY_PID), idle RSS ${idle_rss} KiB"

    # The holder: `tidegate-bench --hold`. No x-mock-* headers (the gateway does not forward
    # them here anyway): the mock's own pacing keeps the streams idle. Its run cap leaves room
    # for the ramp, the headers (30 s at most each) and the hold; it samples the gateway and the
    # mock too, for its JSON report.
    "$TIDEGATE_BENCH_BIN" --url "http://$gw" --protocol h2 --streams "$STREAMS" \
        --per-connection "$PER_CONNECTION" --ramp "$RAMP" --no-mock-headers \
        --hold "${HOLD}s" --duration "$((OPEN_SECS + HOLD + 60))s" \
        --pid "gateway=$GATEWAY_PID" --pid "mock=$MOCK_PID" \
        --json "$hjson" >"$htable" 2>"$hlog" &
    HOLDER_PID=$!
    track "$HOLDER_PID"
    if ! wait_for_line "$hlog" 'all open' $((OPEN_SECS + 120)) "$HOLDER_PID"; then
        tail -n 5 "$hlog" >&2
        die "[$hb] the holder did not open its streams"
    fi
    grep -m 1 -E 'all open' "$hlog" >&2
    log "[$hb] settling ${SETTLE}s, then measuring ${MEASURE}s"
    sleep "$SETTLE"
    alive "$GATEWAY_PID" || die "[$hb] the gateway exited under load: see $gwlog"
    alive "$HOLDER_PID" || die "[$hb] the holder exited before the measurement: see $hlog"

    local t0 t1 g0 g1 m0 m1 h0 h1 loaded_rss mock_rss fds alive
    t0=$(now)
    g0=$(cpu_ticks "$GATEWAY_PID")
    m0=$(cpu_ticks "$MOCK_PID")
    h0=$(cpu_ticks "$HOLDER_PID")
    sleep "$MEASURE"
    alive "$GATEWAY_PID" || die "[$hb] the gateway exited during the measurement: see $gwlog"
    alive "$HOLDER_PID" || die "[$hb] the holder exited during the measurement: see $hlog"
    t1=$(now)
    g1=$(cpu_ticks "$GATEWAY_PID")
    m1=$(cpu_ticks "$MOCK_PID")
    h1=$(cpu_ticks "$HOLDER_PID")
    loaded_rss=$(rss_kib "$GATEWAY_PID")
    mock_rss=$(rss_kib "$MOCK_PID")
    fds=$(fd_count "$GATEWAY_PID")
    alive=$(grep -oE 'alive=[0-9]+' "$hlog" | tail -n 1 | cut -d= -f2)
    alive=${alive:-0}

    log "[$hb] measured; waiting for the holder to finish its hold"
    local i hrc=0
    for ((i = 0; i < (HOLD + 60) * 10; i++)); do
        alive "$HOLDER_PID" || break
        sleep 0.1
    done
    if alive "$HOLDER_PID"; then
        log "[$hb] the holder overran its hold: stopping it"
        stop_pid "$HOLDER_PID" 5
        hrc=124
    else
        wait "$HOLDER_PID" || hrc=$?
        forget "$HOLDER_PID"
    fi
    HOLDER_PID=""
    stop_pid "$GATEWAY_PID" 10
    GATEWAY_PID=""

    local window cpu cpu_min mock_min holder_min per_stream opened failed ended pings
    window=$(calc '%.1f' "$t1 - $t0")
    cpu=$(calc '%.2f' "($g1 - $g0) / $CLK_TCK")
    cpu_min=$(calc '%.2f' "($g1 - $g0) / $CLK_TCK * 60 / ($t1 - $t0)")
    mock_min=$(calc '%.2f' "($m1 - $m0) / $CLK_TCK * 60 / ($t1 - $t0)")
    holder_min=$(calc '%.2f' "($h1 - $h0) / $CLK_TCK * 60 / ($t1 - $t0)")
    per_stream=n/a
    ((alive > 0)) && per_stream=$(calc '%.1f' "($loaded_rss - $idle_rss) / $alive")
    opened=$(json_field "$hjson" streams.opened)
    failed=$(json_field "$hjson" streams.failed)
    ended=$(json_field "$hjson" hold.ended_early)
    pings="$(json_field "$hjson" hold.pings_per_min.mean) ($(json_field "$hjson" hold.pings_per_min.min)..$(json_field "$hjson" hold.pings_per_min.max))"
    if [[ -z $opened || ${failed:-1} != 0 || ${ended:-1} != 0 ]]; then
        log "[$hb] WARNING: opened=${opened:-?} failed=${failed:-?} ended_early=${ended:-?} (holder exit $hrc): see $hjson"
        FAILED_RUNS=$((FAILED_RUNS + 1))
    fi
    local problems
    problems=$(grep -cE ' (WARN|ERROR) ' "$gwlog" || true)
    if ((problems > 0)); then
        log "[$hb] the gateway logged $problems WARN/ERROR lines, e.g.:"
        grep -m 3 -E ' (WARN|ERROR) ' "$gwlog" >&2
    fi

    ROWS+=("| $hb | $alive | $(calc '%.1f' "$idle_rss / 1024") | $(calc '%.1f' "$loaded_rss / 1024") | $per_stream | $cpu in ${window}s | $cpu_min | $pings | $fds | $holder_min | $mock_min |")
    log "[$hb] done: alive=$alive rss/stream=${per_stream}KiB cpu=${cpu_min}s/min pings/min=$pings (mock RSS ${mock_rss} KiB)"
}

for hb in $HEARTBEATS; do
    run_setting "$hb"
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then commit="$commit (dirty)"; fi
{
    echo "## Idle streams: heartbeat CPU and RSS per stream"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); kernel: $(uname -r); commit: $commit"
    echo "- gateway: $TIDEGATE_BIN ($("$TIDEGATE_BIN" --version 2>/dev/null || echo '?')); holder: $TIDEGATE_BENCH_BIN --hold"
    echo "- $STREAMS streams over h2 (prior knowledge), $PER_CONNECTION per connection, ramp $RAMP/s;" \
        "settle ${SETTLE}s, CPU window ${MEASURE}s, hold ${HOLD}s; mock: 1 chunk at once, next after ${MOCK_IDLE_SECS}s"
    echo
    echo "| heartbeat | streams alive | idle RSS (MiB) | loaded RSS (MiB) | RSS/stream (KiB) | gateway CPU s | gateway CPU s/min | pings/stream/min mean (min..max) | gateway fds | holder CPU s/min | mock CPU s/min |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUT_DIR/results.md"

((FAILED_RUNS == 0)) || die "$FAILED_RUNS run(s) had streams that failed or ended early"
