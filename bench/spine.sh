#!/usr/bin/env bash
# bench/spine.sh: the figures of docs/benchmarks.md, section "Spine (issue: signed ONNX bundles
# over MQTT)". Self-contained and re-runnable; prints every figure as it goes.
#
# usage: bash bench/spine.sh [all|size|memory|rps|bounds|demo|converge]...   (default: all)
#   size    stripped size of the dist agent (and of the release agent, stripped here for comparison)
#   memory  agent VmRSS: idle without a model, idle with the digits MLP, after N_REQUESTS inferences
#           (release binary, then the dist binary)
#   rps     requests/s at batch 1, agent and FastAPI+onnxruntime peer each pinned to core 0,
#           wrk pinned to core 1, alternated RUNS times in the same run
#   bounds  what bounds req/s: GET /v2/health/live (HTTP stack alone) and batch 64, side by side,
#           and the agent alone answering 400 to a fully parsed body (no inference)
#   demo    `fleetml demo --once` DEMO_RUNS times: time for the 20-device fleet to converge on v1, v2
#           (the demo polls every 200 ms, so its figure is a multiple of that poll)
#   converge the same rollout timed from the plane's records instead of a poll: a plane, one
#           `fleetml-agent sim --count 20` process, the digits MLP pushed and deployed DEMO_RUNS+1
#           times; each figure is the last device's install-result time minus the deployment's
#           creation time (both in ms, same machine clock)
#
# environment (defaults):
#   CARGO_TARGET_DIR=/work/bench-target
#   BUILD=1 (0: use the binaries as they are)  SOURCE=commit (build a clean `git archive` of COMMIT
#   in BENCH_SRC_DIR, so uncommitted edits in the work tree are not measured; SOURCE=worktree
#   builds the work tree as it is)  COMMIT=HEAD  BENCH_SRC_DIR=/work/bench-src
#   RUNS=3 DURATION=10s WARMUP=2s  BOUNDS_DURATION=5s  N_REQUESTS=10000  DEMO_RUNS=3
#   PEER_PYTHON=/work/venv-peers/bin/python  PEER_SCRIPT=/work/shared/peers/fastapi_oip.py
#   KEEP_WORK=1 keeps the temporary folder (logs of every process) after the run.
# The binaries are copied into the temporary folder before anything runs (the target folder may be
# shared with other sessions' builds); their source, from cargo's dep-info, is printed and must be
# the same for the plane and both agents.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-/work/bench-target}
export CARGO_TARGET_DIR=$TARGET
BUILD=${BUILD:-1}
SOURCE=${SOURCE:-commit}
COMMIT=${COMMIT:-HEAD}
BENCH_SRC_DIR=${BENCH_SRC_DIR:-/work/bench-src}
SIM_DEVICES=${SIM_DEVICES:-20}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
BOUNDS_DURATION=${BOUNDS_DURATION:-5s}
N_REQUESTS=${N_REQUESTS:-10000}
DEMO_RUNS=${DEMO_RUNS:-3}
PEER_PYTHON=${PEER_PYTHON:-/work/venv-peers/bin/python}
PEER_SCRIPT=${PEER_SCRIPT:-/work/shared/peers/fastapi_oip.py}
MODEL_ONNX=$ROOT/firmware-tests/fixtures/models/mlp_digits.onnx
LUA=$ROOT/firmware-tests/fixtures/bench/post_digits.lua
SERVER_CORE=0
LOAD_CORE=1
MODEL=digits

FLEETML=$TARGET/release/fleetml
AGENT_RELEASE=$TARGET/release/fleetml-agent
AGENT_DIST=$TARGET/dist/fleetml-agent

WORK=$(mktemp -d /tmp/fleetml-spine.XXXXXX)
declare -A PID_OF=() API_OF=()
ALL_PIDS=()

# ---------------------------------------------------------------------------------------------
# helpers

