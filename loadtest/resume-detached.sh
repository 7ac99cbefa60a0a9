#!/usr/bin/env bash
# Resumable streams with nobody attached (issue 15, requirement 5): does the gateway's memory
# stay within `resume.memory_budget` with STREAMS streams detached at once?
#
# Two runs, each with a fresh mock upstream and a fresh gateway (`upstream.http2 = true`, so
# the gateway's upstream side is a few HTTP/2 connections, `forward_headers = ["x-mock-*"]`):
# - detached: `[resume] enabled = true`, a grace longer than the run and a replay budget the
#   streams overflow within seconds. `tidegate-bench --drop-after-events` opens STREAMS streams
#   over HTTP/2 (prior knowledge) and goes away from each after DROP_AFTER_EVENTS events; every
#   stream then goes on generating (a chunk every DELAY_MS) into its replay log. Once the
#   admin's /metrics shows STREAMS detached streams, SETTLE s later, the gateway is sampled for
#   MEASURE s: RSS, open descriptors, CPU, and tidegate_resume_replay_bytes (its maximum must
#   stay within the budget), _detached_streams, _evicted_bytes_total.
# - attached (the reference, REFERENCE=1): the same gateway with resume off and the same
#   STREAMS held open and read (`tidegate-bench --hold`) with the same pacing, sampled the same
#   way.
# It prints a markdown table with the ratios (also OUT_DIR/results.md) and exits 1 if the
# replay bytes ever exceeded the budget, the streams did not all detach or stay detached, the
# gateway died or logged a panic, or its descriptors reached the open-files limit.
# See loadtest/README.md ("Detached resumable streams"). Loopback only.
#
# Environment (defaults in brackets):
#   STREAMS [10000]           streams to open, then detach (the reference holds as many)
#   BUDGET_MIB [64]           resume.memory_budget, MiB
#   PER_STREAM_KIB [64]       resume.max_bytes_per_stream (and limits.max_event_bytes), KiB
#   GRACE [300]               resume.detach_grace, seconds (must outlast the run)
#   DROP_AFTER_EVENTS [2]     events each client reads before it goes away
#   CHUNKS [100000]  DELAY_MS [200]   the mock's pacing per stream (x-mock-* headers): with
#                             200 ms, about 1.3 KB of events a second per stream
#   SETTLE [3]  MEASURE [90]  seconds from "all detached" (or "all open") to the window, and
#                             the window's length (at 1.3 KB/s a log reaches 64 KiB about 50 s
#                             after its client left: the window covers the plateau)
#   SAMPLE_MS [500]           sampling period in the window
#   PER_CONNECTION [200]  RAMP [2000]   HTTP/2 streams per client connection, streams a second
#   REFERENCE [1]             0 skips the attached reference run
#   TIDEGATE_BIN [target/release/tidegate]            gateway and mock; built (with the
#                                                     driver) unless set
#   TIDEGATE_BENCH_BIN [tidegate-bench next to TIDEGATE_BIN]  the driver
#   OUT_DIR      [a new /tmp/tidegate-resume.XXXXXX]  configs, logs, driver reports, samples,
#                                                     results.md
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STREAMS=${STREAMS:-10000}
BUDGET_MIB=${BUDGET_MIB:-64}
PER_STREAM_KIB=${PER_STREAM_KIB:-64}
GRACE=${GRACE:-300}
DROP_AFTER_EVENTS=${DROP_AFTER_EVENTS:-2}
CHUNKS=${CHUNKS:-100000}
DELAY_MS=${DELAY_MS:-200}
SETTLE=${SETTLE:-3}
MEASURE=${MEASURE:-90}
SAMPLE_MS=${SAMPLE_MS:-500}
PER_CONNECTION=${PER_CONNECTION:-200}
RAMP=${RAMP:-2000}
REFERENCE=${REFERENCE:-1}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/tidegate-resume.XXXXXX)}

LOG_NAME="resume-detached"
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh
EXIT_NOTE="logs, reports and samples in $OUT_DIR"

for var in STREAMS BUDGET_MIB PER_STREAM_KIB GRACE DROP_AFTER_EVENTS CHUNKS DELAY_MS SETTLE \
    MEASURE SAMPLE_MS PER_CONNECTION RAMP; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer (got '${!var}')"
