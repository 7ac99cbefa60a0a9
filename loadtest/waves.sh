#!/usr/bin/env bash
# One client's trouble, many bystanders (issue 10, requirement 3): for each target, a wave of
# clients that go away runs through it while BYSTANDERS ordinary streams do, and the table says
# how many bystanders failed and what the wave did to their time to first event and per-event
# latency. A gateway that multiplexes clients onto a few HTTP/2 upstream connections must reset
# one upstream stream per client that leaves; that must never fail another client's stream.
#
# Two waves, each against a freshly started target, both in front of one mock upstream:
#   cancel  WAVE clients that start a stream and go away after their first event
#           (tidegate-bench --drop-after-events), while the mock is still sending
#           CANCEL_CHUNKS chunks CANCEL_DELAY_MS apart: the target resets WAVE upstream streams;
#   stall   WAVE clients that take the response headers, read nothing while the mock sends
#           STALL_CHUNKS chunks STALL_DELAY_MS apart (their buffers and windows fill), then
#           vanish STALL_MS after their headers (--stall-after-headers --drop-after-ms);
#   flood   (tidegate targets only) the target's limits.max_connections is BYSTANDERS, so once
#           the bystanders are all open, each of the WAVE clients is refused at accept (a 503
#           and a close): what a flood of refused connections costs the streams running;
#   none    no wave: the bystanders alone, the baseline for the others.
# The bystanders start LEAD s before the wave, BYSTANDER_RAMP a second, so they start before,
# during and after it, and each lasts BYSTANDER_CHUNKS x BYSTANDER_DELAY_MS: some are always
# running while the wave does. Everything is HTTP/1.1 from the clients (one connection each).
# Loopback only. See loadtest/README.md ("Cancel and stall waves").
#
#   TARGETS="tidegate-h2 tidegate nginx" loadtest/waves.sh
#
# Environment (defaults in brackets):
#   TARGETS ["tidegate-h2 tidegate nginx"]  tidegate-h2: upstream.http2 = true (a pool of
#                    HTTP/2 connections, at most 100 streams each); tidegate: HTTP/1.1 upstream;
#                    nginx: the reference proxy; direct: the mock itself
#   WAVES ["cancel stall"]
#   WAVE [3000]  WAVE_RAMP [1000]          wave clients, and how many start per second
#   BYSTANDERS [300]  BYSTANDER_RAMP [50]  BYSTANDER_CHUNKS [60]  BYSTANDER_DELAY_MS [50]
#   LEAD [1]                                seconds the bystanders start before the wave
#   CANCEL_CHUNKS [200]  CANCEL_DELAY_MS [5]  CANCEL_AFTER_EVENTS [1]
#   STALL_CHUNKS [2000]  STALL_DELAY_MS [0]  STALL_MS [2000]
#   THREADS [1]                             worker threads of each driver
#   NGINX_ACCESS_LOG [0]                    1: nginx writes an access log
#   TIDEGATE_BIN [target/release/tidegate]  the gateway; built (with the driver) unless set
#   MOCK_BIN [TIDEGATE_BIN]                 the mock upstream's binary: set it to the current
#                                           build when TIDEGATE_BIN is an older gateway, so that
#                                           only the gateway differs
#   TIDEGATE_BENCH_BIN [tidegate-bench next to TIDEGATE_BIN]  the load driver
#   OUT_DIR [a new /tmp/tidegate-waves.XXXXXX]  per run: configs, logs, both drivers' JSON
#                    reports and tables, the bystanders' chart; results.md (the table)
#
# Open files (20,000 per process here): an HTTP/1.1 stream through a proxy holds two sockets in
# it, so a wave of 3,000 plus the bystanders holds at most about 6,600 in the target.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGETS=${TARGETS:-"tidegate-h2 tidegate nginx"}
WAVES=${WAVES:-"cancel stall"}
WAVE=${WAVE:-3000}
WAVE_RAMP=${WAVE_RAMP:-1000}
BYSTANDERS=${BYSTANDERS:-300}
BYSTANDER_RAMP=${BYSTANDER_RAMP:-50}
BYSTANDER_CHUNKS=${BYSTANDER_CHUNKS:-60}
BYSTANDER_DELAY_MS=${BYSTANDER_DELAY_MS:-50}
LEAD=${LEAD:-1}
CANCEL_CHUNKS=${CANCEL_CHUNKS:-200}
CANCEL_DELAY_MS=${CANCEL_DELAY_MS:-5}
CANCEL_AFTER_EVENTS=${CANCEL_AFTER_EVENTS:-1}
STALL_CHUNKS=${STALL_CHUNKS:-2000}
STALL_DELAY_MS=${STALL_DELAY_MS:-0}
STALL_MS=${STALL_MS:-2000}
THREADS=${THREADS:-1}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/tidegate-waves.XXXXXX)}