log() { printf '%s\n' "$*"; }
section() { printf '\n=== %s ===  (%s; load average:%s)\n' "$1" "$(date -u +%H:%M:%SZ)" "$(uptime | sed 's/.*load average://')"; }
die() {
    printf 'spine.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${ALL_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${ALL_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        printf '\nspine.sh: exit %s; last lines of the process logs in %s:\n' "$status" "$WORK" >&2
        local f
        for f in "$WORK"/*.out "$WORK"/*.err; do
            [[ -s $f ]] || continue
            printf -- '--- %s\n' "$(basename "$f")" >&2
            tail -n 8 "$f" >&2
        done
    fi
    if [[ ${KEEP_WORK:-0} == 1 || $status -ne 0 ]]; then
        printf 'spine.sh: logs kept in %s\n' "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_bg NAME CMD...: runs CMD in the background, stdout/stderr in $WORK/NAME.{out,err}.
start_bg() {
    local name=$1
    shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID_OF[$name]=$!
    ALL_PIDS+=("$!")
}

stop_bg() {
    local name=$1 pid=${PID_OF[$1]:-}
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PID_OF[$name]"
}

# wait_line NAME REGEX SECONDS: waits for REGEX on NAME's stdout; prints the matching line.
wait_line() {
    local name=$1 regex=$2 seconds=$3 line
    for _ in $(seq $((seconds * 10))); do
        line=$(grep -m1 -E "$regex" "$WORK/$name.out" 2>/dev/null || true)
        if [[ -n $line ]]; then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "${PID_OF[$name]}" 2>/dev/null || die "$name exited before printing /$regex/: $(tail -n 5 "$WORK/$name.err")"
        sleep 0.1
    done
    die "$name printed no /$regex/ within $seconds s"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v kb="$1" 'BEGIN {printf "%.1f", kb / 1024}'; }
# rss_line LABEL PID: prints and returns (in RSS_KB) the resident memory of PID.
rss_line() {
    RSS_KB=$(rss_kb "$2")
    # RssFile is the binary's (and libraries') pages mapped from the page cache: shared and
    # evictable, and larger when the file is fully cached (as for the fresh copies run here).
    log "$(printf '%-62s VmRSS %6d kB = %5s MiB  (anon %s MiB, file %s MiB; VmHWM %s MiB, %s threads)' "$1" "$RSS_KB" "$(mib "$RSS_KB")" "$(mib "$(awk '/^RssAnon:/ {print $2}' "/proc/$2/status")")" "$(mib "$(awk '/^RssFile:/ {print $2}' "/proc/$2/status")")" "$(mib "$(hwm_kb "$2")")" "$(awk '/^Threads:/ {print $2}' "/proc/$2/status")")"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# wrk prints 850.00us, 1.87ms or 1.02s: in ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    }'
}

# run_wrk URL DURATION OUTFILE [-s SCRIPT]: pinned wrk with latency distribution; sets RPS P50 P99.
run_wrk() {
    local url=$1 duration=$2 out=$3
    shift 3
    taskset -c "$LOAD_CORE" wrk -t1 -c8 -d"$duration" --latency "$@" "$url" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
    RPS=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    P50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
    P99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
    [[ -n $RPS ]] || die "no Requests/sec in wrk output: $(cat "$out")"
    if grep -qE 'Socket errors' "$out" || { [[ ${ALLOW_NON2XX:-0} != 1 ]] && grep -qE 'Non-2xx' "$out"; }; then
        die "wrk saw errors against $url: $(grep -E 'Non-2xx|Socket errors' "$out")"
    fi
}

lua_body() { sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$LUA"; }

# ---------------------------------------------------------------------------------------------
# pieces: plane, agents, peer

start_plane() {
    [[ -n ${PID_OF[plane]:-} ]] && return 0
    "$FLEETML" keys generate --out "$WORK/keys" >/dev/null
    local http_port mqtt_port line
    http_port=$(free_port)
    mqtt_port=$(free_port)
    TOKEN=bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    MQTT_URL=mqtt://127.0.0.1:$mqtt_port
    start_bg plane "$FLEETML" serve --data-dir "$WORK/plane" --http "127.0.0.1:$http_port" \
        --mqtt-listen "127.0.0.1:$mqtt_port" --admin-token "$TOKEN" --signing-key "$WORK/keys/signing.key"
    line=$(wait_line plane 'fleetml control plane: API http://' 60)
    log "plane: $line"
    export FLEETML_SERVER=http://127.0.0.1:$http_port FLEETML_TOKEN=$TOKEN
    local version
    version=$("$FLEETML" model push "$MODEL" "$MODEL_ONNX" 2>"$WORK/push.err") || die "model push: $(cat "$WORK/push.err")"
    log "pushed $MODEL_ONNX as $MODEL@$version ($(cat "$WORK/push.err"))"
    MODEL_VERSION=$version
}

# start_agent NAME BINARY [PREFIX CMD...] -- [AGENT ARGS...]: device NAME; API in API_OF[NAME].
start_agent() {
    local name=$1 binary=$2
    shift 2
    local prefix=()
    while [[ $# -gt 0 && $1 != -- ]]; do prefix+=("$1"); shift; done
    [[ ${1:-} == -- ]] && shift
    local port line
    port=$(free_port)
    start_bg "$name" "${prefix[@]}" "$binary" run --device-id "$name" --mqtt-url "$MQTT_URL" \
        --state-dir "$WORK/state-$name" --trusted-key "$WORK/keys/signing.pub" --http "127.0.0.1:$port" "$@"
    line=$(wait_line "$name" 'fleetml-agent: device .* local API http://' 30)
    API_OF[$name]=$(sed -E 's/.*local API (http:\/\/[^ ]+).*/\1/' <<<"$line")
    log "$name: $line  (pid ${PID_OF[$name]})"
}

