#!/usr/bin/env bash
# bench/rollout.sh: the figures of docs/benchmarks.md, section "Rollouts at fleet scale (issue:
# staged rollouts)". Self-contained and re-runnable; prints every figure as it goes, with what
# produced it.
#
# usage: bash bench/rollout.sh
#
# For each N in COUNTS, RUNS times (each run with fresh processes and a fresh data folder):
#   1. `fleetml serve` (embedded rumqttd broker, free ports, --data-dir in a temp folder) in a
#      shell whose open-file limit is raised to NOFILE;
#   2. `fleetml-agent sim --count N --heartbeat-seconds 30 --label fleet=bench` as a separate
#      process (the N agents share one local API listener), same limit; waits until the plane
#      reports N devices online, and records how long that took (from the plane's records:
#      the latest `first_seen_ms` minus the moment the sim was started) and both processes'
#      VmRSS and open file descriptors;
#   3. pushes the demo model (the MLP that `fleetml demo` trains, exported once by
#      `fleetml demo --once --data-dir ...`: `machine-state-2.onnx`) as `bench@1` and starts a
#      staged rollout through `POST /api/v1/rollouts`: waves 1%, 10%, 50%, 100%, zero bake,
#      gate install_failure_rate max 0.0 min_samples 1;
#   4. reads the rollout time from the plane's own records (`GET /api/v1/rollouts/{id}`:
#      `completed.at_ms - started.at_ms`; per wave from the `gates_passed` events; the first and
#      last device install results from `GET /api/v1/devices`), and the bytes sent: the plane's
#      counters (`GET /api/v1/status`: `chunk_bytes_published`, `desired_published`, before and
#      after), and the kernel's per-socket counters (`ss -tni`: `bytes_acked` of the plane's
#      MQTT client socket = every byte the plane wrote to the broker; the sum over the broker's
#      accepted sockets to the agents = every byte the broker delivered to the devices), each
#      divided by N;
#   5. the anchor: AWS IoT Jobs' ceiling of 1,000 devices per minute (its maximum rollout rate)
#      takes N/1000 minutes for N devices; prints our time and the ratio.
# Medians and spreads (min-max) of the RUNS runs at the end.
#
# environment (defaults):
#   COUNTS="1000 10000"  RUNS=3
#   CARGO_TARGET_DIR=/var/tmp/fleetml-target-bench
#   BUILD=1 (0: use the binaries as they are)  SOURCE=commit (build a clean `git archive` of
#   COMMIT in BENCH_SRC_DIR, so uncommitted edits in the work tree are not measured;
#   SOURCE=worktree builds the work tree as it is)  COMMIT=HEAD  BENCH_SRC_DIR=/var/tmp/fleetml-bench-src
#   NOFILE=20000 (`ulimit -n` for the plane and the sim; must not exceed `ulimit -Hn`)
#   BROKER=embedded (the plane's rumqttd) or mosquitto (a private `mosquitto` 2 started by this
#   script under the same open-file limit, `max_connections -1`, no persistence; the plane gets
#   `--mqtt-url`)
#   MQTT_MAX_CONNECTIONS=20000 (`fleetml serve --mqtt-max-connections`, embedded broker only)
#   CONNECT_RATE=0 (`fleetml-agent sim --connect-rate`: agents started per second; 0: all at once)
#   ONLINE_TIMEOUT=900 ROLLOUT_TIMEOUT=1800 (seconds)
#   KEEP_WORK=1 keeps the temporary folder (logs of every process) after the run.
# The binaries are copied into the temporary folder before anything runs (the target folder may
# be shared with other builds).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-/var/tmp/fleetml-target-bench}
export CARGO_TARGET_DIR=$TARGET
BUILD=${BUILD:-1}
SOURCE=${SOURCE:-commit}
COMMIT=${COMMIT:-HEAD}
BENCH_SRC_DIR=${BENCH_SRC_DIR:-/var/tmp/fleetml-bench-src}
COUNTS=${COUNTS:-"1000 10000"}
RUNS=${RUNS:-3}
NOFILE=${NOFILE:-20000}
MQTT_MAX_CONNECTIONS=${MQTT_MAX_CONNECTIONS:-20000}
BROKER=${BROKER:-embedded}
CONNECT_RATE=${CONNECT_RATE:-0}
ONLINE_TIMEOUT=${ONLINE_TIMEOUT:-900}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-1800}
MODEL=bench
HEARTBEAT_SECONDS=30
# AWS IoT Jobs: "Maximum rollout rate for a job: 1000 devices per minute" (service quotas).
AWS_DEVICES_PER_MINUTE=1000

