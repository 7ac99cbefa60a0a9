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
#   CHUNKS [30]  DELAY_MS [1000]  RAMP [1000]  THREADS [1]
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
CHUNKS=${CHUNKS:-30}
DELAY_MS=${DELAY_MS:-1000}
RAMP=${RAMP:-1000}
THREADS=${THREADS:-1}
TARGETS=${TARGETS:-"direct nginx tidegate"}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/tidegate-bench.XXXXXX)}

LOG_NAME=bench-streams
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh
EXIT_NOTE="logs, reports and charts in $OUT_DIR"

find_binaries
mkdir -p "$OUT_DIR"

# ---- the mock upstream (its own process, shared by all targets) --------------------------------
"$TIDEGATE_BIN" mock-upstream --listen 127.0.0.1:0 >"$OUT_DIR/mock.log" 2>&1 &
MOCK_PID=$!
track "$MOCK_PID"
wait_for_line "$OUT_DIR/mock.log" 'mock upstream on http://' 15 "$MOCK_PID" || die "the mock did not start"
MOCK=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$OUT_DIR/mock.log" | head -n 1 | cut -d/ -f3)
log "mock upstream at $MOCK (pid $MOCK_PID)"

# ---- targets -------------------------------------------------------------------------------------
start_nginx() {
    command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx)"
    local port dir=$OUT_DIR/nginx
    mkdir -p "$dir"
    port=$(free_port)
    local access_log=off
    if [[ ${NGINX_ACCESS_LOG:-0} == 1 ]]; then
        access_log=$dir/access.log
    fi
    sed -e "s|@WORKERS@|$(nproc)|; s|@DIR@|$dir|g; s|@UPSTREAM@|$MOCK|; s|@LISTEN@|127.0.0.1:$port|" \
        -e "s|@ACCESS_LOG@|$access_log|" \
        loadtest/nginx/nginx.conf.template >"$dir/nginx.conf"
    nginx -c "$dir/nginx.conf" -p "$dir" 2>"$dir/stderr.log" &
    TARGET_PID=$!
    track "$TARGET_PID"
    wait_for_line "$dir/nginx.pid" '[0-9]' 15 "$TARGET_PID" ||
        die "nginx did not start: $(cat "$dir/stderr.log")"
    sleep 1
    TARGET_URL=http://127.0.0.1:$port
    TARGET_PIDS=()
    local w i=1
    for w in $(pgrep -P "$(cat "$dir/nginx.pid")"); do
        TARGET_PIDS+=("--pid" "nginx-worker-$i=$w")
        i=$((i + 1))
    done
}

start_tidegate() {
    local name=$1 http2=$2
    local cfg=$OUT_DIR/$name.toml glog=$OUT_DIR/$name.log
    {
        printf 'listen = "127.0.0.1:0"\n\n[upstream]\nbase_url = "http://%s/v1"\n' "$MOCK"
        printf 'forward_headers = ["x-mock-*"]\nhttp2 = %s\n\n' "$http2"
        printf '[shutdown]\ndrain_timeout = "1s"\n'
    } >"$cfg"
    "$TIDEGATE_BIN" --config "$cfg" >"$glog" 2>&1 &
    local pid=$!
    TARGET_PID=$pid
    track "$pid"
    wait_for_line "$glog" 'tidegate listening' 15 "$pid" || die "tidegate did not start: $(cat "$glog")"
    TARGET_URL=http://$(grep -m 1 'tidegate listening' "$glog" | grep -oE 'listen=[0-9.:]+' | cut -d= -f2)
    TARGET_PIDS=("--pid" "$name=$pid")
    sleep 1
}

for target in $TARGETS; do
    # The target's process, stopped after its run so that it does not idle through the next.
    TARGET_PID=""
    case $target in
        direct)
            TARGET_URL=http://$MOCK
            TARGET_PIDS=("--pid" "mock=$MOCK_PID")
            ;;
        nginx) start_nginx ;;
        tidegate) start_tidegate tidegate false ;;
        tidegate-h2) start_tidegate tidegate-h2 true ;;
        *) die "unknown target $target" ;;
    esac
    log "[$target] $STREAMS streams over $PROTOCOL to $TARGET_URL"
    "$TIDEGATE_BENCH_BIN" --url "$TARGET_URL" --streams "$STREAMS" --ramp "$RAMP" \
        --protocol "$PROTOCOL" --chunks "$CHUNKS" --chunk-delay-ms "$DELAY_MS" \
        --threads "$THREADS" "${TARGET_PIDS[@]}" \
        --json "$OUT_DIR/$target.json" --svg "$OUT_DIR/$target.svg" \
        >"$OUT_DIR/$target.txt" 2>"$OUT_DIR/$target.progress" || log "[$target] some streams failed"
    cat "$OUT_DIR/$target.txt"
    stop_pid "$TARGET_PID" 10
done
