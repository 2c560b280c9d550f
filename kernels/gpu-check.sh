#!/usr/bin/env bash
# GPU check of nereid-kernels and of the server's cuda backend, for the GPU machine: it builds
# nothing there (no Rust needed). kernels/build-gpu-check.sh builds the release executables here
# and stages them with this script in kernels/.gpu-bundle/; carry that folder and run
#
#     bash kernels/.gpu-bundle/gpu-check.sh [kernels] [server]     (default: both parts)
#
# Steps (each under a timeout; all together at most 9 minutes):
#   1. find NVRTC and cuBLAS (CUDA toolkit, or PyTorch's nvidia-* wheels) and export
#      NEREID_CUDA_LIB_DIRS / LD_LIBRARY_PATH;
#   kernels:
#   2. unit tests (CPU references), NVML sampling (utilisation/memory for the nv_gpu_* metrics),
#      NVRTC compile check, every GPU kernel against its CPU reference on fresh random inputs
#      (the seed is printed; NEREID_TEST_SEED replays), cuBLASLt epilogue, streams and pinned
#      buffers;
#   3. gpu_bench, then torch_mlp.py, which prints the one results table (kernels' bandwidth vs
#      the device-to-device copy, fused vs unfused epilogue vs cuBLASLt's vs the bare cuBLAS GEMM,
#      MLP forward vs PyTorch eager with the same weights);
#   server:
#   4. server/tests/gpu_backend.rs in process: KIND_GPU / KIND_AUTO placement, the cuda
#      backend against the CPU backend for several architectures over HTTP and gRPC, and an
#      ensemble of two GPU models that passes its intermediate tensor in device memory;
#   5. end to end: the release `nereid` binary serves a repository with iris_classifier (CPU) and
#      iris_gpu (KIND_GPU, same weights), mlp_cpu and mlp_gpu (256-1024-1024-16, same weights);
#      gpu_models.py compares each GPU model with its CPU twin over HTTP (urllib) and prints the
#      nv_gpu_* metrics, then the gpu_backend executable does the same over gRPC (tonic) and
#      prints a latency/throughput line per model ($OUT/server-bench.txt).
#      NEREID_GPU_CHECK_KIND=KIND_CPU makes the "GPU" models CPU ones: a dry run of the harness
#      on a machine without a GPU.
# Logs: $OUT/gpu-check.log (the whole run), $OUT/table.txt, $OUT/bench.json,
# $OUT/server-bench.txt, $OUT/nereid.log when OUT is set, else a fresh /tmp directory. Without a
# GPU every GPU step skips, and the script says so, exit 0.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-$(mktemp -d /tmp/nereid-gpu-check.XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/nereid-gpu-work.XXXXXX)
exec > >(tee -a "$out/gpu-check.log") 2>&1

t_start=$(date +%s)
budget=540 # seconds for all steps: under the device tool's 10 minutes per command
failures=()
run_kernels=1
run_server=1
if [ "$#" -gt 0 ]; then
    run_kernels=0
    run_server=0
    for part in "$@"; do
        case "$part" in
            kernels) run_kernels=1 ;;
            server) run_server=1 ;;
            *) echo "unknown part '$part' (kernels, server)"; exit 2 ;;
        esac
    done
fi

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a timeout (never past the budget),
# logs to $work/NAME.log, records a failure on a non-zero exit.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget - ($(date +%s) - t_start)))
    if [ "$left" -lt 10 ]; then
        echo "=== $name: not run, time budget spent"
        failures+=("$name (not run: time budget spent)")
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s)"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$work/$name.log"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $(($(date +%s) - t0))s"
    [ "$rc" -eq 0 ] || failures+=("$name (exit $rc)")
    return "$rc"
}

echo "nereid-kernels GPU check: bundle $here, logs $out"
has_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    has_gpu=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
    echo "no GPU found (nvidia-smi missing or lists no device): the GPU steps will skip"
fi