WORK=$(mktemp -d /tmp/fleetml-rollout.XXXXXX)
declare -A PID_OF=()
ALL_PIDS=()

# ---------------------------------------------------------------------------------------------
# helpers

log() { printf '%s\n' "$*"; }
section() { printf '\n=== %s ===  (%s; load average:%s)\n' "$1" "$(date -u +%H:%M:%SZ)" "$(uptime | sed 's/.*load average://')"; }
die() {
    printf 'rollout.sh: FAILED: %s\n' "$*" >&2
    exit 1
}
now_ms() { date +%s%3N; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${ALL_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${ALL_PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        printf '\nrollout.sh: exit %s; last lines of the process logs in %s:\n' "$status" "$WORK" >&2
        local f
        for f in "$WORK"/*.out "$WORK"/*.err; do
            [[ -s $f ]] || continue
            printf -- '--- %s\n' "$(basename "$f")" >&2
            tail -n 8 "$f" >&2
        done
    fi
    if [[ ${KEEP_WORK:-0} == 1 || $status -ne 0 ]]; then
        printf 'rollout.sh: logs kept in %s\n' "$WORK" >&2
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

# start_bg NAME CMD...: runs CMD in the background with the raised open-file limit,
# stdout/stderr in $WORK/NAME.{out,err}.
start_bg() {
    local name=$1
    shift
    (ulimit -n "$NOFILE" && exec "$@") >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID_OF[$name]=$!
    ALL_PIDS+=("$!")
}

stop_bg() {
    local name=$1 pid=${PID_OF[$1]:-}
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
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

kb_of() { awk -v key="$2:" '$1 == key {print $2}' "/proc/$1/status"; }
mib() { awk -v kb="$1" 'BEGIN {printf "%.1f", kb / 1024}'; }
fds_of() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# budget_line LABEL PID: resident memory, open fds, threads and the fd limit of PID.
budget_line() {
    local pid=$2
    log "$(printf '%-34s VmRSS %7s MiB (anon %s MiB; VmHWM %s MiB)  open fds %6d  threads %3d  fd limit %s' "$1" \
        "$(mib "$(kb_of "$pid" VmRSS)")" "$(mib "$(kb_of "$pid" RssAnon)")" "$(mib "$(kb_of "$pid" VmHWM)")" "$(fds_of "$pid")" \
        "$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")" "$(awk '/^Max open files/ {print $4 "/" $5}' "/proc/$pid/limits")")"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
spread() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s-%s", lo, hi}'; }
fmt_s() { awk -v ms="$1" 'BEGIN {printf "%.2f", ms / 1000}'; }

api() { curl -sf -H "Authorization: Bearer $TOKEN" "$API$1"; }

# socket_bytes: sets PLANE_TX (bytes_acked of the plane's MQTT client socket: what the plane
# wrote to the broker) and BROKER_TX (sum of bytes_acked over the broker's sockets to every
# other client: what the broker delivered to the agents), from the kernel's TCP counters.
socket_bytes() {
    local plane_pid=${PID_OF[plane]}
    # The plane's own client socket: destination port = the broker's, owned by the plane.
    local dump
    dump=$(ss -tnpiH state established "( dport = :$MQTT_PORT )")
    # ss prints a header line (addresses, users) then an indented info line per socket.
    local plane_port plane_acked
    read -r plane_port plane_acked < <(awk -v pid="pid=$plane_pid," '
        !/^[ \t]/ {local = $3; users = $0; next}
        index(users, pid) {
            n = split(local, parts, ":"); port = parts[n]
            if (match($0, /bytes_acked:[0-9]+/)) acked = substr($0, RSTART + 12, RLENGTH - 12); else acked = 0
            print port, acked; exit
        }' <<<"$dump")
    [[ -n ${plane_port:-} ]] || die "no MQTT client socket of the plane (pid $plane_pid) towards port $MQTT_PORT"
    PLANE_TX=$plane_acked
    BROKER_TX=$(ss -tniH state established "( sport = :$MQTT_PORT )" | awk -v skip="127.0.0.1:$plane_port" '
        !/^[ \t]/ {peer = $4; next}
        peer != skip && match($0, /bytes_acked:[0-9]+/) {sum += substr($0, RSTART + 12, RLENGTH - 12)}
        END {printf "%d", sum}')
    BROKER_SOCKETS=$(ss -tnH state established "( sport = :$MQTT_PORT )" | wc -l)
}

# ---------------------------------------------------------------------------------------------
# machine and build

machine_info() {
    section "machine"
    log "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    log "nproc: $(nproc)"
    log "cpu: $(lscpu | grep 'Model name' | sed 's/Model name:[[:space:]]*//')"
    log "memory: $(free -h | awk '/^Mem:/ {print $2 " total, " $7 " available"}')"
    log "kernel: $(uname -sr)"
    log "uptime: $(uptime)"
    log "git commit: $(git -C "$ROOT" rev-parse HEAD) ($(git -C "$ROOT" log -1 --format=%s | cut -c1-70))"
    local dirty
    dirty=$(git -C "$ROOT" status --short --untracked-files=no | tr '\n' ' ')
    log "tracked files changed since that commit: ${dirty:-none}"
    log "rustc: $(rustc --version 2>/dev/null || echo unknown)"
    section "budget"
    local hard
    hard=$(ulimit -Hn)
    log "open files: this shell's hard limit \`ulimit -Hn\` = $hard, soft \`ulimit -Sn\` = $(ulimit -Sn); the plane and the sim are started under \`ulimit -n $NOFILE\`"
    if [[ $hard != unlimited && $hard -lt $NOFILE ]]; then
        die "NOFILE=$NOFILE exceeds the hard limit $hard"
    fi
    log "kernel: fs.file-max $(cat /proc/sys/fs/file-max), fs.nr_open $(cat /proc/sys/fs/nr_open), net.core.somaxconn $(cat /proc/sys/net/core/somaxconn), net.ipv4.tcp_max_syn_backlog $(cat /proc/sys/net/ipv4/tcp_max_syn_backlog), net.ipv4.ip_local_port_range $(tr '\t' '-' </proc/sys/net/ipv4/ip_local_port_range)"
    if [[ $BROKER == embedded ]]; then
        log "broker: embedded rumqttd, \`fleetml serve --mqtt-max-connections $MQTT_MAX_CONNECTIONS\` (its other settings are printed by the plane below)"
    else
        log "broker: $(mosquitto -h 2>&1 | head -n 1), started per run with the configuration printed below; the plane uses --mqtt-url"
    fi
    log "sim: \`fleetml-agent sim --connect-rate $CONNECT_RATE\` (agents started per second; 0 = all at once)"
}

build() {
    section "build (CARGO_TARGET_DIR=$TARGET)"
    if [[ $BUILD == 1 ]]; then
        local src description
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
            description="commit $sha (clean git archive in $src)"
        elif [[ $SOURCE == worktree ]]; then
            src=$ROOT
            description="the work tree $ROOT as it is"
        else
            die "SOURCE must be commit or worktree"
        fi
        log "building $description"
        local started=$SECONDS
        (cd "$src" && cargo build --release -p fleetml-plane -p fleetml-agent --bins 2>&1 | tail -n 3) || die "build failed"
        log "built in $((SECONDS - started)) s"
        BUILT_FROM=$src
    else
        BUILT_FROM="(not built by this run)"
        log "BUILD=0: using $TARGET/release as it is"
    fi
    mkdir -p "$WORK/bin"
    cp "$TARGET/release/fleetml" "$TARGET/release/fleetml-agent" "$WORK/bin/"
    FLEETML=$WORK/bin/fleetml
    AGENT=$WORK/bin/fleetml-agent
    local from
    from=$(awk '{for (i = 2; i <= NF; i++) if ($i ~ /\/agent\/src\//) {sub(/\/agent\/src\/.*/, "", $i); print $i; exit}}' "$TARGET/release/fleetml-agent.d" 2>/dev/null || true)
    log "binaries copied to $WORK/bin; cargo's dep-info says the agent was built from: ${from:-unknown}"
    log "fleetml: $("$FLEETML" --version)  fleetml-agent: $("$AGENT" --version)"
    "$AGENT" sim --help | grep -q -- --connect-rate || die "this fleetml-agent has no \`sim --connect-rate\`"
}

# The demo model: `fleetml demo` trains it in Rust; --data-dir keeps the ONNX files it pushed.
demo_model() {
    section "the demo model"
    "$FLEETML" demo --once --devices 2 --requests 10 --data-dir "$WORK/demo" >"$WORK/demo.out" 2>"$WORK/demo.err" ||
        die "fleetml demo: $(tail -n 5 "$WORK/demo.err")"
    MODEL_ONNX=$WORK/demo/machine-state-2.onnx
    [[ -s $MODEL_ONNX ]] || die "the demo wrote no $MODEL_ONNX: $(ls "$WORK/demo")"
    grep -E '^trained ' "$WORK/demo.out" | sed 's/^/    demo: /'
    log "model: $MODEL_ONNX, $(stat -c %s "$MODEL_ONNX") bytes of ONNX (the demo's v2: the MLP with 16 hidden units), sha256 $(sha256sum "$MODEL_ONNX" | cut -c1-16)"
}

# ---------------------------------------------------------------------------------------------
# one run

start_plane() {
    local run_dir=$1
    "$FLEETML" keys generate --out "$run_dir/keys" >/dev/null
    local http_port line
    http_port=$(free_port)
    MQTT_PORT=$(free_port)
    TOKEN=bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT
    API=http://127.0.0.1:$http_port/api/v1
    local broker_args
    if [[ $BROKER == embedded ]]; then
        broker_args=(--mqtt-listen "127.0.0.1:$MQTT_PORT" --mqtt-max-connections "$MQTT_MAX_CONNECTIONS")
    else
        # deploy/mosquitto/mosquitto.conf without persistence, on a free local port.
        cat >"$run_dir/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
message_size_limit 0
persistence false
max_inflight_messages 100
max_queued_messages 10000
max_queued_bytes 0
max_connections -1
log_type error
log_type warning
EOF
        start_bg mosquitto mosquitto -c "$run_dir/mosquitto.conf"
        for _ in $(seq 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null && break
            sleep 0.1
        done
        log "mosquitto (pid ${PID_OF[mosquitto]}) on 127.0.0.1:$MQTT_PORT: $(grep -v '^log_type' "$run_dir/mosquitto.conf" | tail -n +2 | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
        broker_args=(--mqtt-url "$MQTT_URL")
    fi
    start_bg plane "$FLEETML" serve --data-dir "$run_dir/plane" --http "127.0.0.1:$http_port" "${broker_args[@]}" \
        --admin-token "$TOKEN" --signing-key "$run_dir/keys/signing.key"
    line=$(wait_line plane 'fleetml control plane: API http://' 60)
    log "plane (pid ${PID_OF[plane]}): $line"
    grep -m1 -E 'embedded MQTT broker running' "$WORK/plane.err" | sed -E 's/\x1b\[[0-9;]*m//g; s/^.*INFO //; s/^/    broker: /' || true
}

# wait_online N SECONDS: until the plane counts N online devices (the `fleetml_devices_online`
# gauge of /metrics, cheaper to poll than the device list), then checks the list: N online
# devices labelled fleet=bench.
wait_online() {
    local n=$1 seconds=$2 online=0 deadline
    deadline=$((SECONDS + seconds))
    while ((SECONDS < deadline)); do
        online=$(curl -sf "${API%/api/v1}/metrics" | awk '$1 == "fleetml_devices_online" {print $2}' || true)
        if [[ ${online:-0} == "$n" ]]; then
            online=$(api /devices | jq '[.[] | select(.labels.fleet == "bench" and .online)] | length')
            [[ $online == "$n" ]] && return 0
        fi
        kill -0 "${PID_OF[sim]}" 2>/dev/null || die "the sim exited with $online of $n online: $(tail -n 5 "$WORK/sim.err")"
        kill -0 "${PID_OF[plane]}" 2>/dev/null || die "the plane exited with $online of $n online: $(tail -n 5 "$WORK/plane.err")"
        sleep 1
    done
    die "only $online of $n simulated devices online after $seconds s (logs: plane.err, sim.err in $WORK)"
}

policy_json() {
    jq -n '{target: {selector: "fleet=bench"},
            waves: [{size: "1%", bake_seconds: 0}, {size: "10%", bake_seconds: 0},
                    {size: "50%", bake_seconds: 0}, {size: "100%", bake_seconds: 0}],
            gates: [{metric: "install_failure_rate", max: 0.0, min_samples: 1}],
            on_failure: "pause"}'
}

# one_run N RUN: sets ONLINE_MS ROLLOUT_MS FIRST_MS LAST_MS and the byte figures.
one_run() {
    local n=$1 run=$2 run_dir=$WORK/n$1-run$2
    mkdir -p "$run_dir"
    section "N=$n run $run/$RUNS"
    start_plane "$run_dir"
    local sim_started
    sim_started=$(now_ms)
    start_bg sim "$AGENT" sim --count "$n" --id-prefix bench- --mqtt-url "$MQTT_URL" --state-dir "$run_dir/sim" \
        --trusted-key "$run_dir/keys/signing.pub" --label fleet=bench --heartbeat-seconds "$HEARTBEAT_SECONDS" \
        --http 127.0.0.1:0 --connect-rate "$CONNECT_RATE"
    log "sim (pid ${PID_OF[sim]}): $(wait_line sim 'simulated fleet of' "$ONLINE_TIMEOUT")"
    wait_online "$n" "$ONLINE_TIMEOUT"
    local polled_ms
    polled_ms=$(($(now_ms) - sim_started))
    api /devices >"$run_dir/devices-before.json"
    local last_seen_first
    last_seen_first=$(jq '[.[] | select(.labels.fleet == "bench") | .first_seen_ms] | max' "$run_dir/devices-before.json")
    ONLINE_MS=$((last_seen_first - sim_started))
    log "ONLINE N=$n run $run: all $n devices online $(fmt_s "$ONLINE_MS") s after the sim was started (latest first_seen_ms in the plane's records; the 1 s poll saw it at $(fmt_s "$polled_ms") s)"
    sleep 2
    budget_line "BUDGET N=$n run $run plane (idle)" "${PID_OF[plane]}"
    budget_line "BUDGET N=$n run $run sim (idle)" "${PID_OF[sim]}"
    [[ $BROKER == embedded ]] || budget_line "BUDGET N=$n run $run mosquitto (idle)" "${PID_OF[mosquitto]}"

    local version
    version=$(FLEETML_SERVER=${API%/api/v1} FLEETML_TOKEN=$TOKEN "$FLEETML" model push "$MODEL" "$MODEL_ONNX" --description "rollout bench" 2>"$run_dir/push.err") ||
        die "model push: $(cat "$run_dir/push.err")"
    api "/models/$MODEL/versions/$version" >"$run_dir/version.json"
    BUNDLE_BYTES=$(jq '.bundle_bytes' "$run_dir/version.json")
    log "pushed $MODEL@$version: ONNX $(jq '.onnx_bytes' "$run_dir/version.json") bytes, bundle $BUNDLE_BYTES bytes"

    api /status >"$run_dir/status-before.json"
    socket_bytes
    local plane_tx0=$PLANE_TX broker_tx0=$BROKER_TX
    log "broker sockets established: $BROKER_SOCKETS (N agents + the plane's link)"

    local body id
    body=$(jq -n --arg model "$MODEL" --argjson version "$version" --argjson policy "$(policy_json)" '{model: $model, version: $version, policy: $policy}')
    id=$(curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$body" "$API/rollouts" | jq '.id') ||
        die "POST /rollouts refused: $(curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$body" "$API/rollouts")"
    local state=running deadline=$((SECONDS + ROLLOUT_TIMEOUT))
    while ((SECONDS < deadline)); do
        api "/rollouts/$id" >"$run_dir/rollout.json" || die "GET /rollouts/$id"
        state=$(jq -r '.state' "$run_dir/rollout.json")
        [[ $state == running ]] || break
        sleep 1
    done
    [[ $state == completed ]] || die "rollout $id is $state: $(jq -c '{devices_by_state, events: .events[-5:]}' "$run_dir/rollout.json")"
    sleep 1
    api /status >"$run_dir/status-after.json"
    socket_bytes
    local plane_tx1=$PLANE_TX broker_tx1=$BROKER_TX
    api /devices >"$run_dir/devices-after.json"
    budget_line "BUDGET N=$n run $run plane (after)" "${PID_OF[plane]}"
    budget_line "BUDGET N=$n run $run sim (after)" "${PID_OF[sim]}"
    [[ $BROKER == embedded ]] || budget_line "BUDGET N=$n run $run mosquitto (after)" "${PID_OF[mosquitto]}"

    local healthy started completed
    healthy=$(jq '.devices_by_state.healthy // 0' "$run_dir/rollout.json")
    [[ $healthy == "$n" ]] || die "rollout $id completed with $healthy of $n healthy: $(jq -c '.devices_by_state' "$run_dir/rollout.json")"
    started=$(jq '[.events[] | select(.kind == "started") | .at_ms] | first' "$run_dir/rollout.json")
    completed=$(jq '[.events[] | select(.kind == "completed") | .at_ms] | first' "$run_dir/rollout.json")
    ROLLOUT_MS=$((completed - started))
    local waves
    waves=$(jq -r --argjson started "$started" '[.events[] | select(.kind == "gates_passed") | .at_ms] as $at
        | [range(0; $at | length) | ($at[.] - (if . == 0 then $started else $at[. - 1] end))] | map(tostring + " ms") | join(", ")' "$run_dir/rollout.json")
    local stats
    stats=$(jq -r --arg model "$MODEL" --argjson version "$version" --argjson started "$started" '
        [.[] | select(.labels.fleet == "bench") | .slots[] | select(.model == $model)
             | .last_result | select(.version == $version and .ok) | .at_ms - $started] | sort
        | "\(length) \(.[0]) \(.[-1])"' "$run_dir/devices-after.json")
    local n_results
    read -r n_results FIRST_MS LAST_MS <<<"$stats"
    [[ $n_results == "$n" ]] || die "install results for $n_results of $n devices"
    log "ROLLOUT N=$n run $run: rollout $id completed in $(fmt_s "$ROLLOUT_MS") s (completed.at_ms - started.at_ms); first device installed at $(fmt_s "$FIRST_MS") s, last at $(fmt_s "$LAST_MS") s; per wave (started/previous wave's gates_passed -> gates_passed): $waves"
    log "    events: $(jq -r '[.events[] | "\(.kind)@\(.at_ms - ($started))ms"] | join(" ")' --argjson started "$started" "$run_dir/rollout.json")"

    CHUNK_BYTES=$(($(jq '.chunk_bytes_published' "$run_dir/status-after.json") - $(jq '.chunk_bytes_published' "$run_dir/status-before.json")))
    CHUNKS=$(($(jq '.chunks_published' "$run_dir/status-after.json") - $(jq '.chunks_published' "$run_dir/status-before.json")))
    FETCHES=$(($(jq '.fetch_requests' "$run_dir/status-after.json") - $(jq '.fetch_requests' "$run_dir/status-before.json")))
    DESIRED=$(($(jq '.desired_published' "$run_dir/status-after.json") - $(jq '.desired_published' "$run_dir/status-before.json")))
    PLANE_BYTES=$((plane_tx1 - plane_tx0))
    BROKER_BYTES=$((broker_tx1 - broker_tx0))
    log "$(printf 'BYTES N=%d run %d: plane counters: %d chunk bytes in %d chunk publishes (%d fetch requests) = %.1f B/device, bundle %d B = %.3f copies; %d desired states published (%.2f per device)' \
        "$n" "$run" "$CHUNK_BYTES" "$CHUNKS" "$FETCHES" "$(awk -v b="$CHUNK_BYTES" -v n="$n" 'BEGIN {print b / n}')" "$BUNDLE_BYTES" \
        "$(awk -v b="$CHUNK_BYTES" -v s="$BUNDLE_BYTES" 'BEGIN {print b / s}')" "$DESIRED" "$(awk -v d="$DESIRED" -v n="$n" 'BEGIN {print d / n}')")"
    log "$(printf 'BYTES N=%d run %d: TCP (ss bytes_acked, during the rollout): plane -> broker %d B = %.1f B/device; broker -> agents %d B = %.1f B/device' \
        "$n" "$run" "$PLANE_BYTES" "$(awk -v b="$PLANE_BYTES" -v n="$n" 'BEGIN {print b / n}')" "$BROKER_BYTES" "$(awk -v b="$BROKER_BYTES" -v n="$n" 'BEGIN {print b / n}')")"
    local aws_ms=$((n * 60000 / AWS_DEVICES_PER_MINUTE))
    log "ANCHOR N=$n run $run: AWS IoT Jobs at its ceiling of $AWS_DEVICES_PER_MINUTE devices/min: $(fmt_s "$aws_ms") s; ours $(fmt_s "$ROLLOUT_MS") s; $(awk -v a="$aws_ms" -v b="$ROLLOUT_MS" 'BEGIN {printf "%.1f", a / b}')x faster ($(awk -v n="$n" -v ms="$ROLLOUT_MS" 'BEGIN {printf "%.0f", n / (ms / 60000)}') devices/min)"
    stop_bg sim
    stop_bg plane
    stop_bg mosquitto
    rm -rf "$run_dir/sim"
}

# ---------------------------------------------------------------------------------------------

main() {
    [[ $BROKER == embedded || $BROKER == mosquitto ]] || die "BROKER must be embedded or mosquitto"
    for tool in curl jq python3 ss; do
        command -v "$tool" >/dev/null || die "$tool not found"
    done
    machine_info
    build
    demo_model
    local n run
    for n in $COUNTS; do
        local online=() rollout=() first=() last=() chunk=() plane=() broker=() desired=()
        for run in $(seq "$RUNS"); do
            one_run "$n" "$run"
            online+=("$ONLINE_MS"); rollout+=("$ROLLOUT_MS"); first+=("$FIRST_MS"); last+=("$LAST_MS")
            chunk+=("$(awk -v b="$CHUNK_BYTES" -v n="$n" 'BEGIN {printf "%.1f", b / n}')")
            plane+=("$(awk -v b="$PLANE_BYTES" -v n="$n" 'BEGIN {printf "%.1f", b / n}')")
            broker+=("$(awk -v b="$BROKER_BYTES" -v n="$n" 'BEGIN {printf "%.1f", b / n}')")
            desired+=("$DESIRED")
        done
        local rollout_median aws_ms
        rollout_median=$(median "${rollout[@]}")
        aws_ms=$((n * 60000 / AWS_DEVICES_PER_MINUTE))
        section "SUMMARY N=$n ($RUNS runs; median, min-max)"
        log "SUMMARY N=$n all online after sim start: $(fmt_s "$(median "${online[@]}")") s ($(spread "${online[@]}") ms)"
        log "SUMMARY N=$n rollout started -> completed: $(fmt_s "$rollout_median") s ($(spread "${rollout[@]}") ms)"
        log "SUMMARY N=$n first device installed: $(fmt_s "$(median "${first[@]}")") s ($(spread "${first[@]}") ms); last: $(fmt_s "$(median "${last[@]}")") s ($(spread "${last[@]}") ms)"
        log "SUMMARY N=$n chunk bytes published per device: $(median "${chunk[@]}") ($(spread "${chunk[@]}")); bundle $BUNDLE_BYTES B; desired states published: $(median "${desired[@]}") ($(spread "${desired[@]}"))"
        log "SUMMARY N=$n TCP bytes per device: plane -> broker $(median "${plane[@]}") ($(spread "${plane[@]}")); broker -> agents $(median "${broker[@]}") ($(spread "${broker[@]}"))"
        log "SUMMARY N=$n AWS IoT Jobs anchor: $(fmt_s "$aws_ms") s at $AWS_DEVICES_PER_MINUTE devices/min; ours $(fmt_s "$rollout_median") s: $(awk -v a="$aws_ms" -v b="$rollout_median" 'BEGIN {printf "%.1f", a / b}')x faster"
    done
    section "done"
}

main "$@"