done
[[ $REFERENCE == 0 || $REFERENCE == 1 ]] || die "REFERENCE must be 0 or 1"
((STREAMS >= 1 && RAMP >= 1 && MEASURE >= 1 && DROP_AFTER_EVENTS >= 1)) ||
    die "STREAMS, RAMP, MEASURE and DROP_AFTER_EVENTS must be at least 1"
((SAMPLE_MS >= 100)) || die "SAMPLE_MS must be at least 100"
((PER_STREAM_KIB >= 1 && BUDGET_MIB * 1024 >= PER_STREAM_KIB)) ||
    die "the budget (BUDGET_MIB) must hold at least one stream's log (PER_STREAM_KIB)"
OPEN_SECS=$(((STREAMS + RAMP - 1) / RAMP))
# The grace must outlast opening, detaching (60 s at most), settling and the window.
((GRACE >= OPEN_SECS + 60 + SETTLE + MEASURE + 10)) ||
    die "GRACE ($GRACE s) must be at least $((OPEN_SECS + 60 + SETTLE + MEASURE + 10)) s (ramp + 60 + SETTLE + MEASURE + 10)"
HOLD=$((SETTLE + MEASURE + 5))
# Every stream must still be generating when the window ends, in both runs.
((CHUNKS * DELAY_MS / 1000 >= GRACE && CHUNKS * DELAY_MS / 1000 >= OPEN_SECS + HOLD + 30)) ||
    die "CHUNKS x DELAY_MS ($((CHUNKS * DELAY_MS / 1000)) s) must outlast GRACE and the reference's hold"
FD_LIMIT=$(ulimit -Hn)
BUDGET_BYTES=$((BUDGET_MIB * 1024 * 1024))

# ---- /proc, /metrics ------------------------------------------------------------------------------
# CLK_TCK, cpu_ticks, rss_kib, fd_count, now, calc: loadtest/lib.sh.
# The tidegate_resume_* gauges and counters of the admin listener ($ADMIN), one line:
# streams detached replay_bytes evicted_bytes_total detached_total expired_total budget
# (an empty line if the scrape failed).
resume_metrics() {
    curl -sf --max-time 5 "http://$ADMIN/metrics" | awk '
        $1 == "tidegate_resume_streams" { v["s"] = $2 }
        $1 == "tidegate_resume_detached_streams" { v["d"] = $2 }
        $1 == "tidegate_resume_replay_bytes" { v["r"] = $2 }
        $1 == "tidegate_resume_evicted_bytes_total" { v["e"] = $2 }
        $1 == "tidegate_resume_detached_total" { v["dt"] = $2 }
        $1 == "tidegate_resume_expired_total" { v["x"] = $2 }
        $1 == "tidegate_resume_memory_budget_bytes" { v["b"] = $2 }
        END { if ("r" in v) printf "%.0f %.0f %.0f %.0f %.0f %.0f %.0f\n", v["s"], v["d"], v["r"], v["e"], v["dt"], v["x"], v["b"] }'
}
# A counter of the mock's GET /stats (streams_active, streams_cancelled, ...).
mock_stat() {
    curl -sf --max-time 5 "http://$MOCK/stats" |
        python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}
# A field of a driver's JSON report by its dotted path (streams.dropped); nothing if missing.
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
if value is not None:
    print(value)
PY
}

# ---- the gateway ----------------------------------------------------------------------------------
# Starts the gateway NAME ($1) with resume on or off ($2: true/false) in front of $MOCK, with an
# admin listener; sets GATEWAY_PID, TARGET_URL, ADMIN and IDLE_RSS (KiB, 1 s after start).
start_gateway() {
    local name=$1 resume=$2
    # The streams run for minutes: the default 120 s idle timeout is far, the 30 min duration
    # cap too, but both are raised so that only the grace ends a detached stream. No per-IP or
    # global stream caps (the defaults: the driver connects from 127.0.0.1 only).
    TIDEGATE_EXTRA_CONFIG=$(
        printf '[limits]\nupstream_idle_timeout = "15m"\nmax_stream_duration = "1h"\n'
        printf 'max_event_bytes = "%d KiB"\nmax_streams = 0\n\n' "$PER_STREAM_KIB"
        printf '[limits.per_ip]\nrequests_per_second = 0\nmax_streams = 0\nmax_connections = 0\n\n'
        printf '[admin]\nlisten = "127.0.0.1:0"\n\n'
        printf '[resume]\nenabled = %s\ndetach_grace = "%ds"\nmax_bytes_per_stream = "%d KiB"\n' \
            "$resume" "$GRACE" "$PER_STREAM_KIB"
        printf 'memory_budget = "%d MiB"\n' "$BUDGET_MIB"
    )
    export TIDEGATE_EXTRA_CONFIG
    start_tidegate "$name" true "$OUT_DIR"
    GATEWAY_PID=$TARGET_PID
    ADMIN=$(grep -m 1 'tidegate listening' "$OUT_DIR/$name.log" | grep -oE 'admin=Some\([0-9.:]+\)' |
        grep -oE '[0-9.]+:[0-9]+')
    [[ -n $ADMIN ]] || die "[$name] cannot parse the admin address from $OUT_DIR/$name.log"
    IDLE_RSS=$(rss_kib "$GATEWAY_PID")
    log "[$name] gateway at $TARGET_URL, admin $ADMIN (pid $GATEWAY_PID), idle RSS $IDLE_RSS KiB"
}

