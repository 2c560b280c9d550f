# Shared helpers for the benchmark scripts (sourced, not run).
#
# Every server is started here on 127.0.0.1, pinned to core 0; every load generator run is
# pinned to core 1 (BENCHMARKING.md). Servers are stopped by the PIDs recorded when they
# started. Run the scripts under the workspace's cargo lock so that no compile runs during a
# measurement:  flock /tmp/nereid-cargo.lock bash bench/frontend.sh
# (the scripts build with cargo themselves and must not take the lock again).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release"
SERVER_CORE="${SERVER_CORE:-0}"
LOAD_CORE="${LOAD_CORE:-1}"
# Concurrency sweep and window settings shared by every comparison.
LEVELS="${LEVELS:-1,2,4,8,16,32,64}"
ROUNDS="${ROUNDS:-3}"
WARMUP_MS="${WARMUP_MS:-500}"
WINDOW_MS="${WINDOW_MS:-1000}"
MAX_WINDOWS="${MAX_WINDOWS:-6}"
STABILITY="${STABILITY:-10}"
MLSERVER_VERSION="1.7.1"
MLSERVER_VENV="$ROOT/bench/.venv-mlserver"

STARTED_PIDS=()
WORK="$(mktemp -d)"

cleanup() {
    for pid in "${STARTED_PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]:-}"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

results_dir() {
    local name="$1"
    local dir="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-$name"
    mkdir -p "$dir"
    echo "$dir"
}

machine_info() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
}

build_release() {
    (cd "$ROOT" && cargo build --release -q -p nereid-server -p nereid-loadtest)
}

# Waits until FILE exists (a port file), for at most 30 s.
wait_for_file() {
    local file="$1"
    for _ in $(seq 300); do
        [ -s "$file" ] && return 0
        sleep 0.1
    done
    echo "timed out waiting for $file" >&2
    return 1
}

# Waits until URL answers 2xx, for at most $2 seconds (default 60).
wait_for_url() {
    local url="$1" limit="${2:-60}"
    for _ in $(seq $((limit * 10))); do
        curl -sf -o /dev/null "$url" && return 0
        sleep 0.1
    done
    echo "timed out waiting for $url" >&2
    return 1
}

port_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

# serve_repository REPO READY_PATH [serve flags...]: starts Nereid on REPO, pinned to the server
# core (or under the command in NEREID_WRAPPER, e.g. valgrind), and waits for READY_PATH to answer
# (READY_WAIT_S seconds, default 60). Sets NEREID_PID, NEREID_HTTP, NEREID_GRPC, NEREID_METRICS.
serve_repository() {
    local repo="$1" ready="$2" launcher=(taskset -c "$SERVER_CORE")
    shift 2
    if [ -n "${NEREID_WRAPPER:-}" ]; then read -ra launcher <<< "$NEREID_WRAPPER"; fi
    NEREID_LOG=warn "${launcher[@]}" "$BIN/nereid" serve \
        --model-repository "$repo" --host 127.0.0.1 \
        --http-port 0 --grpc-port 0 --metrics-port 0 \
        --port-file "$WORK/nereid.ports" "$@" > "$WORK/nereid.log" 2>&1 &
    NEREID_PID=$!
    STARTED_PIDS+=("$NEREID_PID")
    wait_for_file "$WORK/nereid.ports"
    NEREID_HTTP="127.0.0.1:$(port_of "$WORK/nereid.ports" http)"
    NEREID_GRPC="127.0.0.1:$(port_of "$WORK/nereid.ports" grpc)"
    NEREID_METRICS="127.0.0.1:$(port_of "$WORK/nereid.ports" metrics)"
    wait_for_url "http://$NEREID_HTTP$ready" "${READY_WAIT_S:-60}"
}

# Starts Nereid on a copy of model-repo/identity_fp32 (see serve_repository).
start_nereid() {
    local repo="$WORK/nereid-repo"
    mkdir -p "$repo"
    cp -r "$ROOT/model-repo/identity_fp32" "$repo/"
    serve_repository "$repo" /v2/models/identity_fp32/ready
}

