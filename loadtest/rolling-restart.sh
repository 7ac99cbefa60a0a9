#!/usr/bin/env bash
# A rolling restart under load (issue 14, requirement 5): about 2,000 concurrent streams through
# nginx and three tidegate instances while each instance in turn is drained (SIGTERM) and
# restarted. No stream may be cut and no request may fail; the script records how long each
# step and the whole roll took. Loopback only. See loadtest/README.md ("Rolling restart").
#
# Two runs of the same load through the same nginx and instances, in one invocation:
#   reference  no restarts: the undisturbed figures the roll's are divided by;
#   roll       once the load has reached its plateau (the first streams have completed), for
#              each instance in turn: SIGTERM, wait for it to exit (drain time; exit code 0 and
#              no `server_shutdown` outcome in its log), start it again on the same ports, wait
#              for /readyz 200 on its admin port (ready time), wait until nginx sends it streams
#              again (its tidegate_streams_active > 0: back-in-traffic time) and, with
#              REJOIN=share (the default), until it holds half its share of them; then the next.
# The load: tidegate-bench over HTTP/1.1, RAMP new streams a second, each CHUNKS chunks
# DELAY_MS apart, so about RAMP x CHUNKS x DELAY_MS / 1000 streams are alive at once (200 x 10 x
# 1 s = 2,000), from SOURCE_ADDRS source addresses (127.0.0.1 ... 127.0.0.N, in turn), so that
# nginx's `hash $remote_addr consistent` spreads them over the three instances. STREAMS is the
# total per run: it must last longer than the roll (the script fails when the roll ended after
# the last stream had started).
#
# nginx runs the SHIPPED deploy/nginx/nginx.conf and tidegate.conf, rendered into
# OUT_DIR/nginx by exact string substitution (each expected string must occur exactly once, or
# the script stops), changed only in:
#   - `listen 8080 backlog=4096;` -> a free loopback port (backlog kept);
#   - the `server 127.0.0.1:8081 ...;` / `:8082 ...;` lines of both upstream blocks (the
#     passive-checked one and the fallback) -> the three instances' ports, the third a copy of
#     the second line of its block (same max_fails / fail_timeout parameters);
#   - the server of each per-instance block for resumes (tidegate_instance_a, _b) -> the first
#     and second instance's port (this script resumes nothing);
#   - pid, error_log, both access_log paths -> OUT_DIR/nginx (log formats kept);
#   - `user www-data;` dropped when not run as root (nginx ignores it then anyway);
#   - temp paths (client_body, proxy, fastcgi, uwsgi, scgi) added inside `http {`, in
#     OUT_DIR/nginx, so the run does not share /var/lib/nginx with a system nginx;
#   - on the command line: -p OUT_DIR/nginx, -e its error log, -g 'daemon off;' (so the master
#     is this script's child and is stopped with it).
# Everything else (worker_processes auto, worker_connections, keepalive 256, keepalive_timeout
# 5s, hash, max_fails=2 fail_timeout=5s, proxy_next_upstream error timeout non_idempotent, the
# timeouts, proxy_buffering off, the `tidegate` log_format) is as shipped. `nginx -t` runs first.
#
# Each instance runs the SHIPPED deploy/tidegate.toml, rendered the same way, changed only in:
#   - listen = "0.0.0.0:8080" -> "127.0.0.1:<free port>";
#   - [admin] listen = "0.0.0.0:9090" -> "127.0.0.1:<free port>" (token_env kept: the script
#     sets TIDEGATE_ADMIN_TOKEN to a random token and sends it to /metrics);
#   - [upstream] base_url -> the mock over http:// (so protocol = "auto" means HTTP/1.1),
#     api_key_env = "OPENAI_API_KEY" removed (the mock needs no key), and
#     forward_headers = ["x-mock-*"] added (the driver paces the mock by header and needs its
#     timestamps for per-event latency).
# Kept as shipped: trusted_proxies (127.0.0.1 is nginx here, so the client is the driver's source
# address from X-Forwarded-For), every limit including [limits.per_ip] (5 requests/s, burst 20,
# 20 streams per address: SOURCE_ADDRS is large enough that each address stays under them, and
# the script refuses a load that would not), heartbeat_interval, drain_timeout = "5m" (much
# longer than a stream, so a drain ends because its streams completed, never by the deadline),
# JSON logs. Each instance's log is OUT_DIR/instanceN.G.log (G: 0 first start, 1 after restart).
#
#   loadtest/rolling-restart.sh                       # 2,000 streams alive, 19,000 per run
#   STREAMS=4500 RAMP=100 CHUNKS=3 DELAY_MS=1000 WARMUP=0 REFERENCE=after \
#       loadtest/rolling-restart.sh                   # small: 300 streams alive (CI)
#
# Environment (defaults in brackets):
#   STREAMS [19000]   streams per run (reference and roll each), STREAMS / RAMP seconds of load;
#                     at most 19,900: the driver wants a descriptor for every stream it may run
#   RAMP [200]        new streams per second
#   CHUNKS [10]  DELAY_MS [1000]   each stream's chunks and the delay between them
#   SOURCE_ADDRS [250]  the driver's source addresses 127.0.0.1 ... 127.0.0.N (at most 255)
#   THREADS [1]       the driver's worker threads
#   WARMUP [30]       seconds of the same load (RAMP streams a second) through nginx and the
#                     first instances before either run, not reported: the first load through
#                     fresh processes (mock, nginx, instances) is measurably slower than the
#                     second, whichever it is; 0: none
#   REFERENCE [before]  when the undisturbed reference runs: "before" the roll, "after" it (on
#                     the restarted, warm instances), or "none" (no ratios then)
#   DRAIN_DEADLINE [120]   seconds a drained instance may take to exit (then it is killed and
#                          the run fails; tidegate's own drain_timeout stays 5m)
#   READY_DEADLINE [30]    seconds a restarted instance may take to answer /readyz 200
#   TRAFFIC_DEADLINE [30]  seconds after its restart until nginx must send it streams again
#   REJOIN [share]    when the next instance is drained: "share", once the restarted one holds
#                     half its share of the streams alive (streams alive / 3 / 2), within
#                     TRAFFIC_DEADLINE; "first", as soon as it has a stream again
#                     (tidegate_streams_active > 0). nginx (max_fails=2 fail_timeout=5s)
#                     leaves a server out after the refused connects of its drain, lets one
#                     trial request a fail_timeout through, and takes it back only when a trial
#                     has *completed*: a stream's length. With "first" the next drain can begin
#                     while an nginx worker still holds the restarted instance out; when it
#                     holds out every other instance too, it answers 502 "no live upstreams"
#                     (seen with 3-second streams, loadtest/RESULTS.md)
#   TIDEGATE_BIN [target/release/tidegate]  built (with the driver) unless set
#   TIDEGATE_BENCH_BIN [tidegate-bench next to TIDEGATE_BIN]  the load driver
#   OUT_DIR [a new /tmp/tidegate-rolling.XXXXXX]  configs, logs, the driver's JSON reports,
#                    tables and charts (reference.*, roll.*), steps.tsv, results.md
#
# Exit code 0 only when, in every run, every stream completed with [DONE] (none cut, none
# failed), nginx logged no non-200 answer, every drained instance exited 0 with no
# server_shutdown outcome, every instance came back, and the roll ran under load.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STREAMS=${STREAMS:-19000}
RAMP=${RAMP:-200}
CHUNKS=${CHUNKS:-10}
DELAY_MS=${DELAY_MS:-1000}
SOURCE_ADDRS=${SOURCE_ADDRS:-250}
THREADS=${THREADS:-1}
REFERENCE=${REFERENCE:-before}
WARMUP=${WARMUP:-30}
DRAIN_DEADLINE=${DRAIN_DEADLINE:-120}
READY_DEADLINE=${READY_DEADLINE:-30}
TRAFFIC_DEADLINE=${TRAFFIC_DEADLINE:-30}
REJOIN=${REJOIN:-share}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/tidegate-rolling.XXXXXX)}
INSTANCES=3