# ---- the window -------------------------------------------------------------------------------------
# Samples the gateway (GATEWAY_PID) and the mock for MEASURE s, every SAMPLE_MS; with resume
# metrics ($1 = 1) also /metrics. Writes OUT_DIR/$2-samples.tsv and sets W_* (RSS in KiB).
sample_window() {
    local with_metrics=$1 name=$2 file=$OUT_DIR/$2-samples.tsv
    local t0 t1 g0 g1 m0 m1 tnow rss fds met end
    local -a m
    W_RSS_MAX=0 W_RSS_FIRST=0 W_RSS_LAST=0 W_FDS_MAX=0 W_REPLAY_MAX=0 W_DET_MIN=-1 W_DET_MAX=0
    W_STREAMS_MAX=0 W_STREAMS_MIN=-1 W_EXPIRED=0 W_DETACHED_TOTAL=0 W_EVICT0=0 W_EVICT1=0 W_WRITTEN0=0 W_WRITTEN1=0 W_SAMPLES=0 W_SCRAPE_FAILS=0
    printf 't_s\trss_kib\tfds\tresume_streams\tdetached\treplay_bytes\tevicted_total\tdetached_total\texpired_total\n' >"$file"
    t0=$(now)
    g0=$(cpu_ticks "$GATEWAY_PID")
    m0=$(cpu_ticks "$MOCK_PID")
    end=$(calc '%.3f' "$t0 + $MEASURE")
    # Bounded: until MEASURE s have passed, and at most twice as many samples as that takes.
    local i
    for ((i = 0; i < 2 * MEASURE * 1000 / SAMPLE_MS + 2; i++)); do
        alive "$GATEWAY_PID" || die "[$name] the gateway exited during the window: see $OUT_DIR/$name.log"
        tnow=$(now)
        rss=$(rss_kib "$GATEWAY_PID")
        fds=$(fd_count "$GATEWAY_PID")
        ((rss > W_RSS_MAX)) && W_RSS_MAX=$rss
        ((fds > W_FDS_MAX)) && W_FDS_MAX=$fds
        ((W_SAMPLES == 0)) && W_RSS_FIRST=$rss
        W_RSS_LAST=$rss
        met=""
        if [[ $with_metrics == 1 ]]; then
            met=$(resume_metrics || true)
            if [[ -z $met ]]; then
                W_SCRAPE_FAILS=$((W_SCRAPE_FAILS + 1))
            else
                read -r -a m <<<"$met"
                ((m[0] > W_STREAMS_MAX)) && W_STREAMS_MAX=${m[0]}
                ((W_STREAMS_MIN < 0 || m[0] < W_STREAMS_MIN)) && W_STREAMS_MIN=${m[0]}
                ((m[5] > W_EXPIRED)) && W_EXPIRED=${m[5]}
                W_DETACHED_TOTAL=${m[4]}
                ((W_DET_MIN < 0 || m[1] < W_DET_MIN)) && W_DET_MIN=${m[1]}
                ((m[1] > W_DET_MAX)) && W_DET_MAX=${m[1]}
                ((m[2] > W_REPLAY_MAX)) && W_REPLAY_MAX=${m[2]}
                if ((W_SAMPLES == 0)); then
                    W_EVICT0=${m[3]}
                    W_WRITTEN0=$((m[2] + m[3]))
                fi
                W_EVICT1=${m[3]}
                W_WRITTEN1=$((m[2] + m[3]))
            fi
        fi
        W_SAMPLES=$((W_SAMPLES + 1))
        printf '%s\t%s\t%s\t%s\n' "$(calc '%.2f' "$tnow - $t0")" "$rss" "$fds" \
            "${met// /$'\t'}" >>"$file"
        [[ $(calc '%d' "($tnow >= $end)") == 1 ]] && break
        sleep "$(calc '%.3f' "$SAMPLE_MS / 1000")"
    done
    t1=$(now)
    g1=$(cpu_ticks "$GATEWAY_PID")
    m1=$(cpu_ticks "$MOCK_PID")
    W_SECS=$(calc '%.1f' "$t1 - $t0")
    W_GW_CPU=$(calc '%.0f' "100 * ($g1 - $g0) / $CLK_TCK / ($t1 - $t0)")
    W_MOCK_CPU=$(calc '%.0f' "100 * ($m1 - $m0) / $CLK_TCK / ($t1 - $t0)")
    W_WRITE_RATE=$(calc '%.2f' "($W_WRITTEN1 - $W_WRITTEN0) / ($t1 - $t0) / 1048576")
    W_MOCK_ACTIVE=$(mock_stat streams_active || true)
}

