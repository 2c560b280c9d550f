#!/usr/bin/env bash
# Installs NVRTC, the CUDA runtime compiler (no GPU, driver or toolkit needed), from its PyPI
# wheel into kernels/.venv-nvrtc, and prints the directory that holds libnvrtc.so.* on stdout
# (nothing else goes to stdout). tests/nvrtc_compile.rs runs this so that CI compiles every
# kernel; anyone can run it and export NEREID_CUDA_LIB_DIRS="$(bash kernels/ci/nvrtc-venv.sh)".
#
# Exit status: 0 ok; 3 python3, its venv module or pip is missing (the test then skips);
# anything else is a real failure (for example no network), which fails the test.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../testkit/python-venv.sh"

# The NVRTC of CUDA 13.0, the version of the GPU machines' driver (580) and PyTorch (cu130).
WHEEL="nvidia-cuda-nvrtc==13.0.88"

kernels_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$kernels_dir/.venv-nvrtc"
marker="$venv/.nereid-installed-$WHEEL"

find_lib_dir() {
    local lib
    lib=$(find "$venv" -name 'libnvrtc.so.*' ! -name '*.alt.*' -print -quit 2>/dev/null || true)
    [ -n "$lib" ] && dirname "$lib"
}

# Concurrent test processes (cargo test, nextest) share one install.
exec 9>"$kernels_dir/.venv-nvrtc.lock"
flock 9

if [ -f "$marker" ] && dir=$(find_lib_dir); then
    echo "$dir"
    exit 0
fi

make_venv "$venv" "" "the NVRTC wheel"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet "$WHEEL" >&2
touch "$marker"
if ! dir=$(find_lib_dir); then
    echo "$WHEEL installed but no libnvrtc.so.* found under $venv" >&2
    exit 1
fi
echo "$dir"