LOG_NAME=rolling-restart
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh
EXIT_NOTE="logs and reports in $OUT_DIR"

for var in STREAMS RAMP CHUNKS DELAY_MS SOURCE_ADDRS THREADS WARMUP DRAIN_DEADLINE \
    READY_DEADLINE TRAFFIC_DEADLINE; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer (got '${!var}')"
done
for var in STREAMS RAMP CHUNKS SOURCE_ADDRS THREADS DRAIN_DEADLINE READY_DEADLINE TRAFFIC_DEADLINE; do
    ((${!var} >= 1)) || die "$var must be at least 1"
done
((SOURCE_ADDRS <= 255)) || die "SOURCE_ADDRS must be at most 255"
# tidegate-bench refuses an HTTP/1.1 run of more streams than its open-files limit (20,000
# here) less 64.
((STREAMS <= 19900)) || die "STREAMS must be at most 19,900 (the driver's open-files check)"
[[ $REFERENCE =~ ^(before|after|none)$ ]] || die "REFERENCE must be before, after or none"
[[ $REJOIN =~ ^(first|share)$ ]] || die "REJOIN must be first or share"
command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx)"
command -v curl >/dev/null || die "curl is not installed"

DEPLOY_TOML=deploy/tidegate.toml
DEPLOY_NGINX=deploy/nginx

# The shipped per-address limits apply to the driver's source addresses (nginx passes them in
# X-Forwarded-For and 127.0.0.1 is a trusted proxy). Refuse a load that would trip them, with a
# margin: it would measure the limits, not the roll.
shipped_limit() {
    awk -v key="$1" '/^\[/ { section = $0 } section == "[limits.per_ip]" && $1 == key { print $3 }' \
        "$DEPLOY_TOML"
}
ip_rate=$(shipped_limit requests_per_second)
ip_streams=$(shipped_limit max_streams)
[[ $ip_rate =~ ^[0-9]+$ && $ip_streams =~ ^[0-9]+$ ]] ||
    die "$DEPLOY_TOML: could not read [limits.per_ip] requests_per_second and max_streams"
# Streams alive at once: RAMP x the stream's length (CHUNKS x DELAY_MS, plus about a second).
alive_planned=$((RAMP * (CHUNKS * DELAY_MS + 1000) / 1000))
if ((ip_rate > 0 && RAMP * 10 > ip_rate * SOURCE_ADDRS * 8)) ||
    ((ip_streams > 0 && alive_planned * 10 > ip_streams * SOURCE_ADDRS * 8)); then
    die "RAMP=$RAMP over SOURCE_ADDRS=$SOURCE_ADDRS addresses ($alive_planned streams alive) comes within 80 % of the shipped per-address limits ($ip_rate requests/s, $ip_streams streams): raise SOURCE_ADDRS"
fi
# A proxied HTTP/1.1 stream holds two sockets in nginx (in one of its workers) and two in an
# instance; the driver holds one per stream.
((alive_planned * 2 + 500 <= 20000)) ||
    die "about $alive_planned streams alive need two sockets each in nginx: over 20,000 open files"

find_binaries
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# Elapsed seconds since EPOCHREALTIME value $1, with millisecond precision.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
# The time in microseconds (no process started: the polling loops below call it often).
now_us() { NOW_US=${EPOCHREALTIME/./}; }