LOG_NAME=waves
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh
EXIT_NOTE="logs and reports in $OUT_DIR"

for var in WAVE WAVE_RAMP BYSTANDERS BYSTANDER_RAMP BYSTANDER_CHUNKS BYSTANDER_DELAY_MS LEAD \
    CANCEL_CHUNKS CANCEL_DELAY_MS CANCEL_AFTER_EVENTS STALL_CHUNKS STALL_DELAY_MS STALL_MS THREADS; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer (got '${!var}')"
done
for var in WAVE WAVE_RAMP BYSTANDERS BYSTANDER_RAMP CANCEL_AFTER_EVENTS THREADS; do
    ((${!var} >= 1)) || die "$var must be at least 1"
done
for wave in $WAVES; do
    [[ $wave =~ ^(cancel|stall|flood|none)$ ]] || die "unknown wave $wave (cancel, stall, flood, none)"
done
# Two sockets per proxied HTTP/1.1 stream, wave and bystanders all open at once at worst (a
# flood's refused connections hold none for long).
if [[ " $WAVES " =~ \ (cancel|stall)\  ]]; then
    ((2 * (WAVE + BYSTANDERS) + 200 <= 20000)) ||
        die "WAVE + BYSTANDERS = $((WAVE + BYSTANDERS)) streams need two sockets each in the target: over the 20,000 open files"
fi

find_binaries
mkdir -p "$OUT_DIR"
start_mock
log "mock upstream at $MOCK (pid $MOCK_PID, $("${MOCK_BIN:-$TIDEGATE_BIN}" --version))"

# A counter of the mock's GET /stats (streams_active, streams_cancelled, ...).
mock_stat() {
    curl -sf "http://$MOCK/stats" |
        python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}

# Waits until the mock has no stream running (the previous run's cancellations have reached
# it), for at most $1 seconds; says so if it never gets there.
wait_mock_idle() {
    local secs=$1 i
    # Bounded: secs × 10 polls of 0.1 s.
    for ((i = 0; i < secs * 10; i++)); do
        [[ $(mock_stat streams_active) == 0 ]] && return 0
        sleep 0.1
    done
    log "the mock still has $(mock_stat streams_active) streams running after ${secs}s"
    return 1
}

# The row of the table for one run, from both drivers' JSON reports.
row() {
    python3 - "$@" <<'PY'
import json, sys
target, wave, dir, cancelled, idle = sys.argv[1:6]
def load(name):
    try:
        with open(f"{dir}/{name}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def ms(us):
    return "-" if us is None else f"{us / 1000:.2f}"
b, w = load("bystanders"), load("wave")
if b is None or w is None:
    print(f"| {target} | {wave} | no report | | | | | |")
    sys.exit(0)
s = b["streams"]
kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["failed_by_kind"].items())) or "-"
if s["cancelled"] or s["not_started"]:
    kinds += f" (cancelled {s['cancelled']}, not started {s['not_started']})"
first, event = b["time_to_first_event_us"], b["event_latency_us"]
ws = w["streams"]
wave_kinds = ", ".join(f"{k} {n}" for k, n in sorted(ws["failed_by_kind"].items()))
wave_cell = f"{ws['dropped']} / {ws['failed']}" + (f" ({wave_kinds})" if wave_kinds else "")
upstream = cancelled + ("" if idle == "1" else " (mock not idle after)")
print(
    f"| {target} | {wave} | {s['completed']} / {s['failed']} | {kinds} "
    f"| {ms(first['p50'])} / {ms(first['p99'])} "
    f"| {ms(event['p50'])} / {ms(event['p99'])} / {ms(event['max'])} "
    f"| {wave_cell} | {upstream} |"
)
PY
}

