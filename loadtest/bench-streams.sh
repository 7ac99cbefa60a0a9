#!/usr/bin/env bash
# The concurrent-stream benchmark: the same load, in one session, (1) directly against the mock
# upstream (the latency reference), (2) through nginx (the reference proxy: proxy_buffering off,
# one worker per core) and (3) through tidegate. Each run is `tidegate-bench` with the target
# process's pids, so RSS and CPU are measured per target. Loopback only.
#
# Environment (defaults in brackets):
#   STREAMS [9500]   concurrent streams (HTTP/1.1 clients: a proxied stream holds two sockets in
#                    the proxy, and the open-files hard cap is 20,000 per process)
#   PROTOCOL [http1] http1 or h2 between the driver and the target
#   PER_CONNECTION [100]  h2: streams per connection (the driver's --per-connection)
#   TLS [0]          1: TLS between the driver and nginx / tidegate (ECDSA P-256 test CA and leaf
#                    made with openssl in OUT_DIR/tls, the same pair for both; nginx
#                    `listen ... ssl http2`, tidegate [tls]; ALPN picks the protocol). The mock
#                    has no TLS, so the "direct" target is refused
#   CHUNKS [30]  DELAY_MS [1000]  RAMP [1000]  THREADS [1]
#   API [chat]       chat or responses (OpenAI's Responses API), the driver's --api; other than
#                    chat, each target's files are named OUT_DIR/<target>-responses.{json,svg,...}
#   NGINX_ACCESS_LOG [0]  1: nginx writes its default access log (one line per request) to a file
#   TARGETS ["direct nginx tidegate"]; also "tidegate-h2": tidegate with upstream.http2 = true
#                    (one HTTP/2 connection to the mock for all streams)
#   TIDEGATE_BIN [target/release/tidegate]  built (with the driver) unless set
#   TIDEGATE_BENCH_BIN [tidegate-bench next to TIDEGATE_BIN]  the load driver
#   OUT_DIR [a new /tmp/tidegate-bench.XXXXXX]  configs, logs, JSON reports, SVG charts
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STREAMS=${STREAMS:-9500}
PROTOCOL=${PROTOCOL:-http1}
PER_CONNECTION=${PER_CONNECTION:-100}
TLS=${TLS:-0}
CHUNKS=${CHUNKS:-30}
DELAY_MS=${DELAY_MS:-1000}
RAMP=${RAMP:-1000}
THREADS=${THREADS:-1}
API=${API:-chat}
TARGETS=${TARGETS:-"direct nginx tidegate"}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/tidegate-bench.XXXXXX)}

LOG_NAME=bench-streams
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh
EXIT_NOTE="logs, reports and charts in $OUT_DIR"

# What each target's file names add for the API: nothing for chat, as before.
case $API in
    chat) API_SUFFIX="" ;;
    responses) API_SUFFIX=-responses ;;
    *) die "API=$API: give chat or responses" ;;
esac

find_binaries
mkdir -p "$OUT_DIR"
if [[ $TLS == 1 ]]; then
    [[ " $TARGETS " != *" direct "* ]] ||
        die "TLS=1: the mock (target direct) has no TLS; leave it out of TARGETS"
    make_tls_pki "$OUT_DIR/tls"
    log "TLS: test CA and certificate in $OUT_DIR/tls"
fi

# ---- the mock upstream (its own process, shared by all targets) --------------------------------
start_mock
log "mock upstream at $MOCK (pid $MOCK_PID)"

# ---- targets (start_nginx and start_tidegate are in lib.sh) -----------------------------------
for target in $TARGETS; do
    # The target's process, stopped after its run so that it does not idle through the next.
    TARGET_PID=""
    case $target in
        direct)
            TARGET_URL=http://$MOCK
            TARGET_PIDS=("--pid" "mock=$MOCK_PID")
            ;;
        nginx) start_nginx "$OUT_DIR/nginx" ;;
        tidegate) start_tidegate tidegate false ;;
        tidegate-h2) start_tidegate tidegate-h2 true ;;
        *) die "unknown target $target" ;;
    esac
    log "[$target] $STREAMS streams${API_SUFFIX:+ ($API API)} over $PROTOCOL to $TARGET_URL"
    out=$OUT_DIR/$target$API_SUFFIX
    "$TIDEGATE_BENCH_BIN" --url "$TARGET_URL" --api "$API" --streams "$STREAMS" --ramp "$RAMP" \
        --protocol "$PROTOCOL" --per-connection "$PER_CONNECTION" --chunks "$CHUNKS" \
        --chunk-delay-ms "$DELAY_MS" --threads "$THREADS" "${TARGET_PIDS[@]}" "${DRIVER_TLS_ARGS[@]}" \
        --json "$out.json" --svg "$out.svg" \
        >"$out.txt" 2>"$out.progress" || log "[$target] some streams failed"
    cat "$out.txt"
    stop_pid "$TARGET_PID" 10
done