start_mock
log "mock upstream at $MOCK (pid $MOCK_PID)"

# ---- the three instances ------------------------------------------------------------------------
ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
# curl reads the header from this file, so the token is not on any command line.
printf 'Authorization: Bearer %s\n' "$ADMIN_TOKEN" >"$OUT_DIR/admin-auth-header"
chmod 600 "$OUT_DIR/admin-auth-header"

declare -a API_PORT ADMIN_PORT INST_PID INST_LOG INST_GEN
for ((i = 1; i <= INSTANCES; i++)); do
    API_PORT[i]=$(free_port)
    ADMIN_PORT[i]=$(free_port)
    INST_GEN[i]=0
done

# Renders deploy/tidegate.toml for instance $1 into OUT_DIR/instance$1.toml: exact
# substitutions, each of which must match exactly once.
render_tidegate_config() {
    local i=$1
    python3 - "$DEPLOY_TOML" "$OUT_DIR/instance$i.toml" "${API_PORT[i]}" "${ADMIN_PORT[i]}" \
        "$MOCK" <<'PY'
import sys
src, dst, api_port, admin_port, mock = sys.argv[1:6]
text = open(src).read()
def sub(old, new):
    global text
    n = text.count(old)
    if n != 1:
        sys.exit(f"{src}: expected exactly one {old!r}, found {n}: the shipped file changed, update rolling-restart.sh")
    text = text.replace(old, new)
sub('\nlisten = "0.0.0.0:8080"\n', f'\nlisten = "127.0.0.1:{api_port}"\n')
sub('[admin]\n', '[admin]\n')
sub('listen = "0.0.0.0:9090"\n', f'listen = "127.0.0.1:{admin_port}"\n')
sub('token_env = "TIDEGATE_ADMIN_TOKEN"\n', 'token_env = "TIDEGATE_ADMIN_TOKEN"\n')
sub('base_url = "https://api.openai.com/v1"\n',
    f'base_url = "http://{mock}/v1"\n'
    '# rolling-restart.sh: the driver paces the mock and reads its timestamps by header\n'
    'forward_headers = ["x-mock-*"]\n')
sub('api_key_env = "OPENAI_API_KEY"\n', '# rolling-restart.sh: no upstream key (the mock)\n')
open(dst, "w").write(text)
PY
    TIDEGATE_ADMIN_TOKEN=$ADMIN_TOKEN "$TIDEGATE_BIN" check-config "$OUT_DIR/instance$i.toml" >"$OUT_DIR/instance$i.check-config" 2>&1 ||
        die "instance $i: check-config failed: $(cat "$OUT_DIR/instance$i.check-config")"
}

# Starts instance $1 (its next generation), log OUT_DIR/instance$1.G.log. Sets INST_PID[$1],
# INST_LOG[$1]. Does not wait: see wait_ready.
start_instance() {
    local i=$1
    INST_LOG[i]=$OUT_DIR/instance$i.${INST_GEN[i]}.log
    TIDEGATE_ADMIN_TOKEN=$ADMIN_TOKEN "$TIDEGATE_BIN" --config "$OUT_DIR/instance$i.toml" \
        >"${INST_LOG[i]}" 2>&1 &
    INST_PID[i]=$!
    track "${INST_PID[i]}"
    INST_GEN[i]=$((INST_GEN[i] + 1))
    # A log that appears in the middle of a run belongs to it from its first line.
    if [[ -n ${PHASE:-} ]]; then
        PHASE_LOG_START[${INST_LOG[i]}]=0
    fi
}

# HTTP status of GET $2 on instance $1's admin listener ("000" when nothing answered).
admin_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H @"$OUT_DIR/admin-auth-header" \
        "http://127.0.0.1:${ADMIN_PORT[$1]}$2" || true
}

# Instance $1's tidegate_streams_active, or empty when /metrics does not answer.
streams_active() {
    curl -sf --max-time 2 -H @"$OUT_DIR/admin-auth-header" \
        "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" 2>/dev/null |
        awk '$1 == "tidegate_streams_active" { print $2 }' || true
}

# Waits until instance $1 answers /readyz with 200, for at most $2 seconds; fails at once if
# it exits.
wait_ready() {
    local i=$1 secs=$2 deadline
    now_us
    deadline=$((NOW_US + secs * 1000000))
    while now_us && ((NOW_US < deadline)); do
        alive "${INST_PID[i]}" || return 1
        [[ $(admin_status "$i" /readyz) == 200 ]] && return 0
        sleep 0.05
    done
    return 1
}

for ((i = 1; i <= INSTANCES; i++)); do
    render_tidegate_config "$i"
    start_instance "$i"
done
for ((i = 1; i <= INSTANCES; i++)); do
    wait_ready "$i" "$READY_DEADLINE" ||
        die "instance $i did not become ready: $(tail -n 5 "${INST_LOG[i]}")"
    log "instance $i: api 127.0.0.1:${API_PORT[i]}, admin 127.0.0.1:${ADMIN_PORT[i]} (pid ${INST_PID[i]})"
done

# ---- nginx with the shipped configuration -------------------------------------------------------
NGINX_DIR=$OUT_DIR/nginx
mkdir -p "$NGINX_DIR"
NGINX_PORT=$(free_port)
is_root=0
[[ $(id -u) == 0 ]] && is_root=1
python3 - "$DEPLOY_NGINX" "$NGINX_DIR" "$NGINX_PORT" "$is_root" \
    "${API_PORT[1]}" "${API_PORT[2]}" "${API_PORT[3]}" <<'PY'
