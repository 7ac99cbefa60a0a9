# Helpers shared by the scripts in loadtest/. Sourced, not run:
#
#   LOG_NAME=bench-streams
#   source "$ROOT/loadtest/lib.sh"
#
# Sourcing it installs an EXIT trap that stops every child registered with `track`, newest first
# (TERM, then KILL after a grace period), and then logs $EXIT_NOTE if it is set.
# shellcheck shell=bash

log() { printf '%s: %s\n' "${LOG_NAME:-loadtest}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Whether pid $1 (possibly empty) is running.
alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# Children to stop at exit, oldest first.
CHILDREN=()
# Logged last at exit, for example where the reports are.
EXIT_NOTE=""

track() { CHILDREN+=("$1"); }

# Drops pid $1 from the children, so that a stopped child's pid is never signalled again.
forget() {
    local pid kept=()
    for pid in "${CHILDREN[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    CHILDREN=("${kept[@]}")
}

# Sends TERM to child $1, waits up to $2 seconds (default 5), then KILLs it; reaps it and
# forgets it.
stop_pid() {
    local pid=$1 grace=${2:-5} i
    [[ -n $pid ]] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "pid $pid still running after ${grace}s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#CHILDREN[@]} - 1; i >= 0; i--)); do
        stop_pid "${CHILDREN[i]}" 10
    done
    [[ -z $EXIT_NOTE ]] || log "$EXIT_NOTE"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until file $1 has a line matching extended regex $2, for at most $3 seconds; with a
# pid $4, gives up as soon as that process has exited.
wait_for_line() {
    local file=$1 pattern=$2 secs=$3 pid=${4:-} i
    for ((i = 0; i < secs * 10; i++)); do
        if grep -qE "$pattern" "$file" 2>/dev/null; then return 0; fi
        if [[ -n $pid ]] && ! alive "$pid"; then return 1; fi
        sleep 0.1
    done
    return 1
}

# A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Sets TIDEGATE_BIN (the gateway, also the mock upstream) and TIDEGATE_BENCH_BIN (the load
# driver, `tidegate-bench`). With TIDEGATE_BIN unset, `cargo build --release` builds both (every
# workspace member's binaries) into target/release. TIDEGATE_BENCH_BIN defaults to the
# tidegate-bench next to TIDEGATE_BIN; set it when TIDEGATE_BIN is a gateway built elsewhere.
# Both end up as absolute paths.
find_binaries() {
    if [[ -z ${TIDEGATE_BIN:-} ]]; then
        log "building (cargo build --release)"
        cargo build --release >&2
        TIDEGATE_BIN=target/release/tidegate
    fi
    TIDEGATE_BENCH_BIN=${TIDEGATE_BENCH_BIN:-$(dirname "$TIDEGATE_BIN")/tidegate-bench}
    [[ -x $TIDEGATE_BIN ]] || die "no tidegate binary at $TIDEGATE_BIN"
    [[ -x $TIDEGATE_BENCH_BIN ]] ||
        die "no tidegate-bench binary at $TIDEGATE_BENCH_BIN (set TIDEGATE_BENCH_BIN)"
    TIDEGATE_BIN=$(cd "$(dirname "$TIDEGATE_BIN")" && pwd)/$(basename "$TIDEGATE_BIN")
    TIDEGATE_BENCH_BIN=$(cd "$(dirname "$TIDEGATE_BENCH_BIN")" && pwd)/$(basename "$TIDEGATE_BENCH_BIN")
}