# deploy NAME: deploys the digits model to device NAME and waits until it serves it.
deploy() {
    local name=$1
    "$FLEETML" deploy "$MODEL@$MODEL_VERSION" --device "$name" --wait --timeout-s 120 >"$WORK/deploy-$name.out" 2>&1 ||
        die "deploy to $name: $(cat "$WORK/deploy-$name.out")"
    log "deploy to $name: $(tail -n 1 "$WORK/deploy-$name.out")"
    for _ in $(seq 100); do
        curl -sf "${API_OF[$name]}/v2/models/$MODEL/ready" >/dev/null && return 0
        sleep 0.1
    done
    die "$name does not report $MODEL ready"
}

start_peer() {
    [[ -n ${PID_OF[peer]:-} ]] && return 0
    local port
    port=$(free_port)
    start_bg peer taskset -c "$SERVER_CORE" "$PEER_PYTHON" "$PEER_SCRIPT" "$MODEL_ONNX" "$MODEL" "$port"
    API_OF[peer]=http://127.0.0.1:$port
    for _ in $(seq 300); do
        curl -sf "${API_OF[peer]}/v2/health/live" >/dev/null && {
            log "peer: FastAPI+onnxruntime on ${API_OF[peer]} pinned to core $SERVER_CORE (pid ${PID_OF[peer]})"
            return 0
        }
        kill -0 "${PID_OF[peer]}" 2>/dev/null || die "peer exited: $(tail -n 5 "$WORK/peer.err")"
        sleep 0.1
    done
    die "peer not live within 30 s"
}

# check_answer NAME: the Lua body answers 200 with a label; sets LABEL.
check_answer() {
    local name=$1 code
    code=$(curl -s -o "$WORK/answer-$name.json" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary "$(lua_body)" "${API_OF[$name]}/v2/models/$MODEL/infer")
    [[ $code == 200 ]] || die "$name answered HTTP $code: $(cat "$WORK/answer-$name.json")"
    LABEL=$(jq -c '.outputs[] | select(.name == "label") | .data' "$WORK/answer-$name.json")
    LABEL_TYPE=$(jq -r '.outputs[] | select(.name == "label") | .datatype' "$WORK/answer-$name.json")
    [[ -n $LABEL ]] || die "$name answered without a label: $(cat "$WORK/answer-$name.json")"
    log "$name: HTTP 200, label $LABEL ($LABEL_TYPE), probabilities $(jq -c '.outputs[] | select(.name == "probabilities") | .data | map(. * 1000 | round / 1000)' "$WORK/answer-$name.json")"
}

# rps targets: the agent pinned with one inference thread, and the peer, both on SERVER_CORE.
start_rps_targets() {
    start_plane
    if [[ -z ${PID_OF[bench-pinned]:-} ]]; then
        start_agent bench-pinned "$AGENT_RELEASE" taskset -c "$SERVER_CORE" -- --inference-threads 1
        deploy bench-pinned
    fi
    start_peer
    local input
    input=$(curl -sf "${API_OF[bench-pinned]}/v2/models/$MODEL" | jq -r '.inputs[0].name')
    [[ $input == input ]] || die "the agent's model input is \`$input\`, the Lua body sends \`input\`"
    check_answer bench-pinned
    local agent_label=$LABEL agent_type=$LABEL_TYPE
    check_answer peer
    [[ $agent_label == "$LABEL" ]] || die "labels differ: agent $agent_label, peer $LABEL"
    [[ $agent_type == "$LABEL_TYPE" ]] || log "WARNING: the label's datatype differs: agent $agent_type, peer $LABEL_TYPE"
    log "both answer HTTP 200 with label $LABEL for the Lua body; affinity: agent $(taskset -cp "${PID_OF[bench-pinned]}" | sed 's/.*: //'), peer $(taskset -cp "${PID_OF[peer]}" | sed 's/.*: //')"
}

