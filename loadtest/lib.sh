# Helpers shared by the scripts in loadtest/. Sourced, not run:
#
#   LOG_NAME=bench-streams
#   source "$ROOT/loadtest/lib.sh"
#
# Sourcing it installs an EXIT trap that stops every child registered with `track`, newest first
# (TERM, then KILL after a grace period), and then logs $EXIT_NOTE if it is set.
#
# It also starts the mock upstream and the proxies the measurements compare (start_mock,
# start_nginx, start_tidegate), the same way for every script that runs them.
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

# ---- the mock upstream and the targets in front of it -------------------------------------------
# These read OUT_DIR and TIDEGATE_BIN (after find_binaries); start_nginx and start_tidegate also
# read MOCK (set by start_mock). Every process they start is tracked, so it is stopped at exit.

# Starts `tidegate mock-upstream` on a free port, with $MOCK_BIN if set (e.g. the current mock in
# front of an older gateway), else $TIDEGATE_BIN; log in $OUT_DIR/mock.log. Sets MOCK
# (host:port) and MOCK_PID.
start_mock() {
    "${MOCK_BIN:-$TIDEGATE_BIN}" mock-upstream --listen 127.0.0.1:0 >"$OUT_DIR/mock.log" 2>&1 &
    MOCK_PID=$!
    track "$MOCK_PID"
    wait_for_line "$OUT_DIR/mock.log" 'mock upstream on http://' 15 "$MOCK_PID" ||
        die "the mock did not start"
    MOCK=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' "$OUT_DIR/mock.log" | head -n 1 | cut -d/ -f3)
}

# ---- TLS (TLS=1) ---------------------------------------------------------------------------------
# With TLS=1, start_nginx and start_tidegate serve TLS with the certificate make_tls_pki wrote,
# TARGET_URL is https://, and DRIVER_TLS_ARGS (--ca-file) must go to tidegate-bench. The upstream
# side (proxy to mock) stays cleartext.
# shellcheck disable=SC2034 # read by the script that sourced this file
DRIVER_TLS_ARGS=()

# Writes an ECDSA P-256 test CA and a leaf for 127.0.0.1 and localhost signed by it (openssl, valid
# 30 days) into directory $1: ca.pem, cert.pem (the leaf alone), key.pem (PKCS#8). Sets TLS_CERT,
# TLS_KEY and DRIVER_TLS_ARGS.
make_tls_pki() {
    local dir=$1
    command -v openssl >/dev/null || die "TLS=1 needs the openssl command"
    mkdir -p "$dir"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 30 -subj "/CN=tidegate bench CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$dir/ca.pem" 2>/dev/null
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/key.pem" 2>/dev/null
    openssl req -new -key "$dir/key.pem" -subj "/CN=127.0.0.1" -out "$dir/leaf.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$dir/leaf.ext"
    openssl x509 -req -in "$dir/leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 30 -sha256 -extfile "$dir/leaf.ext" -out "$dir/cert.pem" 2>/dev/null ||
        die "openssl could not sign the test certificate"
    TLS_CERT=$dir/cert.pem
    TLS_KEY=$dir/key.pem
    # shellcheck disable=SC2034 # read by the script that sourced this file
    DRIVER_TLS_ARGS=("--ca-file" "$dir/ca.pem")
}

# "https" with TLS=1 (after make_tls_pki), else "http".
scheme() {
    if [[ ${TLS:-0} == 1 ]]; then
        [[ -n ${TLS_CERT:-} ]] || die "TLS=1: call make_tls_pki first"
        echo https
    else
        echo http
    fi
}

