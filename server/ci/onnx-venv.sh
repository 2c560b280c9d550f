#!/usr/bin/env bash
# Installs ONNX Runtime and the `onnx` package from PyPI into server/.venv-onnx (git-ignored) and
# prints two lines on stdout (nothing else goes there): the venv's python, then ONNX Runtime's
# shared library from the wheel. tests/onnx_backend.rs builds its ONNX models with the `onnx`
# package's graph helpers, computes reference outputs with onnxruntime in Python, and serves the
# models through that same library; anyone can run this too and
# export NEREID_ONNXRUNTIME_LIB="$(bash server/ci/onnx-venv.sh | tail -1)".
#
# Exit status: 0 ok; 3 python3 (3.11 or newer), its venv module or pip is missing (the test then
# skips, saying why, or fails where it is required: see nereid-testkit); anything else is a real
# failure (for example no network), which fails the test.
#
# Everything pinned and installed with --no-deps (no resolver runs); sympy, coloredlogs and
# flatbuffers are what `import onnxruntime` needs besides numpy.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../testkit/python-venv.sh"

PACKAGE="onnxruntime==1.22.1"
DEPS=(
    "onnx==1.23.2" "numpy==2.4.6" "protobuf==7.36.2" "ml_dtypes==0.7.0"
    "typing_extensions==4.16.0" "packaging==26.4" "flatbuffers==25.12.19"
    "coloredlogs==15.0.1" "humanfriendly==10.0" "sympy==1.14.0" "mpmath==1.3.0"
)

server_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${NEREID_ONNX_VENV:-$server_dir/.venv-onnx}"
install_pinned "$venv" "3.11" "the pinned numpy" "$PACKAGE" "${DEPS[@]}"
lib=$(find "$venv" -name 'libonnxruntime.so.*' -print -quit 2>/dev/null)
if [ -z "$lib" ]; then
    echo "$PACKAGE installed but no libonnxruntime.so.* found under $venv" >&2
    exit 1
fi
printf '%s\n%s\n' "$venv/bin/python" "$lib"
