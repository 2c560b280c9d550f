#!/usr/bin/env bash
# Installs a real Triton Inference Server (2.51, the `tritonserver` binary with its Python backend
# that NVIDIA's `nvidia-pytriton` wheel carries) into clients/python/.triton (git-ignored;
# NEREID_TRITON_DIR elsewhere), once, and prints its directory on stdout (nothing else goes
# there): <dir>/bin/tritonserver, <dir>/backends, and <dir>/../np1 with numpy < 2 for the Python
# backend's models (its stub was built against numpy 1). The differential suite serves the same
# identity models from it and from Nereid and compares their answers.
#
# Exit status: 0 ok; 3 when this machine lacks what installing needs (python3 with pip, or a
# backend stub for its Python version), which is a skip (or a failure where the suite is
# required: see nereid-testkit); anything else is a real failure (for example no network).
set -euo pipefail

VERSION="0.7.0"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root="${NEREID_TRITON_DIR:-$here/.triton}"
server="$root/pytriton/tritonserver"

mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9

if [ -x "$server/bin/tritonserver" ] && [ -f "$root/.installed-$VERSION" ]; then
    echo "$server"
    exit 0
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "no python3 with pip to download the nvidia-pytriton wheel with" >&2
    exit 3
fi
pyv=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

rm -rf "$root"
mkdir -p "$root"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$root/wheels" \
    "nvidia-pytriton==$VERSION" >&2
python3 - "$root" <<'PY' >&2
import glob, sys, zipfile
root = sys.argv[1]
wheel, = glob.glob(f"{root}/wheels/nvidia_pytriton-*.whl")
zipfile.ZipFile(wheel).extractall(root)
PY
rm -rf "$root/wheels"
if [ ! -f "$server/python_backend_stubs/$pyv/triton_python_backend_stub" ]; then
    echo "the wheel has no Python backend stub for Python $pyv" >&2
    exit 3
fi
cp "$server/python_backend_stubs/$pyv/triton_python_backend_stub" "$server/backends/python/"
chmod +x "$server/bin/tritonserver" "$server/backends/python/triton_python_backend_stub"
python3 -m pip install --quiet --no-deps --target "$server/../np1" "numpy==1.26.4" >&2
touch "$root/.installed-$VERSION"
echo "$server"
