#!/usr/bin/env bash
# bench/mlflow/run.sh: the official MLflow Python client against fleetml's MLflow-compatible
# tracking API and against the stock MLflow tracking server, side by side in one run.
#
# Servers, each started fresh (new temporary folder, new SQLite database, free port) for every pass:
#   fleetml          fleetml serve (release build), SQLite store in --data-dir
#   mlflow-default   mlflow server --backend-store-uri sqlite:///... (its default mode: uvicorn,
#                    4 workers in 3.17)
#   mlflow-gunicorn  the same with --gunicorn-opts "--workers 2" --workers 2 (mlflow 3.17 puts its
#                    own `-w <--workers, default 4>` after the gunicorn opts, so "--workers 2" in
#                    --gunicorn-opts alone would be overridden and give 4 workers)
#   mlflow-uvicorn-1w  diagnostic: the default mode with --workers 1. With more than one worker
#                    uvicorn binds the listening socket itself (proto 0) and Python 3.11's asyncio
#                    then skips TCP_NODELAY on accepted sockets (it checks proto == IPPROTO_TCP);
#                    the response goes out as two writes (headers, body), so every request after
#                    the first on a keep-alive connection waits ~40 ms for the client's delayed
#                    ACK. One worker lets asyncio bind (proto 6) and set TCP_NODELAY.
# Client: /work/shared/peers/mlflow_client_bench.py (unchanged, run through bench/mlflow/client.py,
# which only adds the bearer token to the script's raw `requests` calls; see there) with the
# mlflow-skinny venv. Each server gets a warm-up (40 requests) and then settle.py waits until its
# process tree is idle (mlflow starts a job consumer 20-40 s after it answers HTTP). ROUNDS
# rounds; the server order rotates each round. measure.py annotates every
# JSON line with the CPU of the server's process tree and of the client while that test ran.
# Results: bench/results/mlflow-<date>.jsonl (replaced), then report.py prints markdown tables.
#
# usage: bash bench/mlflow/run.sh
# environment (defaults):
#   N_FLEETML=3000 N_DEFAULT=200 N_GUNICORN=600 N_UVICORN1W=600: the peer script's N per server
#   (N log_metric calls fluent and client, N/4 log_batch 10, N/10 log_batch 100, N/40 log_batch
#   1000, N/4 raw keep-alive POSTs, N/4 new-connection POSTs), chosen so each pass takes ~10-30 s
#   here. The figures are rates, so a different N per server does not bias them (N is in each
#   JSON line).
#   ROUNDS=3  SERVERS="fleetml mlflow-default mlflow-gunicorn mlflow-uvicorn-1w"
#   WORK_BASE=/tmp (where the servers' databases live; /dev/shm takes fsync out of the picture)
#   CARGO_TARGET_DIR=/work/bench-target  FLEETML=$CARGO_TARGET_DIR/release/fleetml
#   BUILD=0 (1: build fleetml first: cargo build --release -p fleetml-plane --bin fleetml)
#   SOURCE=commit (with BUILD=1: build a clean `git archive` of COMMIT extracted in
#   BENCH_SRC_DIR/<sha>, so uncommitted edits in the work tree are not measured; SOURCE=worktree
#   builds the work tree as it is)  COMMIT=HEAD  BENCH_SRC_DIR=/work/bench-src-mlflow
#   The build writes what it built to $CARGO_TARGET_DIR/mlflow-bench-build-source.txt, which the
#   header below prints.
#   CLIENT_PYTHON=/work/venv-mlflow/bin/python  MLFLOW_SERVER=/work/venv-mlflow-server/bin/mlflow
#   PEER=/work/shared/peers/mlflow_client_bench.py  TOKEN=bench-token-0123456789
#   RESULTS=bench/results/mlflow-$(date +%F).jsonl  KEEP_WORK=0 (1: keep server logs and databases)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-/work/bench-target}
FLEETML=${FLEETML:-$TARGET/release/fleetml}
BUILD=${BUILD:-0}
SOURCE=${SOURCE:-commit}
COMMIT=${COMMIT:-HEAD}
BENCH_SRC_DIR=${BENCH_SRC_DIR:-/work/bench-src-mlflow}
STAMP=$TARGET/mlflow-bench-build-source.txt
N_FLEETML=${N_FLEETML:-3000}
N_DEFAULT=${N_DEFAULT:-200}
N_GUNICORN=${N_GUNICORN:-600}
N_UVICORN1W=${N_UVICORN1W:-600}
ROUNDS=${ROUNDS:-3}
SERVERS=(${SERVERS:-fleetml mlflow-default mlflow-gunicorn mlflow-uvicorn-1w})
WORK_BASE=${WORK_BASE:-/tmp}
CLIENT_PYTHON=${CLIENT_PYTHON:-/work/venv-mlflow/bin/python}
MLFLOW_SERVER=${MLFLOW_SERVER:-/work/venv-mlflow-server/bin/mlflow}
PEER=${PEER:-/work/shared/peers/mlflow_client_bench.py}
TOKEN=${TOKEN:-bench-token-0123456789}
RESULTS=${RESULTS:-$ROOT/bench/results/mlflow-$(date +%F).jsonl}
KEEP_WORK=${KEEP_WORK:-0}