# Starts the canned-response echo server; sets ECHO_PID, ECHO_HTTP, ECHO_GRPC.
start_echo() {
    taskset -c "$SERVER_CORE" "$BIN/echo-server" --host 127.0.0.1 \
        --port-file "$WORK/echo.ports" > "$WORK/echo.log" 2>&1 &
    ECHO_PID=$!
    STARTED_PIDS+=("$ECHO_PID")
    wait_for_file "$WORK/echo.ports"
    ECHO_HTTP="127.0.0.1:$(port_of "$WORK/echo.ports" http)"
    ECHO_GRPC="127.0.0.1:$(port_of "$WORK/echo.ports" grpc)"
    wait_for_url "http://$ECHO_HTTP/v2/health/ready"
}

# Installs MLServer into its own virtualenv once (PyPI, pinned version).
install_mlserver() {
    if [ -x "$MLSERVER_VENV/bin/mlserver" ] \
        && "$MLSERVER_VENV/bin/python" -c "import mlserver, sys; sys.exit(mlserver.__version__ != '$MLSERVER_VERSION')" 2>/dev/null; then
        return 0
    fi
    python3 -m venv "$MLSERVER_VENV"
    "$MLSERVER_VENV/bin/pip" install -q --disable-pip-version-check "mlserver==$MLSERVER_VERSION"
}

# A free loopback TCP port (MLServer takes fixed ports).
free_port() {
    python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1]); s.close()"
}

# Starts MLServer with bench/mlserver; sets MLSERVER_PID, MLSERVER_HTTP, MLSERVER_GRPC.
# MLSERVER_WORKERS (default 0) is MLServer's parallel_workers: 0 runs inference in the server
# process, which is MLServer's fastest setting for a trivial model on one core (see
# BENCHMARKS.md).
start_mlserver() {
    local http grpc metrics
    http="$(free_port)"
    grpc="$(free_port)"
    metrics="$(free_port)"
    cp -r "$ROOT/bench/mlserver" "$WORK/mlserver"
    (cd "$WORK/mlserver" && \
        MLSERVER_HTTP_PORT="$http" MLSERVER_GRPC_PORT="$grpc" MLSERVER_METRICS_PORT="$metrics" \
        MLSERVER_PARALLEL_WORKERS="${MLSERVER_WORKERS:-0}" \
        exec taskset -c "$SERVER_CORE" "$MLSERVER_VENV/bin/mlserver" start . > "$WORK/mlserver.log" 2>&1) &
    MLSERVER_PID=$!
    STARTED_PIDS+=("$MLSERVER_PID")
    MLSERVER_HTTP="127.0.0.1:$http"
    MLSERVER_GRPC="127.0.0.1:$grpc"
    if ! wait_for_url "http://$MLSERVER_HTTP/v2/models/identity_fp32/ready" 120; then
        tail -n 30 "$WORK/mlserver.log" >&2
        return 1
    fi
}

# load LABEL URL PROTOCOL FORMAT SERVER_PID CSV [extra flags...]: one closed-loop sweep.
load() {
    local label="$1" url="$2" protocol="$3" format="$4" pid="$5" csv="$6"
    shift 6
    echo "== $label ($protocol $format at $url)"
    taskset -c "$LOAD_CORE" "$BIN/nereid-loadtest" --threads 1 \
        --url "http://$url" --protocol "$protocol" --format "$format" -m identity_fp32 \
        --concurrency "$LEVELS" --warmup-ms "$WARMUP_MS" --window-ms "$WINDOW_MS" \
        --max-windows "$MAX_WINDOWS" --stability-percent "$STABILITY" \
        --max-duration-s 900 --request-timeout-ms 10000 \
        --server-pid "$pid" --label "$label" --csv "$csv" \
        --json "$(dirname "$csv")/$(echo "$label" | tr '/' '_').json" "$@"
}