import re, sys
src, out, port, is_root, p1, p2, p3 = sys.argv[1:8]
def render(name, subs, text=None):
    if text is None:
        text = open(f"{src}/{name}").read()
    for old, new in subs:
        n = text.count(old)
        if n != 1:
            sys.exit(f"{src}/{name}: expected exactly one {old!r}, found {n}: the shipped file changed, update rolling-restart.sh")
        text = text.replace(old, new)
    open(f"{out}/{name}", "w").write(text)
main = [
    ("pid /run/nginx.pid;\n", f"pid {out}/nginx.pid;\n"),
    ("error_log /var/log/nginx/error.log warn;\n", f"error_log {out}/error.log warn;\n"),
    ("access_log /var/log/nginx/access.log;\n", f"access_log {out}/access.log;\n"),
    ("\nhttp {\n", "\nhttp {\n" + "".join(
        f"    {kind}_temp_path {out}/{kind}_temp;  # rolling-restart.sh\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
]
if is_root != "1":
    main.append(("\nuser www-data;\n", "\n# user www-data;  (rolling-restart.sh: not root)\n"))
render("nginx.conf", main)
# Both upstream blocks (the second, the fallback, without failure accounting) list the two
# shipped instances: in each, the second server line, whatever its parameters, is copied for
# the third instance.
conf = open(f"{src}/tidegate.conf").read()
# The per-instance blocks that resumes go to (one server each): the first two instances'. This
# script's instances run without --instance-id and resume nothing; the blocks only have to point
# at something that exists.
for block, p in (("tidegate_instance_a", p1), ("tidegate_instance_b", p2)):
    pattern = rf"(upstream {block} {{\n *server 127\.0\.0\.1:)808[12]( )"
    conf, n = re.subn(pattern, rf"\g<1>{p}\g<2>", conf)
    if n != 1:
        sys.exit(f"{src}/tidegate.conf: expected one 'upstream {block}' block, found {n}: the shipped file changed, update rolling-restart.sh")
second_lines = r"^( *server 127\.0\.0\.1:)8082( [^\n]*;)$"
n = len(re.findall(second_lines, conf, re.M))
if n != 2:
    sys.exit(f"{src}/tidegate.conf: expected two 'server 127.0.0.1:8082 ...;' lines, found {n}: the shipped file changed, update rolling-restart.sh")
conf = re.sub(second_lines,
              lambda m: f"{m.group(1)}{p2}{m.group(2)}\n{m.group(1)}{p3}{m.group(2)}",
              conf, flags=re.M)
n = conf.count("server 127.0.0.1:8081 ")
if n != 2:
    sys.exit(f"{src}/tidegate.conf: expected two 'server 127.0.0.1:8081 ' lines, found {n}: the shipped file changed, update rolling-restart.sh")
conf = conf.replace("server 127.0.0.1:8081 ", f"server 127.0.0.1:{p1} ")
render("tidegate.conf", [
    ("listen 8080 backlog=4096;", f"listen 127.0.0.1:{port} backlog=4096;"),
    ("access_log /var/log/nginx/tidegate.access.log tidegate;",
     f"access_log {out}/tidegate.access.log tidegate;"),
], text=conf)
PY
NGINX_ARGS=(-p "$NGINX_DIR/" -c "$NGINX_DIR/nginx.conf" -e "$NGINX_DIR/error.log")
if ! nginx -t "${NGINX_ARGS[@]}" >"$NGINX_DIR/nginx-t.log" 2>&1; then
    cat "$NGINX_DIR/nginx-t.log" >&2
    die "nginx -t refused the rendered configuration"
fi
log "nginx -t: $(grep -c . "$NGINX_DIR/nginx-t.log") lines (in $NGINX_DIR/nginx-t.log):"
sed 's/^/    /' "$NGINX_DIR/nginx-t.log" >&2
nginx "${NGINX_ARGS[@]}" -g 'daemon off;' 2>"$NGINX_DIR/stderr.log" &
NGINX_PID=$!
track "$NGINX_PID"
# Bounded: 150 polls of 0.1 s.
for ((n = 0; n < 150; n++)); do
    alive "$NGINX_PID" || die "nginx exited: $(cat "$NGINX_DIR/stderr.log" "$NGINX_DIR/error.log" 2>/dev/null)"
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$NGINX_PORT/healthz" || true) == 200 ]] && break
    sleep 0.1
done
((n < 150)) || die "nginx did not answer /healthz with 200"
# What nginx said while starting (e.g. that it could not raise its open-files limit).
cp "$NGINX_DIR/error.log" "$NGINX_DIR/startup.log" 2>/dev/null || : >"$NGINX_DIR/startup.log"
NGINX_WORKER_PIDS=()
for w in $(pgrep -P "$NGINX_PID"); do
    NGINX_WORKER_PIDS+=("--pid" "nginx-worker-$w=$w")
done
log "nginx $(nginx -v 2>&1 | cut -d/ -f2) on 127.0.0.1:$NGINX_PORT (master $NGINX_PID, $((${#NGINX_WORKER_PIDS[@]} / 2)) workers)"
for ((i = 1; i <= INSTANCES; i++)); do
    printf '%s\t%s\n' "$i" "${API_PORT[i]}"
done >"$OUT_DIR/ports.tsv"

# ---- runs ---------------------------------------------------------------------------------------
# Log files and the line each run starts at, so each run's lines are told apart.
declare -A PHASE_LOG_START
PHASE=""
lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

begin_phase() {
    PHASE=$1
    PHASE_START_UTC=$(date -u +%H:%M:%S)
    PHASE_START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
    PHASE_LOG_START=()
    local f
    for f in "$NGINX_DIR/tidegate.access.log" "$NGINX_DIR/error.log" "${INST_LOG[@]}"; do
        PHASE_LOG_START[$f]=$(lines "$f")
    done
}

end_phase() {
    local f
    printf '%s\t%s\t%s\t%s\t%s\n' "$PHASE" "$PHASE_START_UTC" "$(date -u +%H:%M:%S)" \
        "$PHASE_START_LOAD" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT_DIR/runs.tsv"
    for f in "${!PHASE_LOG_START[@]}"; do
        printf '%s\t%s\t%s\t%s\n' "$PHASE" "$f" "${PHASE_LOG_START[$f]}" "$(lines "$f")" \
            >>"$OUT_DIR/phases.tsv"
    done
    PHASE=""
}

# Waits until no instance and not the mock has a stream (the previous run is over everywhere),
# for at most $1 seconds.
wait_idle() {
    local secs=$1 n i busy
    for ((n = 0; n < secs * 10; n++)); do
        busy=0
        for ((i = 1; i <= INSTANCES; i++)); do
            [[ $(streams_active "$i") == 0 ]] || busy=1
        done
        [[ $(curl -sf --max-time 2 "http://$MOCK/stats" |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["streams_active"])' 2>/dev/null) == 0 ]] ||
            busy=1
        ((busy == 0)) && return 0
        sleep 0.1
    done
    return 1
}

DRIVER_DURATION=$((STREAMS / RAMP + (CHUNKS + 1) * DELAY_MS / 1000 + 60))

# Starts the driver for run $1 in the background; sets DRIVER_PID.
start_driver() {
    local run=$1
    "$TIDEGATE_BENCH_BIN" --url "http://127.0.0.1:$NGINX_PORT" --streams "$STREAMS" \
        --ramp "$RAMP" --chunks "$CHUNKS" --chunk-delay-ms "$DELAY_MS" \
        --source-addrs "$SOURCE_ADDRS" --threads "$THREADS" --duration "${DRIVER_DURATION}s" \
        "${NGINX_WORKER_PIDS[@]}" --pid "mock=$MOCK_PID" \
        --json "$OUT_DIR/$run.json" --svg "$OUT_DIR/$run.svg" \
        >"$OUT_DIR/$run.txt" 2>"$OUT_DIR/$run.progress" &
    DRIVER_PID=$!
    track "$DRIVER_PID"
}

# Waits for the driver to end (bounded by its own --duration and stream timeouts).
finish_driver() {
    local run=$1 rc=0
    wait "$DRIVER_PID" || rc=$?
    forget "$DRIVER_PID"
    DRIVER_PID=""
    ((rc != 2)) || die "[$run] the driver refused its arguments: $(cat "$OUT_DIR/$run.progress")"
    ((rc == 0)) || log "[$run] the driver exited $rc: some streams did not complete"
    cat "$OUT_DIR/$run.txt"
}

# Waits until the driver's load has reached its plateau: its progress line shows the first
# completed streams (done/s > 0). Bounded by the ramp plus a stream's length plus 60 s.
wait_plateau() {
    local secs=$((STREAMS / RAMP + CHUNKS * DELAY_MS / 1000 + 60)) n
    for ((n = 0; n < secs * 10; n++)); do
        alive "$DRIVER_PID" || return 1
        if tail -n 1 "$OUT_DIR/roll.progress" 2>/dev/null | grep -qE 'done/s=[1-9]'; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# The driver's alive= from its latest progress line.
driver_alive() {
    tail -n 1 "$OUT_DIR/roll.progress" 2>/dev/null | grep -oE 'alive=[0-9]+' | cut -d= -f2 || true
}

if ((WARMUP > 0)); then
    log "[warm-up] $((RAMP * WARMUP)) streams at $RAMP/s (not reported)"
    "$TIDEGATE_BENCH_BIN" --url "http://127.0.0.1:$NGINX_PORT" --streams "$((RAMP * WARMUP))" \
        --ramp "$RAMP" --chunks "$CHUNKS" --chunk-delay-ms "$DELAY_MS" \
        --source-addrs "$SOURCE_ADDRS" --threads "$THREADS" --duration "$((WARMUP + CHUNKS * DELAY_MS / 1000 + 60))s" \
        --quiet --json "$OUT_DIR/warmup.json" >"$OUT_DIR/warmup.txt" 2>&1 ||
        log "[warm-up] some streams failed (see $OUT_DIR/warmup.txt)"
    wait_idle 60 || log "[warm-up] streams still active after 60 s"
fi

run_reference() {
    log "[reference] $STREAMS streams at $RAMP/s, $CHUNKS chunks ${DELAY_MS} ms apart, through nginx; no restarts"
    begin_phase reference
    REF_START=$EPOCHREALTIME
    start_driver reference
    finish_driver reference
    wait_idle 60 || log "[reference] streams still active after 60 s"
    end_phase
    log "[reference] $(since "$REF_START") s"
}
[[ $REFERENCE != before ]] || run_reference

# ---- the roll -----------------------------------------------------------------------------------
printf 'instance\tport\tstreams_at_sigterm\tdrain_s\texit_code\tserver_shutdown\tdrain_deadline_passed\tready_s\ttraffic_s\tstep_s\tdriver_alive_at_sigterm\tnote\tspread_at_sigterm\tshare_s\n' \
    >"$OUT_DIR/steps.tsv"
ROLL_FAILED=""

# Drains and restarts instance $1; appends its row to steps.tsv. Returns 1 when the roll must
# stop (the instance did not exit, or did not come back).
roll_one() {
    local i=$1 pid=${INST_PID[$1]} old_log=${INST_LOG[$1]} t0 drain_s rc ready_s="" traffic_s="" share_s=""
    local alive_at_term note="" n shutdown_outcomes deadline_passed at_term spread="" j
    alive_at_term=$(driver_alive)
    # Every instance's live streams just before the SIGTERM: how the load is spread.
    for ((j = 1; j <= INSTANCES; j++)); do
        spread+="${spread:+/}$(streams_active "$j")"
    done
    t0=$EPOCHREALTIME
    kill -TERM "$pid"
    # Bounded: DRAIN_DEADLINE seconds of 50 ms polls.
    for ((n = 0; n < DRAIN_DEADLINE * 20; n++)); do
        alive "$pid" || break
        sleep 0.05
    done
    drain_s=$(since "$t0")
    if alive "$pid"; then
        note="did not exit within ${DRAIN_DEADLINE}s: killed"
        stop_pid "$pid" 1
        rc=killed
    else
        rc=0
        wait "$pid" 2>/dev/null || rc=$?
        forget "$pid"
    fi
    at_term=$(grep -m 1 '"shutting down: draining"' "$old_log" | grep -oE '"streams":[0-9]+' | cut -d: -f2 || true)
    shutdown_outcomes=$(grep -c '"outcome":"server_shutdown"' "$old_log" || true)
    deadline_passed=$(grep -c 'drain deadline passed' "$old_log" || true)
    log "[roll] instance $i: drained in ${drain_s}s (${at_term:-?} streams at SIGTERM), exit $rc, server_shutdown outcomes $shutdown_outcomes"

    local t1=$EPOCHREALTIME
    if [[ $rc == 0 ]]; then
        start_instance "$i"
        if wait_ready "$i" "$READY_DEADLINE"; then
            ready_s=$(since "$t1")
            # Bounded: TRAFFIC_DEADLINE seconds of polls (each poll at most 2 s of curl).
            local deadline active
            now_us
            deadline=$((NOW_US + TRAFFIC_DEADLINE * 1000000))
            while now_us && ((NOW_US < deadline)); do
                active=$(streams_active "$i")
                if [[ -n $active && $active -gt 0 ]]; then
                    traffic_s=$(since "$t1")
                    break
                fi
                sleep 0.1
            done
            [[ -n $traffic_s ]] || note="no stream within ${TRAFFIC_DEADLINE}s of its restart"
            # REJOIN=share: also wait (same deadline) until it holds half its share of the
            # streams alive, so the next drain does not leave the others carrying its share.
            if [[ -n $traffic_s && $REJOIN == share ]]; then
                local want
                while now_us && ((NOW_US < deadline)); do
                    active=$(streams_active "$i")
                    want=$(($(driver_alive) / INSTANCES / 2))
                    if [[ -n $active ]] && ((active >= want)); then
                        share_s=$(since "$t1")
                        break
                    fi
                    sleep 0.1
                done
                [[ -n $share_s ]] || note="under half its share of the streams ${TRAFFIC_DEADLINE}s after its restart"
            fi
        else
            note="not ready within ${READY_DEADLINE}s of its restart"
        fi
    else
        [[ -n $note ]] || note="exit code $rc"
    fi
    log "[roll] instance $i: ready ${ready_s:--}s, back in traffic ${traffic_s:--}s after its restart${share_s:+, half its share ${share_s}s}${note:+ ($note)}"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "${API_PORT[i]}" "${at_term:-}" \
        "$drain_s" "$rc" "$shutdown_outcomes" "$deadline_passed" "$ready_s" "$traffic_s" \
        "$(since "$t0")" "${alive_at_term:-}" "$note" "$spread" "$share_s" >>"$OUT_DIR/steps.tsv"
    [[ -z $note ]]
}

log "[roll] $STREAMS streams at $RAMP/s through nginx; each instance drained and restarted in turn once the load has reached its plateau"
begin_phase roll
start_driver roll
wait_plateau || die "[roll] the load never reached its plateau (driver: $(tail -n 1 "$OUT_DIR/roll.progress" 2>/dev/null))"
ROLL_START=$EPOCHREALTIME
log "[roll] plateau: $(driver_alive) streams alive; rolling"
for ((i = 1; i <= INSTANCES; i++)); do
    if ! roll_one "$i"; then
        ROLL_FAILED="instance $i: $(tail -n 1 "$OUT_DIR/steps.tsv" | cut -f12)"
        break
    fi
done
ROLL_END=$EPOCHREALTIME
ROLL_UNDER_LOAD=0
alive "$DRIVER_PID" && ROLL_UNDER_LOAD=1
log "[roll] roll took $(since "$ROLL_START") s${ROLL_FAILED:+; stopped: $ROLL_FAILED}; the driver $( ((ROLL_UNDER_LOAD)) && echo "was still running" || echo "had already ended")"
printf 'roll_start\t%s\nroll_end\t%s\nroll_failed\t%s\n' "$ROLL_START" "$ROLL_END" "$ROLL_FAILED" \
    >"$OUT_DIR/roll.tsv"
finish_driver roll
wait_idle 60 || log "[roll] streams still active after 60 s"
end_phase
[[ $REFERENCE != after ]] || run_reference

# ---- the report ---------------------------------------------------------------------------------
python3 - "$OUT_DIR" "$REFERENCE" <<'PY' | tee "$OUT_DIR/results.md"
import collections, csv, datetime, json, re, sys

out, reference = sys.argv[1], sys.argv[2] != "none"
fails = []

def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)

# Log slices of each run.
phase_files = collections.defaultdict(list)
with open(f"{out}/phases.tsv") as f:
    for phase, path, start, end in csv.reader(f, delimiter="\t"):
        phase_files[phase].append((path, int(start), int(end)))

def slice_lines(phase, pred):
    for path, start, end in phase_files[phase]:
        if not pred(path):
            continue
        with open(path, errors="replace") as f:
            for n, line in enumerate(f):
                if start <= n < end:
                    yield line.rstrip("\n")

ACCESS = re.compile(r'^(\S+) \[[^\]]+\] "([^"]*)" (\d{3}) (\d+) rt=(\S+) upstream=(.*) ust=(.*) uht=(.*) id=(\S*)$')

def nginx_access(phase):
    total, non200, retried, statuses, ust = 0, 0, 0, collections.Counter(), collections.Counter()
    for line in slice_lines(phase, lambda p: p.endswith("tidegate.access.log")):
        m = ACCESS.match(line)
        if not m:
            continue
        total += 1
        statuses[m.group(3)] += 1
        if m.group(3) != "200":
            non200 += 1
        if "," in m.group(6):
            retried += 1
            ust[m.group(7)] += 1
    return total, non200, retried, statuses, ust

ERROR = re.compile(r'^\S+ \S+ \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)$')

def nginx_errors(phase):
    kinds = collections.Counter()
    for line in slice_lines(phase, lambda p: p.endswith("/error.log")):
        m = ERROR.match(line)
        if not m:
            kinds[line[:120]] += 1
            continue
        # The message without the request's details, its numbers as N.
        msg = re.sub(r"\d+", "N", m.group(2).split(", client: ")[0])
        kinds[f"[{m.group(1)}] {msg}"] += 1
    return kinds

ports = dict(line.rstrip("\n").split("\t")[::-1] for line in open(f"{out}/ports.tsv"))

def by_instance(phase):
    """Requests by the instance that answered them last (nginx's upstream address)."""
    n = collections.Counter()
    for line in slice_lines(phase, lambda p: p.endswith("tidegate.access.log")):
        m = ACCESS.match(line)
        if m:
            last = m.group(6).split(", ")[-1].rsplit(":", 1)[-1]
            n[ports.get(last, last)] += 1
    return n

def iso(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()

def readmitted_after(log_path, per_s):
    """Seconds from the instance's start ("tidegate listening") until it had started per_s
    streams within one second: when nginx sends it its share of new streams again. Stream
    starts are the stream-ended lines' time less their duration_ms."""
    t0, starts = None, []
    for line in open(log_path, errors="replace"):
        if t0 is None and '"tidegate listening"' in line:
            t0 = iso(json.loads(line)["timestamp"])
        elif '"stream ended"' in line:
            d = json.loads(line)
            starts.append(iso(d["timestamp"]) - d["fields"]["duration_ms"] / 1000)
    if t0 is None:
        return None
    starts.sort()
    lo = 0
    for hi, s in enumerate(starts):
        while starts[lo] <= s - 1:
            lo += 1
        if hi - lo + 1 >= per_s:
            return s - t0
    return None

def tidegate_outcomes(phase):
    outcomes = collections.Counter()
    for line in slice_lines(phase, lambda p: "/instance" in p):
        if '"message":"stream ended"' in line:
            m = re.search(r'"outcome":"([^"]+)"', line)
            outcomes[m.group(1) if m else "?"] += 1
    return outcomes

def ms(us):
    return "-" if us is None else f"{us / 1000:.2f}"

def window_latency(report, a, b):
    """Worst one-second per-event p99 and median of the one-second p50s between a and b s."""
    pts = [p for p in report["timeline"] if a <= p["t_s"] <= b and p.get("latency_p99_us") is not None]
    if not pts:
        return None, None
    p50s = sorted(p["latency_p50_us"] for p in pts)
    return max(p["latency_p99_us"] for p in pts), p50s[len(p50s) // 2]

runs = (["reference"] if reference else []) + ["roll"]
reports = {r: load(r) for r in runs}
summary = {}
for run in runs:
    rep = reports[run]
    s = rep["streams"]
    cut = s["opened"] - s["completed"]
    errors = s["started"] - s["opened"]
    not_run = s["cancelled"] + s["not_started"] + s["abandoned"]
    total, non200, retried, statuses, ust = nginx_access(run)
    outcomes = tidegate_outcomes(run)
    summary[run] = dict(s=s, cut=cut, errors=errors, not_run=not_run, nginx_total=total,
                        non200=non200, retried=retried, statuses=statuses, ust=ust,
                        errlog=nginx_errors(run), outcomes=outcomes,
                        ttfe=rep["time_to_first_event_us"], lat=rep["event_latency_us"],
                        start_ms=rep["started_at_unix_ms"], elapsed=rep["elapsed_s"])
    if cut or errors or not_run or non200 or s["failed"]:
        fails.append(f"{run}: {cut} cut, {errors} failed before their headers, {not_run} not run, "
                     f"{s['failed']} failed in all, {non200} non-200 in nginx's log")
    bad = {k: v for k, v in outcomes.items() if k != "completed"}
    if bad:
        fails.append(f"{run}: tidegate stream outcomes other than completed: {dict(bad)}")

# The roll's steps and window.
steps = list(csv.DictReader(open(f"{out}/steps.tsv"), delimiter="\t"))
roll_meta = {}
for line in open(f"{out}/roll.tsv"):
    key, _, value = line.rstrip("\n").partition("\t")
    roll_meta[key] = value
roll_start, roll_end = float(roll_meta["roll_start"]), float(roll_meta["roll_end"])
roll_s = roll_end - roll_start
if roll_meta.get("roll_failed"):
    fails.append(f"roll stopped: {roll_meta['roll_failed']}")
if len(steps) != 3:
    fails.append(f"only {len(steps)} of 3 instances were rolled")
for st in steps:
    if st["exit_code"] != "0" or st["server_shutdown"] != "0" or st["drain_deadline_passed"] != "0" or st["note"]:
        fails.append(f"instance {st['instance']}: exit {st['exit_code']}, server_shutdown "
                     f"{st['server_shutdown']}, deadline passed {st['drain_deadline_passed']} {st['note']}")
roll = reports["roll"]
a = roll_start - roll["started_at_unix_ms"] / 1000
b = roll_end - roll["started_at_unix_ms"] / 1000
last_start = next((p["t_s"] for p in roll["timeline"] if p["started"] >= roll["args"]["streams"]), None)
if last_start is None or last_start < b:
    fails.append(f"the roll ended {b:.1f} s into the load but the last stream started at "
                 f"{last_start} s: not all of the roll was under load (raise STREAMS)")
in_window = [p["alive"] for p in roll["timeline"] if a <= p["t_s"] <= b]
alive_min = min(in_window) if in_window else None
alive_max = max(in_window) if in_window else None

run_times = {}
for line in open(f"{out}/runs.tsv"):
    run, start, end, load0, load1 = line.rstrip("\n").split("\t")
    run_times[run] = (start, end, load0, load1)
print(f"Rolling restart: 3 instances behind nginx, {roll['args']['streams']} streams per run at "
      f"{roll['args']['ramp_per_s']}/s, {roll['args']['chunks']} chunks "
      f"{roll['args']['chunk_delay_ms']} ms apart, {roll['args']['source_addrs']} source addresses")
print()
print(f"The roll: {roll_s:.1f} s, from {a:.1f} s to {b:.1f} s into the load; streams alive "
      f"(driver) {alive_min}–{alive_max} during it")
print()
# Half of an instance's share of the new streams, per second.
half_share = roll["args"]["ramp_per_s"] / 3 / 2
print(f"| instance | streams on instances 1/2/3 just before its SIGTERM | streams at SIGTERM (its log) "
      f"| drain (s) | exit | server_shutdown | restart → /readyz 200 (s) | restart → first stream (s) "
      f"| restart → {half_share:.0f} new streams/s, half its share (s) | step (s) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for st in steps:
    readmit = readmitted_after(f"{out}/instance{st['instance']}.1.log", half_share)
    print(f"| {st['instance']} | {st['spread_at_sigterm']} | {st['streams_at_sigterm'] or '-'} | {st['drain_s']} | {st['exit_code']} "
          f"| {st['server_shutdown']} | {st['ready_s'] or '-'} | {st['traffic_s'] or '-'} "
          f"| {'-' if readmit is None else f'{readmit:.1f}'} | {st['step_s']} |")
print()

def ratio(x, y):
    return "-" if x is None or not y else f"{x / y:.2f}×"

print("| run | started | completed | cut | failed before headers | not run | nginx lines / non-200 / retried | tidegate outcomes | first event p50 / p99 (ms) | per-event p50 / p99 / max (ms) | roll window: worst 1-s p99 (ms) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for run in runs:
    x = summary[run]
    s = x["s"]
    w99, _ = window_latency(reports[run], a, b)
    outs = ", ".join(f"{k} {v}" for k, v in sorted(x["outcomes"].items())) or "-"
    print(f"| {run} | {s['started']} | {s['completed']} | {x['cut']} | {x['errors']} | {x['not_run']} "
          f"| {x['nginx_total']} / {x['non200']} / {x['retried']} | {outs} "
          f"| {ms(x['ttfe']['p50'])} / {ms(x['ttfe']['p99'])} "
          f"| {ms(x['lat']['p50'])} / {ms(x['lat']['p99'])} / {ms(x['lat']['max'])} | {ms(w99)} |")
if reference:
    r, f0 = summary["roll"], summary["reference"]
    rw, _ = window_latency(reports["roll"], a, b)
    fw, _ = window_latency(reports["reference"], a, b)
    print(f"| roll / reference | | | | | | | "
          f"| {ratio(r['ttfe']['p50'], f0['ttfe']['p50'])} / {ratio(r['ttfe']['p99'], f0['ttfe']['p99'])} "
          f"| {ratio(r['lat']['p50'], f0['lat']['p50'])} / {ratio(r['lat']['p99'], f0['lat']['p99'])} / "
          f"{ratio(r['lat']['max'], f0['lat']['max'])} | {ratio(rw, fw)} |")
print()
for run in runs:
    x = summary[run]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(x["s"]["failed_by_kind"].items())) or "none"
    st, en, l0, l1 = run_times.get(run, ("?", "?", "?", "?"))
    spread = ", ".join(f"instance {k} {v}" for k, v in sorted(by_instance(run).items()))
    print(f"- {run}: {st}–{en} UTC, load average {l0} at the start, {l1} at the end; "
          f"streams by instance (nginx's last upstream): {spread}")
    print(f"  driver failures by kind: {kinds}; nginx statuses "
          f"{dict(sorted(x['statuses'].items()))}; retried requests' upstream statuses "
          f"{dict(x['ust']) or '{}'}")
    for k, v in x["errlog"].most_common():
        print(f"  - nginx error log: {v} × {k}")
startup = collections.Counter()
for line in open(f"{out}/nginx/startup.log", errors="replace"):
    m = ERROR.match(line.rstrip("\n"))
    if m:
        startup[f"[{m.group(1)}] {m.group(2)}"] += 1
for k, v in startup.items():
    print(f"- nginx at start: {v} × {k}")
print()
if fails:
    print("FAILED:")
    for f in fails:
        print(f"- {f}")
    sys.exit(1)
print("PASSED: no stream cut, no error, every instance drained to exit 0 and came back under load")
PY