if [[ $BUILD == 1 ]]; then
    if [[ $SOURCE == commit ]]; then
        sha=$(git -C "$ROOT" rev-parse --short "$COMMIT")
        src=$BENCH_SRC_DIR/$sha
        if [[ ! -d $src ]]; then
            rm -rf "$src.partial" && mkdir -p "$src.partial"
            git -C "$ROOT" archive "$sha" | tar -x -C "$src.partial"
            mv "$src.partial" "$src"
        fi
        description="commit $sha (clean git archive in $src)"
    else
        src=$ROOT
        description="work tree $ROOT at $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo ' + uncommitted edits')"
    fi
    echo "building fleetml from $description"
    (cd "$src" && CARGO_TARGET_DIR=$TARGET cargo build --release -p fleetml-plane --bin fleetml)
    echo "$description, built $(date -Is)" >"$STAMP"
fi
[[ -x $FLEETML ]] || { echo "no fleetml binary at $FLEETML (BUILD=1 builds it)" >&2; exit 1; }

# What built the binary: the newest stamp (this script's or bench/spine.sh's, which shares the
# target dir) written after the binary; otherwise unknown.
source_of() {
    local stamp best=""
    for stamp in "$TARGET/mlflow-bench-build-source.txt" "$TARGET/spine-build-source.txt"; do
        [[ -f $stamp && ! $stamp -ot $1 ]] || continue
        [[ -z $best || $stamp -nt $best ]] && best=$stamp
    done
    if [[ -n $best ]]; then sed 's/^[0-9a-f]\{40\}\t//' "$best"; else echo "source unknown (no build stamp newer than the binary)"; fi
}
FLEETML_SOURCE=$(source_of "$FLEETML")

WORK=$(mktemp -d "$WORK_BASE/mlflow-bench.XXXXXX")
# The target dir is shared (bench/spine.sh builds there too): run a private copy, so a rebuild
# during the run cannot swap the binary between rounds.
cp "$FLEETML" "$WORK/fleetml"
FLEETML_ORIG=$FLEETML
FLEETML=$WORK/fleetml
SERVER_PIDS=()
cleanup() {
    stop_server || true
    if [[ $KEEP_WORK == 1 ]]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Every pid under $1 (itself included).
tree_pids() {
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1]); kids = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            s = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        kids.setdefault(int(s[s.rindex(")") + 2:].split()[1]), []).append(int(p))
out, todo = [], [root]
while todo:
    p = todo.pop(); out.append(p); todo.extend(kids.get(p, []))
print(" ".join(map(str, out)))
PY
}

# start_server KIND DIR PORT: sets SERVER_PID
start_server() {
    local kind=$1 dir=$2 port=$3 log=$2/server.log
    case $kind in
        fleetml)
            "$FLEETML" serve --data-dir "$dir/data" --http "127.0.0.1:$port" --mqtt-listen 127.0.0.1:0 \
                --admin-token "$TOKEN" >"$log" 2>&1 &
            ;;
        mlflow-default)
            "$MLFLOW_SERVER" server --backend-store-uri "sqlite:///$dir/mlflow.db" --default-artifact-root "$dir/art" \
                --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
            ;;
        mlflow-gunicorn)
            "$MLFLOW_SERVER" server --backend-store-uri "sqlite:///$dir/mlflow.db" --default-artifact-root "$dir/art" \
                --host 127.0.0.1 --port "$port" --gunicorn-opts "--workers 2" --workers 2 >"$log" 2>&1 &
            ;;
        mlflow-uvicorn-1w)
            "$MLFLOW_SERVER" server --backend-store-uri "sqlite:///$dir/mlflow.db" --default-artifact-root "$dir/art" \
                --host 127.0.0.1 --port "$port" --workers 1 >"$log" 2>&1 &
            ;;
        *) echo "unknown server $kind" >&2; exit 1 ;;
    esac
    SERVER_PID=$!
    local deadline=$((SECONDS + 90))
    until curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" \
        "http://127.0.0.1:$port/api/2.0/mlflow/experiments/search?max_results=1"; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null || ((SECONDS > deadline)); then
            echo "$kind did not come up on port $port; log:" >&2; tail -30 "$log" >&2; exit 1
        fi
        sleep 0.2
    done
    if [[ $kind == fleetml ]]; then
        grep -q "fleetml control plane: API" "$log" || { echo "fleetml ready banner missing" >&2; cat "$log" >&2; }
    fi
    # Warm-up, the same for every server: 40 requests on new connections (reach every worker once
    # or more, so lazy per-worker initialisation is not timed).
    for _ in $(seq 40); do
        curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" \
            "http://127.0.0.1:$port/api/2.0/mlflow/experiments/search?max_results=1"
    done
    SERVER_PIDS=($(tree_pids "$SERVER_PID"))
    # Wait for background start-up work (mlflow's job consumer) to finish; see settle.py.
    SETTLED=$(python3 "$HERE/settle.py" "$SERVER_PID" 5 2 90)
    SERVER_PIDS=($(tree_pids "$SERVER_PID"))
}