# One wave against one freshly started target; appends its row to results.md.
run_wave() {
    local target=$1 wave=$2 dir=$OUT_DIR/$1-$2
    mkdir -p "$dir"
    wait_mock_idle 60 || true
    TARGET_PID=""
    if [[ $wave == flood ]]; then
        [[ $target == tidegate* ]] || { log "[$target/flood] skipped: tidegate targets only"; return 0; }
        TIDEGATE_EXTRA_CONFIG=$(printf '[limits]\nmax_connections = %s' "$BYSTANDERS")
    else
        TIDEGATE_EXTRA_CONFIG=""
    fi
    case $target in
        direct)
            TARGET_URL=http://$MOCK
            TARGET_PIDS=()
            ;;
        nginx) start_nginx "$dir/nginx" ;;
        tidegate) start_tidegate tidegate false "$dir" ;;
        tidegate-h2) start_tidegate tidegate-h2 true "$dir" ;;
        *) die "unknown target $target" ;;
    esac
    local wave_args
    case $wave in
        cancel)
            wave_args=(--chunks "$CANCEL_CHUNKS" --chunk-delay-ms "$CANCEL_DELAY_MS"
                --drop-after-events "$CANCEL_AFTER_EVENTS")
            ;;
        stall)
            wave_args=(--chunks "$STALL_CHUNKS" --chunk-delay-ms "$STALL_DELAY_MS"
                --stall-after-headers --drop-after-ms "$STALL_MS")
            ;;
        flood) wave_args=(--chunks 1 --chunk-delay-ms 0) ;;
        none) wave_args=() ;;
    esac
    local cancelled_before
    cancelled_before=$(mock_stat streams_cancelled)
    log "[$target/$wave] $BYSTANDERS bystanders at ${BYSTANDER_RAMP}/s; after ${LEAD}s, $WAVE wave clients at ${WAVE_RAMP}/s"
    # Both drivers are bounded by their own stream timeouts and by --duration.
    "$TIDEGATE_BENCH_BIN" --url "$TARGET_URL" --streams "$BYSTANDERS" --ramp "$BYSTANDER_RAMP" \
        --chunks "$BYSTANDER_CHUNKS" --chunk-delay-ms "$BYSTANDER_DELAY_MS" --threads "$THREADS" \
        --duration 5m "${TARGET_PIDS[@]}" --pid "mock=$MOCK_PID" \
        --json "$dir/bystanders.json" --svg "$dir/bystanders.svg" \
        >"$dir/bystanders.txt" 2>"$dir/bystanders.progress" &
    local bystanders=$!
    track "$bystanders"
    sleep "$LEAD"
    if [[ $wave == none ]]; then
        echo '{"streams":{"dropped":0,"failed":0,"failed_by_kind":{}}}' >"$dir/wave.json"
    else
        "$TIDEGATE_BENCH_BIN" --url "$TARGET_URL" --streams "$WAVE" --ramp "$WAVE_RAMP" \
            "${wave_args[@]}" --threads "$THREADS" --duration 5m --json "$dir/wave.json" \
            >"$dir/wave.txt" 2>"$dir/wave.progress" ||
            log "[$target/$wave] some wave streams neither dropped nor completed (see $dir/wave.txt)"
    fi
    if ! wait "$bystanders"; then
        log "[$target/$wave] some bystanders did not complete (see $dir/bystanders.txt)"
    fi
    forget "$bystanders"
    local idle=1
    wait_mock_idle 60 || idle=0
    local cancelled
    cancelled=$(($(mock_stat streams_cancelled) - cancelled_before))
    if [[ -n $TARGET_PID ]]; then
        stop_pid "$TARGET_PID" 10
    fi
    row "$target" "$wave" "$dir" "$cancelled" "$idle" | tee -a "$OUT_DIR/results.md"
}

{
    echo "| target | wave | bystanders completed / failed | bystander failures by kind | bystander time to first event p50 / p99 (ms) | bystander per-event added p50 / p99 / max (ms) | wave dropped / failed | upstream streams cancelled (mock) |"
    echo "|---|---|---|---|---|---|---|---|"
} | tee "$OUT_DIR/results.md"
for target in $TARGETS; do
    for wave in $WAVES; do
        run_wave "$target" "$wave"
    done
done
