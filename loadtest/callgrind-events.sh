#!/usr/bin/env bash
# Instructions per relayed event and per stream, counted by valgrind's callgrind, for tidegate
# and for nginx as the reference.
#
# CPU seconds on this machine vary by up to 20 % from run to run, more than most single changes
# save. Instruction counts in user space do not depend on what else the machine is doing, so a
# change of a few percent shows. (They still vary by a few percent between runs of a full
# gateway, because how many events one wake-up handles depends on timing; kernel work is not
# counted at all.)
#
# For each target it runs the load three times with the target under callgrind (the mock and
# the load driver run outside it): STREAMS streams without content chunks, twice as many without,
# and STREAMS streams with CHUNKS chunks each. Per relayed event: the third run minus the first,
# over the extra events. Per stream: the second minus the first, over the extra streams, so the
# process's start-up cancels out.
#
#   TARGETS="tidegate-h2 nginx" loadtest/callgrind-events.sh
#   API=responses TARGETS=tidegate-h2 loadtest/callgrind-events.sh    # the Responses API
#
# Environment:
#   TARGETS       tidegate-h2 (HTTP/2 to the upstream), tidegate (HTTP/1.1), nginx
#                 (default: "tidegate-h2 nginx"; nginx needs the nginx package)
#   STREAMS       concurrent streams (default 300)
#   CHUNKS        content chunks per stream in the third run (default 40)
#   DELAY_MS      delay between chunks (default 50)
#   API           chat (POST /v1/chat/completions, the default) or responses (POST /v1/responses:
#                 eight events per stream without chunks, and each chunk a
#                 response.output_text.delta), passed to the driver as --api. Other than chat,
#                 the API is named above the table, in the log and in the output names
#                 (OUT_DIR/<target>-responses-base, ..., mock-responses.log), so runs of both
#                 APIs can share an OUT_DIR
#   TIDEGATE_BIN  the binary to measure and to run the mock with (default: builds
#                 target/release/tidegate, and the driver with it)
#   TIDEGATE_BENCH_BIN  the load driver (default: tidegate-bench next to TIDEGATE_BIN)
#   OUT_DIR       where profiles and reports go (default: a new directory under /tmp)
#   BY_CRATE=1    also split both figures by crate (loadtest/callgrind-summary.py)
#   TIDEGATE_EXTRA_CONFIG  more TOML for the tidegate targets' config, e.g.
#                 $'[resume]\nenabled = true' to count resumable streams
# Open a profile with `callgrind_annotate --inclusive=yes OUT_DIR/<target>-loaded/cg.<pid>`
# (with API=responses: OUT_DIR/<target>-responses-loaded/cg.<pid>).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGETS=${TARGETS:-"tidegate-h2 nginx"}
STREAMS=${STREAMS:-300}
CHUNKS=${CHUNKS:-40}
DELAY_MS=${DELAY_MS:-50}
API=${API:-chat}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/tidegate-callgrind.XXXXXX)}
# A given OUT_DIR may not exist yet. mktemp makes it 0700: nginx's workers (an unprivileged user)
# must reach their profile folders inside it, or they write no profile and nginx's counts come
# out as 0.
mkdir -p "$OUT_DIR"
chmod 755 "$OUT_DIR"

# LOG_NAME and EXIT_NOTE are read by lib.sh, which plain `shellcheck` (without -x) does not follow.
# shellcheck disable=SC2034
LOG_NAME="callgrind-events"
# shellcheck source=loadtest/lib.sh disable=SC1091
source loadtest/lib.sh
# shellcheck disable=SC2034
EXIT_NOTE="profiles and reports in $OUT_DIR"

# What the output names add for the API: nothing for chat, so its names stay as they were.
case $API in
    chat) API_SUFFIX="" ;;
    responses) API_SUFFIX=-responses ;;
    *) die "API=$API: give chat or responses" ;;
esac

command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
find_binaries
mkdir -p "$OUT_DIR"

MOCK_LOG=$OUT_DIR/mock$API_SUFFIX.log
"$TIDEGATE_BIN" mock-upstream --listen 127.0.0.1:0 >"$MOCK_LOG" 2>&1 &
track "$!"
wait_for_line "$MOCK_LOG" 'mock upstream on http://' 15 "$!" || die "the mock did not start"
MOCK=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$MOCK_LOG" | head -n 1 | cut -d/ -f3)