# Fails the run when the gateway logged a panic; says how many WARN/ERROR lines it logged.
check_log() {
    local name=$1 glog=$OUT_DIR/$1.log problems
    if grep -qiE 'panick?ed' "$glog"; then
        grep -m 5 -iE 'panick?ed' "$glog" >&2
        FAILURES+=("[$name] the gateway panicked (see $glog)")
    fi
    problems=$(grep -cE ' (WARN|ERROR) ' "$glog" || true)
    if ((problems > 0)); then
        log "[$name] the gateway logged $problems WARN/ERROR lines, e.g.:"
        grep -m 3 -E ' (WARN|ERROR) ' "$glog" >&2
    fi
}

# ---- build --------------------------------------------------------------------------------------
find_binaries
command -v python3 >/dev/null || die "python3 is needed to read the driver's JSON reports"
command -v curl >/dev/null || die "curl is needed to scrape /metrics"
mkdir -p "$OUT_DIR"
log "output in $OUT_DIR; open files: soft $(ulimit -Sn), hard $FD_LIMIT"
FAILURES=()
MOCK_PID=""
GATEWAY_PID=""

# ---- detached -------------------------------------------------------------------------------------
start_mock
log "[detached] mock upstream at $MOCK (pid $MOCK_PID)"
start_gateway detached true
read -r -a M0 <<<"$(resume_metrics)"
[[ ${M0[6]:-} == "$BUDGET_BYTES" ]] ||
    die "[detached] /metrics shows a budget of ${M0[6]:-nothing}, not $BUDGET_BYTES bytes"
D_IDLE_RSS=$IDLE_RSS

log "[detached] $STREAMS streams over h2 at $RAMP/s, each dropped after $DROP_AFTER_EVENTS events"
set +e
"$TIDEGATE_BENCH_BIN" --url "$TARGET_URL" --protocol h2 --per-connection "$PER_CONNECTION" \
    --streams "$STREAMS" --ramp "$RAMP" --chunks "$CHUNKS" --chunk-delay-ms "$DELAY_MS" \
    --drop-after-events "$DROP_AFTER_EVENTS" --duration "$((OPEN_SECS + 60))s" \
    --pid "gateway=$GATEWAY_PID" --pid "mock=$MOCK_PID" \
    --json "$OUT_DIR/dropper.json" >"$OUT_DIR/dropper.txt" 2>"$OUT_DIR/dropper.log"
drc=$?
set -e
dropped=$(json_field "$OUT_DIR/dropper.json" streams.dropped)
dfailed=$(json_field "$OUT_DIR/dropper.json" streams.failed)
log "[detached] driver exit $drc: dropped=${dropped:-?} failed=${dfailed:-?}"
((drc == 0)) || FAILURES+=("[detached] the driver exited $drc (dropped=${dropped:-?} failed=${dfailed:-?}): see $OUT_DIR/dropper.txt")

# Wait until every stream is detached (the gauge counts under try_lock: read it a few times).
det=0
t_detach0=$(now)
# Bounded: 60 s of 0.5 s polls.
for ((i = 0; i < 120; i++)); do
    alive "$GATEWAY_PID" || die "[detached] the gateway exited: see $OUT_DIR/detached.log"
    read -r -a M <<<"$(resume_metrics)"
    det=${M[1]:-0}
    ((det >= STREAMS)) && break
    sleep 0.5