# Starts nginx in front of the mock with loadtest/nginx/nginx.conf.template (one worker per core;
# NGINX_ACCESS_LOG=1 gives it an access log; TLS=1: `listen ... ssl http2` with TLS_CERT and
# TLS_KEY), its files in directory $1 (default $OUT_DIR/nginx). Sets TARGET_PID (the master),
# TARGET_URL and TARGET_PIDS (`--pid` options for tidegate-bench, one per worker).
start_nginx() {
    command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx)"
    local port dir=${1:-$OUT_DIR/nginx} scheme
    scheme=$(scheme)
    mkdir -p "$dir"
    port=$(free_port)
    local access_log=off
    if [[ ${NGINX_ACCESS_LOG:-0} == 1 ]]; then
        access_log=$dir/access.log
    fi
    local tls=(-e "s|@LISTEN_OPTS@||")
    if [[ $scheme == https ]]; then
        tls=(-e "s|@LISTEN_OPTS@| ssl http2|; s|^\( *\)#TLS |\1|"
            -e "s|@CERT@|$TLS_CERT|; s|@KEY@|$TLS_KEY|")
    fi
    sed -e "s|@WORKERS@|$(nproc)|; s|@DIR@|$dir|g; s|@UPSTREAM@|$MOCK|; s|@LISTEN@|127.0.0.1:$port|" \
        -e "s|@ACCESS_LOG@|$access_log|" "${tls[@]}" \
        loadtest/nginx/nginx.conf.template >"$dir/nginx.conf"
    nginx -c "$dir/nginx.conf" -p "$dir" 2>"$dir/stderr.log" &
    TARGET_PID=$!
    track "$TARGET_PID"
    wait_for_line "$dir/nginx.pid" '[0-9]' 15 "$TARGET_PID" ||
        die "nginx did not start: $(cat "$dir/stderr.log")"
    sleep 1
    TARGET_URL=$scheme://127.0.0.1:$port
    TARGET_PIDS=()
    local w i=1
    for w in $(pgrep -P "$(cat "$dir/nginx.pid")"); do
        TARGET_PIDS+=("--pid" "nginx-worker-$i=$w")
        i=$((i + 1))
    done
}

# Starts $TIDEGATE_BIN as the gateway NAME ($1) in front of the mock, with `upstream.http2 = $2`
# (true or false) and `forward_headers = ["x-mock-*"]` (TLS=1: a [tls] section with TLS_CERT and
# TLS_KEY); its config and log are $3/NAME.toml and $3/NAME.log (default directory $OUT_DIR).
# Sets TARGET_PID, TARGET_URL and TARGET_PIDS.
start_tidegate() {
    local name=$1 http2=$2 dir=${3:-$OUT_DIR} scheme
    local cfg=$dir/$name.toml glog=$dir/$name.log
    scheme=$(scheme)
    mkdir -p "$dir"
    {
        printf 'listen = "127.0.0.1:0"\n\n[upstream]\nbase_url = "http://%s/v1"\n' "$MOCK"
        printf 'forward_headers = ["x-mock-*"]\nhttp2 = %s\n\n' "$http2"
        printf '[shutdown]\ndrain_timeout = "1s"\n'
        if [[ $scheme == https ]]; then
            printf '\n[tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$TLS_CERT" "$TLS_KEY"
        fi
        # More TOML from the calling script (e.g. a [limits] table).
        printf '%s\n' "${TIDEGATE_EXTRA_CONFIG:-}"
    } >"$cfg"
    "$TIDEGATE_BIN" --config "$cfg" >"$glog" 2>&1 &
    local pid=$!
    TARGET_PID=$pid
    track "$pid"
    wait_for_line "$glog" 'tidegate listening' 15 "$pid" || die "tidegate did not start: $(cat "$glog")"
    # shellcheck disable=SC2034 # read by the script that sourced this file
    TARGET_URL=$scheme://$(grep -m 1 'tidegate listening' "$glog" | grep -oE 'listen=[0-9.:]+' | cut -d= -f2)
    TARGET_PIDS=("--pid" "$name=$pid")
    sleep 1
}

# ---- /proc sampling (idle-streams.sh, resume-detached.sh) ---------------------------------------
# shellcheck disable=SC2034 # read by the scripts that source this file
CLK_TCK=$(getconf CLK_TCK)
# utime + stime of a process in clock ticks (fields 14 and 15; the comm field may hold spaces).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
now() { date +%s.%N; }
# printf FORMAT with the awk expression EXPR: calc '%.2f' '1 / 3'
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