# ---------------------------------------------------------------------------------------------
# figures

machine_info() {
    section "machine"
    log "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    log "nproc: $(nproc)"
    log "cpu: $(lscpu | grep 'Model name' | sed 's/Model name:[[:space:]]*//')"
    log "memory: $(free -h | awk '/^Mem:/ {print $2}') total"
    log "kernel: $(uname -sr)"
    log "uptime: $(uptime)"
    log "git commit: $(git -C "$ROOT" rev-parse HEAD) ($(git -C "$ROOT" log -1 --format=%s | cut -c1-70))"
    local dirty
    dirty=$(git -C "$ROOT" status --short --untracked-files=no | tr '\n' ' ')
    log "tracked files changed since that commit: ${dirty:-none}"
    log "rustc: $(rustc --version 2>/dev/null || echo unknown)"
    log "wrk: $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"
    log "peer: $("$PEER_PYTHON" -c 'import onnxruntime, fastapi, uvicorn, numpy; print("onnxruntime", onnxruntime.__version__, "fastapi", fastapi.__version__, "uvicorn", uvicorn.__version__, "numpy", numpy.__version__)')"
}

# built_from BINARY: the source folder that cargo's dep-info (BINARY.d) names.
built_from() {
    awk '{for (i = 2; i <= NF; i++) if ($i ~ /\/agent\/src\//) {sub(/\/agent\/src\/.*/, "", $i); print $i; exit}}' "$1.d" 2>/dev/null || true
}

build() {
    section "build (CARGO_TARGET_DIR=$TARGET)"
    local stamp=$TARGET/spine-build-source.txt
    if [[ $BUILD == 1 ]]; then
        local src key description
        if [[ $SOURCE == commit ]]; then
            local sha
            sha=$(git -C "$ROOT" rev-parse "$COMMIT^{commit}") || die "no commit $COMMIT"
            src=$BENCH_SRC_DIR/$sha
            if [[ ! -f $src/Cargo.toml ]]; then
                rm -rf "$src.partial"
                mkdir -p "$src.partial"
                git -C "$ROOT" archive "$sha" | tar -x -C "$src.partial" || die "git archive $sha"
                mv "$src.partial" "$src"
            fi
            key=$sha
            description="commit $sha (clean git archive in $src)"
        elif [[ $SOURCE == worktree ]]; then
            src=$ROOT
            key=worktree
            local dirty
            dirty=$(git -C "$ROOT" status --short --untracked-files=no | tr '\n' ' ')
            description="work tree $ROOT at $(git -C "$ROOT" rev-parse HEAD) with changes: ${dirty:-none}"
        else
            die "SOURCE must be commit or worktree"
        fi
        # Cargo decides freshness from file times, a git archive carries the commit's times, and
        # this target folder may be shared with builds of other sources: always rebuild the
        # workspace crates so that nothing stale is measured (dependencies stay built).
        (cd "$src" && cargo clean -p fleetml-shared -p fleetml-agent -p fleetml-plane --release &&
            cargo clean -p fleetml-shared -p fleetml-agent --profile dist) || die "cargo clean"
        rm -f "$stamp"
        log "building $description"
        (cd "$src" && cargo build --release -p fleetml-plane -p fleetml-agent --bins) || die "release build"
        (cd "$src" && cargo build --profile dist -p fleetml-agent) || die "dist build"
        printf '%s\t%s, built %s\n' "$key" "$description" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$stamp"
    else
        log "BUILD=0: using the binaries as they are"
    fi
    log "MEASURED: $(cut -f2 "$stamp" 2>/dev/null || echo 'binaries of unknown source (no stamp)')"
    # The target folder may be shared with other benchmark sessions: note where each binary was
    # built from (its dep-info names the source files), refuse a plane and agents from different
    # sources, and run copies so that a rebuild during the run cannot swap them.
    local bin sources=() from
    for bin in "$FLEETML" "$AGENT_RELEASE" "$AGENT_DIST"; do
        [[ -x $bin ]] || die "$bin missing (run with BUILD=1)"
        from=$(built_from "$bin")
        log "$bin  built $(date -u -r "$bin" +%Y-%m-%dT%H:%M:%SZ) from ${from:-?}"
        sources+=("${from:-?}")
    done
    [[ ${sources[0]} == "${sources[1]}" && ${sources[1]} == "${sources[2]}" ]] ||
        die "the plane and the agents were built from different sources (${sources[*]}): rebuild with BUILD=1"
    mkdir -p "$WORK/bin"
    cp "$FLEETML" "$WORK/bin/fleetml"
    cp "$AGENT_RELEASE" "$WORK/bin/fleetml-agent"
    cp "$AGENT_DIST" "$WORK/bin/fleetml-agent-dist"
    FLEETML=$WORK/bin/fleetml
    AGENT_RELEASE=$WORK/bin/fleetml-agent
    AGENT_DIST=$WORK/bin/fleetml-agent-dist
}