done
if ((det < STREAMS)); then
    FAILURES+=("[detached] only $det of $STREAMS streams detached within 60 s (detached_total=${M[4]:-?}, resume_streams=${M[0]:-?}, expired=${M[5]:-?})")
    log "${FAILURES[-1]}"
else
    log "[detached] all $det streams detached ($(calc '%.1f' "$(now) - $t_detach0") s after the driver ended): replay ${M[2]} bytes, evicted ${M[3]}"
fi
log "[detached] settling ${SETTLE}s, then sampling ${MEASURE}s every ${SAMPLE_MS} ms"
sleep "$SETTLE"
sample_window 1 detached
D_RSS_MAX=$W_RSS_MAX D_RSS_FIRST=$W_RSS_FIRST D_RSS_LAST=$W_RSS_LAST D_FDS=$W_FDS_MAX D_GW_CPU=$W_GW_CPU
D_MOCK_CPU=$W_MOCK_CPU D_MOCK_ACTIVE=$W_MOCK_ACTIVE D_SECS=$W_SECS D_SAMPLES=$W_SAMPLES
D_REPLAY_MAX=$W_REPLAY_MAX D_DET_MIN=$W_DET_MIN D_DET_MAX=$W_DET_MAX
D_EVICTED=$((W_EVICT1 - W_EVICT0)) D_EVICTED_TOTAL=$W_EVICT1 D_WRITE_RATE=$W_WRITE_RATE
D_STREAMS_MAX=$W_STREAMS_MAX D_STREAMS_MIN=$W_STREAMS_MIN D_EXPIRED=$W_EXPIRED
D_DETACHED_TOTAL=$W_DETACHED_TOTAL
((W_SCRAPE_FAILS == 0)) || FAILURES+=("[detached] $W_SCRAPE_FAILS scrapes of /metrics failed")
((D_REPLAY_MAX <= BUDGET_BYTES)) ||
    FAILURES+=("[detached] replay bytes reached $D_REPLAY_MAX, over the budget of $BUDGET_BYTES")
# The gauge counts the streams it can lock at the scrape (try_lock), so it may read a few
# short when the scrape meets a stream being polled; that no stream ended or was attached is
# told by the streams held, the detaches and the expiries.
((D_STREAMS_MIN >= STREAMS && D_EXPIRED == 0 && D_DETACHED_TOTAL == STREAMS && D_DET_MAX >= STREAMS)) ||
    FAILURES+=("[detached] streams did not stay detached: resumable min $D_STREAMS_MIN, detached gauge $D_DET_MIN..$D_DET_MAX, detached_total $D_DETACHED_TOTAL, expired $D_EXPIRED (of $STREAMS)")
((D_FDS < FD_LIMIT - 100)) || FAILURES+=("[detached] $D_FDS descriptors, near the limit of $FD_LIMIT")
((D_EVICTED_TOTAL > 0)) ||
    log "[detached] WARNING: nothing was evicted: the streams never overflowed the budget (raise STREAMS or lower DELAY_MS / BUDGET_MIB)"
log "[detached] RSS max $D_RSS_MAX KiB, replay max $D_REPLAY_MAX bytes (budget $BUDGET_BYTES), evicted $D_EVICTED bytes in the window, fds $D_FDS, mock streams active ${D_MOCK_ACTIVE:-?}"
check_log detached
stop_pid "$GATEWAY_PID" 15
GATEWAY_PID=""
stop_pid "$MOCK_PID" 10
MOCK_PID=""

