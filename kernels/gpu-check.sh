#!/usr/bin/env bash
# GPU check of nereid-kernels, for the GPU machine: it builds nothing there (no Rust needed).
# kernels/build-gpu-check.sh builds the release test executables and the benchmark here and
# stages them, this script and ci/torch_mlp.py in kernels/.gpu-bundle/; carry that folder and run
#
#     bash kernels/.gpu-bundle/gpu-check.sh
#
# Steps (each under a timeout; all together well under 8 minutes):
#   1. find NVRTC and cuBLAS (CUDA toolkit, or PyTorch's nvidia-* wheels) and export
#      NEREID_CUDA_LIB_DIRS / LD_LIBRARY_PATH;
#   2. unit tests (CPU references), NVRTC compile check, every GPU kernel against its CPU
#      reference on fresh random inputs (the seed is printed; NEREID_TEST_SEED replays);
#   3. gpu_bench, then torch_mlp.py, which prints the one results table (kernels' bandwidth vs
#      the device-to-device copy, fused vs unfused epilogue vs the bare cuBLAS GEMM, MLP
#      forward vs PyTorch eager with the same weights).
# Logs: $OUT/gpu-check.log (the whole run), $OUT/table.txt, $OUT/bench.json when OUT is set,
# else a fresh /tmp directory. Without a GPU every step skips, and the script says so, exit 0.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-$(mktemp -d /tmp/nereid-gpu-check.XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/nereid-gpu-work.XXXXXX)
exec > >(tee -a "$out/gpu-check.log") 2>&1

t_start=$(date +%s)
budget=450 # seconds for all steps: under the 8 minutes promised, with room to spare
failures=()

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
for exe in unit nvrtc_compile gpu gpu_bench; do
    if [ ! -x "$here/$exe" ]; then
        echo "missing executable $here/$exe: run kernels/build-gpu-check.sh first"
        failures+=("bundle: $exe missing")
    fi
done
[ -x "$here/unit" ] && step unit-tests 30 "$here/unit" --test-threads=2
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