figure_size() {
    section "1. agent binary size"
    local dist release stripped
    dist=$(stat -c %s "$AGENT_DIST")
    log "dist agent ($AGENT_DIST): $(file -b "$AGENT_DIST" | grep -o 'not stripped\|stripped')"
    log "$(printf 'SIZE dist (opt-level z, LTO, 1 CGU, panic=abort, strip): %d bytes = %.2f MB (%.2f MiB)' "$dist" "$(awk -v b="$dist" 'BEGIN {print b / 1e6}')" "$(awk -v b="$dist" 'BEGIN {print b / 1048576}')")"
    release=$(stat -c %s "$AGENT_RELEASE")
    strip -o "$WORK/agent-release-stripped" "$AGENT_RELEASE"
    stripped=$(stat -c %s "$WORK/agent-release-stripped")
    log "$(printf 'SIZE release as built: %d bytes = %.2f MB; stripped here: %d bytes = %.2f MB' "$release" "$(awk -v b="$release" 'BEGIN {print b / 1e6}')" "$stripped" "$(awk -v b="$stripped" 'BEGIN {print b / 1e6}')")"
}

# memory_of BINARY LABEL: (a) idle without a model, (b) idle with the model, (c) after N_REQUESTS.
memory_of() {
    local binary=$1 label=$2 name=bench-mem-$2 pid
    start_agent "$name" "$binary"
    pid=${PID_OF[$name]}
    sleep 2
    rss_line "MEM $label (a) idle, just started, no model" "$pid"
    deploy "$name"
    sleep 2
    rss_line "MEM $label (b) idle, digits model active" "$pid"
    "$PEER_PYTHON" "$WORK/sequential_client.py" "${API_OF[$name]}/v2/models/$MODEL/infer" "$N_REQUESTS" "$LUA" |
        sed 's/^/    /' || die "sequential requests to $name"
    sleep 1
    rss_line "MEM $label (c) after $N_REQUESTS requests" "$pid"
    "$PEER_PYTHON" "$WORK/sequential_client.py" "${API_OF[$name]}/v2/models/$MODEL/infer" "$N_REQUESTS" "$LUA" |
        sed 's/^/    /' || die "sequential requests to $name"
    sleep 1
    rss_line "MEM $label (c') after $((2 * N_REQUESTS)) requests (growth check)" "$pid"
    stop_bg "$name"
}