stop_server() {
    ((${#SERVER_PIDS[@]})) || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
        local alive=0
        for p in "${SERVER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.2
    done
    for p in "${SERVER_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PIDS=()
}

echo "== MLflow client vs fleetml and stock MLflow server"
echo "date:      $(date -Is)"
echo "commit:    HEAD $(git -C "$ROOT" rev-parse --short HEAD)"
echo "fleetml:   $FLEETML_ORIG (binary dated $(date -r "$FLEETML_ORIG" -Is), sha256 $(sha256sum "$FLEETML" | cut -c1-16)), from $FLEETML_SOURCE"
echo "cpu:       $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "kernel:    $(uname -r)"
echo "loadavg:   $(cut -d' ' -f1-3 /proc/loadavg) (at start)"
echo "client:    $("$CLIENT_PYTHON" -c 'import mlflow, requests, sys; print(f"mlflow-skinny {mlflow.__version__}, requests {requests.__version__}, python {sys.version.split()[0]}")')"
echo "server:    $("$MLFLOW_SERVER" --version 2>/dev/null | tail -1), gunicorn $("${MLFLOW_SERVER%/*}/python" -c 'import gunicorn; print(gunicorn.__version__)'), uvicorn $("${MLFLOW_SERVER%/*}/python" -c 'import uvicorn; print(uvicorn.__version__)')"
echo "N: fleetml $N_FLEETML, mlflow-default $N_DEFAULT, mlflow-gunicorn $N_GUNICORN, mlflow-uvicorn-1w $N_UVICORN1W; ROUNDS=$ROUNDS servers: ${SERVERS[*]}"
echo "results:   $RESULTS"
echo "work:      $WORK ($(df -T "$WORK" | awk 'NR==2 {print $2}'))"
mkdir -p "$(dirname "$RESULTS")"
: >"$RESULTS"

export MLFLOW_TRACKING_TOKEN=$TOKEN
failures=0
count=${#SERVERS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    echo "-- round $round/$ROUNDS (load $(cut -d' ' -f1-3 /proc/loadavg))"
    for ((i = 0; i < count; i++)); do
        kind=${SERVERS[$(((i + round - 1) % count))]}
        dir=$WORK/r$round-$kind
        mkdir -p "$dir"
        port=$(free_port)
        case $kind in
            fleetml) n=$N_FLEETML ;; mlflow-default) n=$N_DEFAULT ;;
            mlflow-gunicorn) n=$N_GUNICORN ;; mlflow-uvicorn-1w) n=$N_UVICORN1W ;;
        esac
        start_server "$kind" "$dir" "$port"
        echo "  $kind up on :$port, pids ${SERVER_PIDS[*]} (${#SERVER_PIDS[@]} processes), $SETTLED"
        t0=$SECONDS
        MLFLOW_TRACKING_URI=http://127.0.0.1:$port \
            python3 "$HERE/measure.py" --server-pid "$SERVER_PID" --tag "$kind" --round "$round" --n "$n" \
            --uri "http://127.0.0.1:$port" --out "$RESULTS" --client-python "$CLIENT_PYTHON" --peer "$PEER" \
            --log "$dir/client.log" --probe-dir "$dir" || failures=$((failures + 1))
        echo "  $kind pass took $((SECONDS - t0)) s"
        stop_server
        # Anything odd the server or the client said.
        if grep -Ein 'traceback|error|panic|warn|exception' "$dir/server.log" "$dir/client.log" >"$dir/odd.txt"; then
            echo "  $kind: $(wc -l <"$dir/odd.txt") log lines mention error/warn/exception; first ones:"
            head -5 "$dir/odd.txt" | cut -c1-300 | sed 's/^/    /'
        fi
    done
done
echo "loadavg:   $(cut -d' ' -f1-3 /proc/loadavg) (at end)"
echo
python3 "$HERE/report.py" "$RESULTS"
if ((failures)); then echo; echo "!! $failures pass(es) failed; rerun with KEEP_WORK=1 to keep the logs"; exit 1; fi
