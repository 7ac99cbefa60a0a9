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
#
# Environment:
#   TARGETS       tidegate-h2 (HTTP/2 to the upstream), tidegate (HTTP/1.1), nginx
#                 (default: "tidegate-h2 nginx"; nginx needs the nginx package)
#   STREAMS       concurrent streams (default 300)
#   CHUNKS        content chunks per stream in the third run (default 40)
#   DELAY_MS      delay between chunks (default 50)
#   TIDEGATE_BIN  the binary to measure and to run the mock with (default: builds
#                 target/release/tidegate, and the driver with it)
#   TIDEGATE_BENCH_BIN  the load driver (default: tidegate-bench next to TIDEGATE_BIN)
#   OUT_DIR       where profiles and reports go (default: a new directory under /tmp)
#   BY_CRATE=1    also split both figures by crate (loadtest/callgrind-summary.py)
#   TIDEGATE_EXTRA_CONFIG  more TOML for the tidegate targets' config, e.g.
#                 $'[resume]\nenabled = true' to count resumable streams
# Open a profile with `callgrind_annotate --inclusive=yes OUT_DIR/<target>-loaded/cg.<pid>`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGETS=${TARGETS:-"tidegate-h2 nginx"}
STREAMS=${STREAMS:-300}
CHUNKS=${CHUNKS:-40}
DELAY_MS=${DELAY_MS:-50}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/tidegate-callgrind.XXXXXX)}
# mktemp makes it 0700: nginx's workers (an unprivileged user) must reach their profile folders
# inside it, or they write no profile and nginx's counts come out as 0.
chmod 755 "$OUT_DIR"

LOG_NAME=callgrind-events
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh
EXIT_NOTE="profiles and reports in $OUT_DIR"

command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
find_binaries
mkdir -p "$OUT_DIR"

"$TIDEGATE_BIN" mock-upstream --listen 127.0.0.1:0 >"$OUT_DIR/mock.log" 2>&1 &
track "$!"
wait_for_line "$OUT_DIR/mock.log" 'mock upstream on http://' 15 "$!" || die "the mock did not start"
MOCK=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$OUT_DIR/mock.log" | head -n 1 | cut -d/ -f3)

# measure TARGET STREAMS CHUNKS NAME: one run with the target under callgrind; its profiles
# land in $OUT_DIR/TARGET-NAME/cg.<pid>, the driver's report in bench.json there.
measure() {
    local target=$1 streams=$2 chunks=$3 dir=$OUT_DIR/$1-$4 port pid
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
    "$TIDEGATE_BENCH_BIN" --url "http://127.0.0.1:$port" --streams "$streams" --ramp 200 \
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
printf '%-12s %8s %10s %12s %12s\n' target streams "extra ev" "instr/event" "instr/stream"
for target in $TARGETS; do
    log "[$target] $STREAMS streams without chunks, $((2 * STREAMS)) without, $STREAMS with $CHUNKS"
    measure "$target" "$STREAMS" 0 base
    measure "$target" "$((2 * STREAMS))" 0 double
    measure "$target" "$STREAMS" "$CHUNKS" loaded
    python3 loadtest/callgrind-summary.py "$target" "$OUT_DIR/$target-base" \
        "$OUT_DIR/$target-double" "$OUT_DIR/$target-loaded" "${split[@]}"
done