write_sequential_client() {
    cat >"$WORK/sequential_client.py" <<'EOF'
# N sequential POSTs of the wrk Lua body on one keep-alive connection; fails on any non-200.
import http.client, re, sys, time, urllib.parse
url, n, lua = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = re.search(r"^wrk\.body = '(.*)'$", open(lua).read(), re.M).group(1).encode()
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
started = time.perf_counter()
for i in range(n):
    conn.request("POST", u.path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200:
        sys.exit(f"request {i}: HTTP {response.status}: {answer[:200]!r}")
elapsed = time.perf_counter() - started
print(f"{n} sequential requests (Python http.client, one keep-alive connection, unpinned): all HTTP 200, {elapsed:.1f} s, {n / elapsed:.0f} req/s")
EOF
}

figure_memory() {
    section "2. agent resident memory (VmRSS from /proc/PID/status)"
    start_plane
    write_sequential_client
    memory_of "$AGENT_RELEASE" release
    memory_of "$AGENT_DIST" dist
}

figure_rps() {
    section "3. requests/s at batch 1, server pinned to core $SERVER_CORE, wrk -t1 -c8 pinned to core $LOAD_CORE"
    start_rps_targets
    rss_line "MEM pinned agent (release, 1 inference thread), model active" "${PID_OF[bench-pinned]}"
    rss_line "MEM peer (python + FastAPI + onnxruntime), model loaded" "${PID_OF[peer]}"
    local agent_rps=() agent_p50=() agent_p99=() peer_rps=() peer_p50=() peer_p99=() run target
    local started=$SECONDS
    for run in $(seq "$RUNS"); do
        for target in bench-pinned peer; do
            local url=${API_OF[$target]}/v2/models/$MODEL/infer
            run_wrk "$url" "$WARMUP" "$WORK/wrk-warmup.txt" -s "$LUA"
            run_wrk "$url" "$DURATION" "$WORK/wrk-$target-$run.txt" -s "$LUA"
            log "$(printf 'RPS run %d %-12s %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms  (%s)' "$run" "$target" "$RPS" "$P50" "$P99" "$(grep -E 'requests in' "$WORK/wrk-$target-$run.txt" | sed 's/^ *//')")"
            if [[ $target == peer ]]; then
                peer_rps+=("$RPS"); peer_p50+=("$P50"); peer_p99+=("$P99")
            else
                agent_rps+=("$RPS"); agent_p50+=("$P50"); agent_p99+=("$P99")
            fi
        done
    done
    local ar ap ap99 pr pp pp99
    ar=$(median "${agent_rps[@]}"); ap=$(median "${agent_p50[@]}"); ap99=$(median "${agent_p99[@]}")
    pr=$(median "${peer_rps[@]}"); pp=$(median "${peer_p50[@]}"); pp99=$(median "${peer_p99[@]}")
    log "$(printf 'RPS median agent  %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms' "$ar" "$ap" "$ap99")"
    log "$(printf 'RPS median peer   %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms' "$pr" "$pp" "$pp99")"
    log "RPS ratio agent/peer: req/s $(ratio "$ar" "$pr")x, p50 $(ratio "$ap" "$pp")x, p99 $(ratio "$ap99" "$pp99")x"
    log "RPS per-run ratios agent/peer (same run): $(for i in $(seq 0 $((RUNS - 1))); do printf '%s ' "$(ratio "${agent_rps[$i]}" "${peer_rps[$i]}")"; done)"
    rss_line "MEM pinned agent after the wrk runs" "${PID_OF[bench-pinned]}"
    rss_line "MEM peer after the wrk runs" "${PID_OF[peer]}"
    # The agent reports its own latency (queue to the inference thread + tract run) in heartbeats
    # (every 10 s by default); wait for the window that holds the last run.
    sleep 11
    local since=$((SECONDS - started + 1))
    curl -sf -H "Authorization: Bearer $TOKEN" "$FLEETML_SERVER/api/v1/models/$MODEL/versions/$MODEL_VERSION/stats?since_s=$since" >"$WORK/stats.json" ||
        die "plane stats"
    log "device-side (pinned agent, from its heartbeats over the runs): $(jq -r '"\(.requests) requests, \(.errors) errors, inference p50 \(.latency_p50_us) µs, p99 \(.latency_p99_us) µs"' "$WORK/stats.json")"
}

figure_bounds() {
    section "bounds: HTTP stack alone (GET /v2/health/live) and batch 64, same pinning, $BOUNDS_DURATION runs"
    start_rps_targets
    "$PEER_PYTHON" - "$LUA" "$WORK/post_digits_b64.lua" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
body = json.loads(re.search(r"^wrk\.body = '(.*)'$", text, re.M).group(1))
row = body["inputs"][0]["data"]
body["inputs"][0]["shape"] = [64, 64]
body["inputs"][0]["data"] = row * 64
with open(sys.argv[2], "w") as out:
    out.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
    out.write("wrk.body = '" + json.dumps(body, separators=(",", ":")) + "'\n")
EOF
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$WORK/post_digits_b64.lua")" "${API_OF[bench-pinned]}/v2/models/$MODEL/infer")
    [[ $code == 200 ]] || die "batch 64: agent answered $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$WORK/post_digits_b64.lua")" "${API_OF[peer]}/v2/models/$MODEL/infer")
    [[ $code == 200 ]] || die "batch 64: peer answered $code"
    # The agent alone: the same body with an unsupported datatype is parsed in full (all 64 numbers)
    # and refused with 400 before any inference: HTTP + request parsing + a small error answer.
    sed "s/\"datatype\":\"FP32\"/\"datatype\":\"FP16\"/" "$LUA" >"$WORK/post_digits_fp16.lua"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$WORK/post_digits_fp16.lua")" "${API_OF[bench-pinned]}/v2/models/$MODEL/infer")
    [[ $code == 400 ]] || die "FP16 body: agent answered $code, expected 400"
    local parse=() run
    for run in $(seq "$RUNS"); do
        ALLOW_NON2XX=1 run_wrk "${API_OF[bench-pinned]}/v2/models/$MODEL/infer" 1s "$WORK/wrk-warmup.txt" -s "$WORK/post_digits_fp16.lua"
        ALLOW_NON2XX=1 run_wrk "${API_OF[bench-pinned]}/v2/models/$MODEL/infer" "$BOUNDS_DURATION" "$WORK/wrk-parse-$run.txt" -s "$WORK/post_digits_fp16.lua"
        log "$(printf 'BOUNDS parse400 run %d %-12s %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms  (HTTP 400 after parsing the body, no inference)' "$run" bench-pinned "$RPS" "$P50" "$P99")"
        parse+=("$RPS")
    done
    log "$(printf 'BOUNDS parse400 median agent %9.0f req/s' "$(median "${parse[@]}")")"
    local kind target acc_agent acc_peer
    for kind in live batch64; do
        acc_agent=() acc_peer=()
        for run in $(seq "$RUNS"); do
            for target in bench-pinned peer; do
                if [[ $kind == live ]]; then
                    run_wrk "${API_OF[$target]}/v2/health/live" 1s "$WORK/wrk-warmup.txt"
                    run_wrk "${API_OF[$target]}/v2/health/live" "$BOUNDS_DURATION" "$WORK/wrk-$kind-$target-$run.txt"
                else
                    run_wrk "${API_OF[$target]}/v2/models/$MODEL/infer" 1s "$WORK/wrk-warmup.txt" -s "$WORK/post_digits_b64.lua"
                    run_wrk "${API_OF[$target]}/v2/models/$MODEL/infer" "$BOUNDS_DURATION" "$WORK/wrk-$kind-$target-$run.txt" -s "$WORK/post_digits_b64.lua"
                fi
                log "$(printf 'BOUNDS %-8s run %d %-12s %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms' "$kind" "$run" "$target" "$RPS" "$P50" "$P99")"
                if [[ $target == peer ]]; then acc_peer+=("$RPS"); else acc_agent+=("$RPS"); fi
            done
        done
        local a p
        a=$(median "${acc_agent[@]}")
        p=$(median "${acc_peer[@]}")
        if [[ $kind == batch64 ]]; then
            log "$(printf 'BOUNDS %-8s median agent %9.0f req/s (%.0f rows/s)  peer %9.0f req/s (%.0f rows/s)  ratio %s' "$kind" "$a" "$(awk -v r="$a" 'BEGIN {print r * 64}')" "$p" "$(awk -v r="$p" 'BEGIN {print r * 64}')" "$(ratio "$a" "$p")")"
        else
            log "$(printf 'BOUNDS %-8s median agent %9.0f req/s  peer %9.0f req/s  ratio %s' "$kind" "$a" "$p" "$(ratio "$a" "$p")")"
        fi
    done
}