# 1. NVRTC and cuBLAS: the CUDA toolkit first, then the nvidia-* wheels PyTorch brings.
lib_dirs=()
add_dir() {
    local d
    for d in "${lib_dirs[@]+"${lib_dirs[@]}"}"; do [ "$d" = "$1" ] && return 0; done
    lib_dirs+=("$1")
}
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    if compgen -G "$d/libnvrtc.so*" >/dev/null || compgen -G "$d/libcublas.so*" >/dev/null; then
        add_dir "$(cd "$d" && pwd -P)"
    fi
done
if command -v python3 >/dev/null 2>&1; then
    while IFS= read -r d; do [ -n "$d" ] && add_dir "$d"; done < <(python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = []
try:
    roots += site.getsitepackages()
except Exception:
    pass
roots += [p for p in sys.path if p.endswith("-packages")]
seen = set()
for r in roots:
    for lib in sorted(glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)):
        name = os.path.basename(lib)
        if name.startswith(("libnvrtc.so", "libnvrtc-builtins.so", "libcublas.so", "libcublasLt.so")):
            d = os.path.dirname(os.path.realpath(lib))
            if d not in seen:
                seen.add(d)
                print(d)
PY
    )
fi
if [ "${#lib_dirs[@]}" -gt 0 ]; then
    joined=$(IFS=:; echo "${lib_dirs[*]}")
    export NEREID_CUDA_LIB_DIRS="$joined${NEREID_CUDA_LIB_DIRS:+:$NEREID_CUDA_LIB_DIRS}"
    export LD_LIBRARY_PATH="$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "CUDA library directories: $joined"
else
    echo "no NVRTC/cuBLAS directory found outside the loader path"
fi

# 2. Tests. Executables built by build-gpu-check.sh; --nocapture shows seeds and skip lines.
kernel_steps() {
    for exe in unit nvrtc_compile gpu gpu_bench; do
        if [ ! -x "$here/$exe" ]; then
            echo "missing executable $here/$exe: run kernels/build-gpu-check.sh first"
            failures+=("bundle: $exe missing")
        fi
    done
    [ -x "$here/unit" ] && step unit-tests 30 "$here/unit" --test-threads=2
    if [ -x "$here/unit" ]; then
        step nvml 20 "$here/unit" nvml --nocapture
        if [ "$has_gpu" = 1 ] && grep -q '^SKIPPED: NVML' "$work/nvml.log"; then
            failures+=("nvml: nvidia-smi works but NVML did not load (see the SKIPPED reason)")
        fi
    fi
    [ -x "$here/nvrtc_compile" ] && step nvrtc-compile 60 "$here/nvrtc_compile" --nocapture
    if [ -x "$here/gpu" ]; then
        step gpu-tests 180 "$here/gpu" --nocapture --test-threads=4
        if [ "$has_gpu" = 1 ] && grep -q '^SKIPPED: GPU kernel tests' "$work/gpu-tests.log"; then
            failures+=("gpu-tests: a GPU is present but the tests skipped (see the SKIPPED reason)")
        fi
    fi

    # 3. Benchmark, then the PyTorch comparison, which prints the table.
    if [ -x "$here/gpu_bench" ]; then
        step bench 120 "$here/gpu_bench" --out "$work"
        if [ "$has_gpu" = 1 ] && grep -q '^SKIPPED: GPU benchmark' "$work/bench.log"; then
            failures+=("bench: a GPU is present but the benchmark skipped")
        fi
    fi
    if [ -f "$work/bench.json" ]; then
        if command -v python3 >/dev/null 2>&1; then
            step torch-compare 100 python3 "$here/torch_mlp.py" "$work"
        else
            echo "python3 not found: table without PyTorch"
            cat "$work/bench.txt"
        fi
        cp "$work/bench.json" "$out/" 2>/dev/null
        cp "$work/table.txt" "$out/" 2>/dev/null || cp "$work/bench.txt" "$out/table.txt" 2>/dev/null
    fi
}