# run_dir TARGET NAME: where one run's profiles and the driver's report go.
run_dir() {
    printf '%s/%s%s-%s' "$OUT_DIR" "$1" "$API_SUFFIX" "$2"
}

# measure TARGET STREAMS CHUNKS NAME: one run with the target under callgrind; its profiles
# land in $(run_dir TARGET NAME)/cg.<pid>, the driver's report in bench.json there.
measure() {
    local target=$1 streams=$2 chunks=$3 dir port pid
    dir=$(run_dir "$1" "$4")
    mkdir -p "$dir"
    # nginx's workers run as an unprivileged user and write their own profiles.
    chmod 1777 "$dir"
    port=$(free_port)
    local callgrind=(valgrind --tool=callgrind --trace-children=yes
        "--callgrind-out-file=$dir/cg.%p")
    case $target in
        nginx)
            command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx)"
            mkdir -p "$dir/nginx"
            sed -e "s|@WORKERS@|$(nproc)|; s|@DIR@|$dir/nginx|g; s|@UPSTREAM@|$MOCK|" \
                -e "s|@LISTEN@|127.0.0.1:$port|; s|@ACCESS_LOG@|off|; s|@LISTEN_OPTS@||" \
                loadtest/nginx/nginx.conf.template >"$dir/nginx/nginx.conf"
            "${callgrind[@]}" nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" \
                >"$dir/target.log" 2>&1 &
            pid=$!
            ;;
        tidegate | tidegate-h2)
            local http2=false
            [[ $target == tidegate-h2 ]] && http2=true
            {
                printf 'listen = "127.0.0.1:%s"\n\n[upstream]\n' "$port"
                printf 'base_url = "http://%s/v1"\nforward_headers = ["x-mock-*"]\n' "$MOCK"
                printf 'http2 = %s\n\n[shutdown]\ndrain_timeout = "1s"\n' "$http2"
                # More TOML from the caller (e.g. a [resume] table), as in lib.sh.
                printf '%s\n' "${TIDEGATE_EXTRA_CONFIG:-}"
            } >"$dir/gateway.toml"
            "${callgrind[@]}" "$TIDEGATE_BIN" --config "$dir/gateway.toml" >"$dir/target.log" 2>&1 &
            pid=$!
            ;;
        *) die "unknown target $target" ;;
    esac
    track "$pid"
    # Under callgrind, start-up takes seconds: wait until the port answers.
    local i
    for ((i = 0; i < 300; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            break
        fi
        kill -0 "$pid" 2>/dev/null || die "$target exited at start: $(tail -n 5 "$dir/target.log")"
        sleep 0.2
    done
    ((i < 300)) || die "$target did not listen within 60 s"
    "$TIDEGATE_BENCH_BIN" --url "http://127.0.0.1:$port" --api "$API" --streams "$streams" --ramp 200 \
        --chunks "$chunks" --chunk-delay-ms "$DELAY_MS" --quiet --json "$dir/bench.json" \
        >"$dir/bench.txt" 2>&1 || die "[$target] streams failed: $(cat "$dir/bench.txt")"
    # A graceful stop, so that every process writes its profile.
    if [[ $target == nginx ]]; then
        kill -QUIT "$(cat "$dir/nginx/nginx.pid")"
    else
        kill -TERM "$pid"
    fi
    # Bounded: writing a profile takes a second or two; a target still running after 60 s is
    # killed, and its run has no profile (the summary then says so).
    for ((i = 0; i < 600; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    stop_pid "$pid" 1
}

split=()
[[ ${BY_CRATE:-0} == 1 ]] && split=(--by-crate)
api_note=""
if [[ $API != chat ]]; then
    api_note=" ($API API)"
    printf 'API: %s\n' "$API"
fi
printf '%-12s %8s %10s %12s %12s\n' target streams "extra ev" "instr/event" "instr/stream"
for target in $TARGETS; do
    log "[$target]$api_note $STREAMS streams without chunks, $((2 * STREAMS)) without," \
        "$STREAMS with $CHUNKS"
    measure "$target" "$STREAMS" 0 base
    measure "$target" "$((2 * STREAMS))" 0 double
    measure "$target" "$STREAMS" "$CHUNKS" loaded
    python3 loadtest/callgrind-summary.py "$target" "$(run_dir "$target" base)" \
        "$(run_dir "$target" double)" "$(run_dir "$target" loaded)" "${split[@]}"
done