# ---- attached reference -----------------------------------------------------------------------------
if [[ $REFERENCE == 1 ]]; then
    start_mock
    log "[attached] mock upstream at $MOCK (pid $MOCK_PID)"
    start_gateway attached false
    A_IDLE_RSS=$IDLE_RSS
    log "[attached] $STREAMS streams over h2 at $RAMP/s, held and read for ${HOLD}s"
    "$TIDEGATE_BENCH_BIN" --url "$TARGET_URL" --protocol h2 --per-connection "$PER_CONNECTION" \
        --streams "$STREAMS" --ramp "$RAMP" --chunks "$CHUNKS" --chunk-delay-ms "$DELAY_MS" \
        --hold "${HOLD}s" --duration "$((OPEN_SECS + HOLD + 60))s" \
        --pid "gateway=$GATEWAY_PID" --pid "mock=$MOCK_PID" \
        --json "$OUT_DIR/holder.json" >"$OUT_DIR/holder.txt" 2>"$OUT_DIR/holder.log" &
    HOLDER_PID=$!
    track "$HOLDER_PID"
    if ! wait_for_line "$OUT_DIR/holder.log" 'all open' $((OPEN_SECS + 60)) "$HOLDER_PID"; then
        tail -n 5 "$OUT_DIR/holder.log" >&2
        die "[attached] the holder did not open its streams"
    fi
    grep -m 1 -E 'all open' "$OUT_DIR/holder.log" >&2
    sleep "$SETTLE"
    alive "$HOLDER_PID" || die "[attached] the holder exited before the window: see $OUT_DIR/holder.log"
    sample_window 0 attached
    A_RSS_MAX=$W_RSS_MAX A_RSS_FIRST=$W_RSS_FIRST A_RSS_LAST=$W_RSS_LAST A_FDS=$W_FDS_MAX A_GW_CPU=$W_GW_CPU A_MOCK_CPU=$W_MOCK_CPU
    A_MOCK_ACTIVE=$W_MOCK_ACTIVE
    A_ALIVE=$(grep -oE 'alive=[0-9]+' "$OUT_DIR/holder.log" | tail -n 1 | cut -d= -f2)
    log "[attached] window done; waiting for the holder's hold to end"
    hrc=0
    wait "$HOLDER_PID" || hrc=$?
    forget "$HOLDER_PID"
    opened=$(json_field "$OUT_DIR/holder.json" streams.opened)
    ended=$(json_field "$OUT_DIR/holder.json" hold.ended_early)
    if ((hrc != 0)) || [[ ${opened:-0} != "$STREAMS" || ${ended:-1} != 0 ]]; then
        FAILURES+=("[attached] holder exit $hrc, opened=${opened:-?} ended_early=${ended:-?}: see $OUT_DIR/holder.txt")
    fi
    ((A_FDS < FD_LIMIT - 100)) || FAILURES+=("[attached] $A_FDS descriptors, near the limit of $FD_LIMIT")
    check_log attached
    stop_pid "$GATEWAY_PID" 15
    GATEWAY_PID=""
fi