figure_demo() {
    section "4. demo fleet convergence: $FLEETML demo --once, $DEMO_RUNS runs"
    local v1=() v2=() run out
    for run in $(seq "$DEMO_RUNS"); do
        out=$WORK/demo-$run.out
        "$FLEETML" demo --once >"$out" 2>"$WORK/demo-$run.err" || die "demo run $run: $(tail -n 5 "$WORK/demo-$run.err")"
        local a b
        a=$(sed -nE 's/^fleet converged on v1 in ([0-9.]+) s.*/\1/p' "$out")
        b=$(sed -nE 's/^fleet converged on v2 in ([0-9.]+) s.*/\1/p' "$out")
        [[ -n $a && -n $b ]] || die "demo run $run printed no convergence lines: $(cat "$out")"
        v1+=("$a"); v2+=("$b")
        log "DEMO run $run: $(grep -E '^fleet converged on v' "$out" | tr '\n' ';' | sed 's/;$//; s/;/; /')"
        grep -E 'devices online after|inference requests over' "$out" | sed 's/^/    /'
    done
    log "DEMO median: v1 converged in $(median "${v1[@]}") s, v2 in $(median "${v2[@]}") s (20 simulated agents in one process)"
}

# deploy_and_time VERSION: deploys digits@VERSION to the simulated fleet; sets CONVERGE_MS.
deploy_and_time() {
    local version=$1 created
    "$FLEETML" deploy "$MODEL@$version" --selector fleet=bench --wait --timeout-s 120 --json >"$WORK/deploy-sim-$version.json" 2>"$WORK/deploy-sim-$version.err" ||
        die "deploy $MODEL@$version to the simulated fleet: $(cat "$WORK/deploy-sim-$version.json" "$WORK/deploy-sim-$version.err")"
    created=$(jq -r '.deployment.created_ms' "$WORK/deploy-sim-$version.json")
    local converged failed pending
    converged=$(jq '.outcome.converged | length' "$WORK/deploy-sim-$version.json")
    failed=$(jq '.outcome.failed | length' "$WORK/deploy-sim-$version.json")
    pending=$(jq '.outcome.pending | length' "$WORK/deploy-sim-$version.json")
    [[ $converged == "$SIM_DEVICES" && $failed == 0 && $pending == 0 ]] ||
        die "v$version: $converged converged, $failed failed, $pending pending"
    "$FLEETML" devices --json >"$WORK/devices-$version.json"
    local stats
    stats=$(jq -r --arg model "$MODEL" --argjson version "$version" --argjson created "$created" '
        [.[] | select(.labels.fleet == "bench") | .slots[] | select(.model == $model)
             | .last_result | select(.version == $version and .ok) | .at_ms - $created] | sort
        | "\(length) \(.[0]) \(.[(length / 2 | floor)]) \(.[-1])"' "$WORK/devices-$version.json")
    local n first mid last
    read -r n first mid last <<<"$stats"
    [[ $n == "$SIM_DEVICES" ]] || die "v$version: install results for $n of $SIM_DEVICES devices"
    CONVERGE_MS=$last
    log "$(printf 'CONVERGE v%d: %d devices installed; first %d ms, median %d ms, last %d ms after the deployment was created' "$version" "$n" "$first" "$mid" "$last")"
}

figure_converge() {
    section "4b. rollout convergence from the plane's records: $SIM_DEVICES simulated agents (one process), digits MLP"
    start_plane
    start_bg sim "$AGENT_RELEASE" sim --count "$SIM_DEVICES" --id-prefix bench-sim- --mqtt-url "$MQTT_URL" \
        --state-dir "$WORK/state-sim" --trusted-key "$WORK/keys/signing.pub" --label fleet=bench --http 127.0.0.1:0
    log "sim: $(wait_line sim 'simulated fleet of' 30)"
    local online
    for _ in $(seq 300); do
        online=$("$FLEETML" devices --json | jq '[.[] | select(.labels.fleet == "bench" and .online)] | length')
        [[ $online == "$SIM_DEVICES" ]] && break
        sleep 0.1
    done
    [[ $online == "$SIM_DEVICES" ]] || die "only $online of $SIM_DEVICES simulated devices online"
    local first=() later=() round version
    for round in $(seq 0 "$DEMO_RUNS"); do
        if [[ $round == 0 ]]; then
            version=$MODEL_VERSION
        else
            version=$("$FLEETML" model push "$MODEL" "$MODEL_ONNX" --description "spine round $round" 2>"$WORK/push-$round.err") ||
                die "push round $round: $(cat "$WORK/push-$round.err")"
        fi
        deploy_and_time "$version"
        if [[ $round == 0 ]]; then first+=("$CONVERGE_MS"); else later+=("$CONVERGE_MS"); fi
    done
    log "CONVERGE first install (no model before): ${first[0]} ms; upgrades (median of $DEMO_RUNS): $(median "${later[@]}") ms"
    stop_bg sim
}

# ---------------------------------------------------------------------------------------------

main() {
    local commands=("$@")
    [[ ${#commands[@]} -gt 0 ]] || commands=(all)
    local command
    for command in "${commands[@]}"; do
        case $command in
        all | size | memory | rps | bounds | demo | converge) ;;
        *) die "unknown sub-command \`$command\` (all|size|memory|rps|bounds|demo|converge)" ;;
        esac
    done
    for tool in wrk taskset curl jq python3 "$PEER_PYTHON"; do
        command -v "$tool" >/dev/null || die "$tool not found"
    done
    [[ -f $MODEL_ONNX && -f $LUA && -f $PEER_SCRIPT ]] || die "missing model, Lua script or peer"
    machine_info
    build
    for command in "${commands[@]}"; do
        case $command in
        all)
            figure_size
            figure_memory
            figure_rps
            figure_bounds
            stop_bg bench-pinned
            stop_bg peer
            figure_converge
            stop_bg plane
            figure_demo
            ;;
        size) figure_size ;;
        memory) figure_memory ;;
        rps) figure_rps ;;
        bounds) figure_bounds ;;
        demo) figure_demo ;;
        converge) figure_converge ;;
        esac
    done
    section "done"
}

main "$@"