# 4-5. The cuda backend through the server.
server_steps() {
    local exe
    for exe in nereid gpu_backend; do
        if [ ! -f "$here/$exe.gz" ]; then
            echo "missing $here/$exe.gz: run kernels/build-gpu-check.sh first"
            failures+=("bundle: $exe.gz missing")
            return 1
        fi
        gzip -dc "$here/$exe.gz" >"$work/$exe" && chmod +x "$work/$exe"
    done
    export NEREID_MODEL_REPO="$here/model-repo"
    step server-gpu-tests 150 "$work/gpu_backend" --nocapture --test-threads=1 \
        kind_gpu_and_kind_auto gpu_outputs_match_cpu gpu_ensemble_keeps_tensors_on_the_device
    if [ "$has_gpu" = 1 ] && grep -q '^SKIPPED: GPU backend tests' "$work/server-gpu-tests.log"; then
        failures+=("server-gpu-tests: a GPU is present but the tests skipped (see the SKIPPED reason)")
    fi
    if [ "$has_gpu" != 1 ] && [ "${NEREID_GPU_CHECK_KIND:-}" != KIND_CPU ]; then
        echo "=== server end to end: skipped, no GPU (NEREID_GPU_CHECK_KIND=KIND_CPU runs it anyway)"
        return 0
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        echo "=== server end to end: skipped, python3 not found (it writes the model repository)"
        failures+=("server end to end: python3 missing")
        return 1
    fi
    local repo="$work/server-repo" ports="$work/ports.json" pid http grpc metrics i
    step server-repo 60 python3 "$here/gpu_models.py" write "$here/model-repo" "$repo" \
        "${NEREID_GPU_CHECK_KIND:-KIND_GPU}" || return 1
    "$work/nereid" serve --model-repository "$repo" --host 127.0.0.1 --http-port 0 \
        --grpc-port 0 --metrics-port 0 --port-file "$ports" >"$out/nereid.log" 2>&1 &
    pid=$!
    for i in $(seq 1 120); do
        [ -s "$ports" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if [ ! -s "$ports" ]; then
        echo "=== server end to end: nereid did not start; its log:"
        tail -n 40 "$out/nereid.log"
        failures+=("server end to end: nereid did not start")
        kill "$pid" 2>/dev/null
        return 1
    fi
    read -r http grpc metrics < <(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print(p["http"], p["grpc"], p["metrics"])' "$ports")
    echo "nereid (pid $pid) serves HTTP :$http, gRPC :$grpc, metrics :$metrics"
    # The listeners are up once every model has loaded or failed; strict readiness says which.
    if ! python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' \
        "http://127.0.0.1:$http/v2/health/ready" 2>/dev/null; then
        echo "=== server end to end: not ready; repository index:"
        python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b"", method="POST"), timeout=10).read().decode())' \
            "http://127.0.0.1:$http/v2/repository/index"
        tail -n 20 "$out/nereid.log"
        failures+=("server end to end: a model did not load (see the index above)")
    else
        local pairs="iris_gpu=iris_classifier,mlp_gpu=mlp_cpu"
        step server-http 60 python3 "$here/gpu_models.py" check-http "127.0.0.1:$http" \
            "127.0.0.1:$metrics" "$pairs"
        step server-grpc 120 env NEREID_GPU_CHECK_HTTP="127.0.0.1:$http" \
            NEREID_GPU_CHECK_GRPC="127.0.0.1:$grpc" NEREID_GPU_CHECK_PAIRS="$pairs" \
            NEREID_GPU_CHECK_REPORT="$out/server-bench.txt" \
            "$work/gpu_backend" --nocapture --test-threads=1 external_server_gpu_matches_cpu
        if grep -q '^SKIPPED: external server check' "$work/server-grpc.log"; then
            failures+=("server-grpc: the external check skipped")
        fi
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    rm -rf "$repo" "$work/nereid" "$work/gpu_backend"
    return 0
}

[ "$run_kernels" = 1 ] && kernel_steps
[ "$run_server" = 1 ] && server_steps

echo
echo "gpu-check finished in $(($(date +%s) - t_start))s"
if [ "${#failures[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failures[@]}"
    exit 1
fi
if [ "$has_gpu" = 1 ]; then
    echo "gpu-check: all steps passed"
else
    echo "gpu-check: no GPU here, device checks skipped (CPU tests and NVRTC compile ran)"
fi