# ---- the table --------------------------------------------------------------------------------------
mib() { calc '%.1f' "$1 / 1024"; }
D_PER=$(calc '%.2f' "($D_RSS_MAX - $D_IDLE_RSS) / $STREAMS")
D_PER_EXCL=$(calc '%.2f' "($D_RSS_MAX - $D_IDLE_RSS - $D_REPLAY_MAX / 1024) / $STREAMS")
D_OVER=$(calc '%.2f' "$D_RSS_MAX / ($D_IDLE_RSS + $BUDGET_BYTES / 1024)")
D_GROWTH_OVER_BUDGET=$(calc '%.2f' "($D_RSS_MAX - $D_IDLE_RSS) / ($BUDGET_BYTES / 1024)")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- src loadtest/driver 2>/dev/null) ]]; then commit="$commit (dirty)"; fi
{
    echo "## Detached resumable streams: replay memory against the budget"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); memory: $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); kernel: $(uname -r); open files: $FD_LIMIT; commit: $commit"
    echo "- gateway: $TIDEGATE_BIN ($("$TIDEGATE_BIN" --version 2>/dev/null || echo '?')), upstream.http2 = true;" \
        "[resume] memory_budget = \"$BUDGET_MIB MiB\", max_bytes_per_stream = \"$PER_STREAM_KIB KiB\", detach_grace = \"${GRACE}s\""
    echo "- $STREAMS streams over h2 (prior knowledge), $PER_CONNECTION per connection, ramp $RAMP/s;" \
        "mock: $CHUNKS chunks, $DELAY_MS ms apart; detached: each client gone after $DROP_AFTER_EVENTS events;" \
        "attached (reference, resume off): held and read; settle ${SETTLE}s, window ${MEASURE}s, sampled every ${SAMPLE_MS} ms"
    echo
    if [[ $REFERENCE == 1 ]]; then
        echo "| | attached, resume off (reference) | detached, resume on | detached / attached |"
        echo "|---|---|---|---|"
        echo "| streams in the window | $A_ALIVE held by the client | $D_DET_MIN..$D_DET_MAX detached (gauge), $D_STREAMS_MIN..$D_STREAMS_MAX resumable, $D_EXPIRED expired | |"
        echo "| upstream streams at the mock at the end | ${A_MOCK_ACTIVE:-?} | ${D_MOCK_ACTIVE:-?} | |"
        echo "| gateway idle RSS (MiB) | $(mib "$A_IDLE_RSS") | $(mib "$D_IDLE_RSS") | |"
        echo "| gateway RSS at the window's start → end (MiB) | $(mib "$A_RSS_FIRST") → $(mib "$A_RSS_LAST") | $(mib "$D_RSS_FIRST") → $(mib "$D_RSS_LAST") | |"
        echo "| gateway RSS, max in the window (MiB) | $(mib "$A_RSS_MAX") | $(mib "$D_RSS_MAX") | $(calc '%.2f' "$D_RSS_MAX / $A_RSS_MAX")x |"
        A_PER=$(calc '%.2f' "($A_RSS_MAX - $A_IDLE_RSS) / $STREAMS")
        echo "| RSS per stream, (max − idle) / streams (KiB) | $A_PER | $D_PER | $(calc '%.2f' "$D_PER / $A_PER")x |"
        echo "| the same without the replay bytes (KiB) | $A_PER | $D_PER_EXCL | $(calc '%.2f' "$D_PER_EXCL / $A_PER")x |"
        echo "| replay bytes, max in the window / budget | | $(calc '%.2f' "$D_REPLAY_MAX / 1048576") / $BUDGET_MIB MiB ($(calc '%.1f' "100 * $D_REPLAY_MAX / $BUDGET_BYTES") %) | |"
        echo "| written into the replay logs (MiB/s); evicted in the window (MiB) | | $D_WRITE_RATE; $(calc '%.1f' "$D_EVICTED / 1048576") | |"
        echo "| RSS max / (idle RSS + budget) | | $D_OVER | |"
        echo "| (RSS max − idle) / budget | | $D_GROWTH_OVER_BUDGET | |"
        echo "| gateway CPU (% of one core) | $A_GW_CPU | $D_GW_CPU | $(calc '%.2f' "$D_GW_CPU / ($A_GW_CPU > 0 ? $A_GW_CPU : 1)")x |"
        echo "| mock CPU (% of one core) | $A_MOCK_CPU | $D_MOCK_CPU | |"
        echo "| gateway open descriptors, max (limit $FD_LIMIT) | $A_FDS | $D_FDS | |"
    else
        echo "| | detached, resume on |"
        echo "|---|---|"
        echo "| streams in the window | $D_DET_MIN..$D_DET_MAX detached (gauge), $D_STREAMS_MIN..$D_STREAMS_MAX resumable, $D_EXPIRED expired |"
        echo "| upstream streams at the mock at the end | ${D_MOCK_ACTIVE:-?} |"
        echo "| gateway idle RSS; RSS at the window's start → end; max (MiB) | $(mib "$D_IDLE_RSS"); $(mib "$D_RSS_FIRST") → $(mib "$D_RSS_LAST"); $(mib "$D_RSS_MAX") |"
        echo "| RSS per stream, (max − idle) / streams (KiB); without the replay bytes | $D_PER; $D_PER_EXCL |"
        echo "| replay bytes, max in the window / budget | $(calc '%.2f' "$D_REPLAY_MAX / 1048576") / $BUDGET_MIB MiB ($(calc '%.1f' "100 * $D_REPLAY_MAX / $BUDGET_BYTES") %) |"
        echo "| written into the replay logs (MiB/s); evicted in the window (MiB) | $D_WRITE_RATE; $(calc '%.1f' "$D_EVICTED / 1048576") |"
        echo "| RSS max / (idle RSS + budget); (RSS max − idle) / budget | $D_OVER; $D_GROWTH_OVER_BUDGET |"
        echo "| gateway CPU; mock CPU (% of one core) | $D_GW_CPU; $D_MOCK_CPU |"
        echo "| gateway open descriptors, max (limit $FD_LIMIT) | $D_FDS |"
    fi
    echo
    echo "Window: ${D_SECS}s, $D_SAMPLES samples (OUT_DIR/detached-samples.tsv). Budget: replay bytes max $D_REPLAY_MAX <= $BUDGET_BYTES: $( ((D_REPLAY_MAX <= BUDGET_BYTES)) && echo yes || echo NO)."
} | tee "$OUT_DIR/results.md"

if ((${#FAILURES[@]} > 0)); then
    printf '%s\n' "${FAILURES[@]}" | while read -r line; do log "FAILED: $line"; done
    exit 1
fi
