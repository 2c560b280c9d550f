#!/usr/bin/env bash
# Installs NVIDIA's perf_analyzer (the `perf-analyzer` wheel from PyPI) and prints, on stdout, the
# command prefix that runs it (nothing else goes to stdout). tests/perf_analyzer.rs benchmarks a
# Nereid server with it over HTTP and gRPC.
#
# The wheel's binary needs glibc 2.38, newer than Debian 12's, so it runs with the C and C++ runtime
# of a minimal Debian 13 root made with debootstrap (from Debian's own mirror): started through
# that root's dynamic loader with its library path, not chrooted, so that it shares this
# machine's /dev/shm (its --shared-memory mode) as well as its network. Installed into
# server/.perf-analyzer (git-ignored; NEREID_PERF_ANALYZER_ROOT elsewhere), once.
#
# Exit status: 0 ok; 3 when this machine cannot install it (not root, which debootstrap needs; no
# apt-get or no python3 with pip), which is a skip (or a failure where the suite is required: see nereid-testkit); anything
# else is a real failure (for example no network), which fails the test.
set -euo pipefail

VERSION="2.60.0"
# perf_analyzer loads libcudart.so whenever --shared-memory is given, even for system shared memory
# (it never calls it then); NVIDIA's CUDA runtime wheel provides it, no driver needed.
CUDART="nvidia-cuda-runtime-cu12==12.9.79"
server_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root="${NEREID_PERF_ANALYZER_ROOT:-$server_dir/.perf-analyzer}"
binary="/pa/perf_analyzer/bin/perf_analyzer"
run_it() {
    echo "$root/trixie/lib64/ld-linux-x86-64.so.2 --library-path $root/trixie/usr/lib/x86_64-linux-gnu:$root/cuda $root/trixie$binary"
}

# Tests call this concurrently: one installs, the others wait and reuse it.
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9

if [ -x "$root/trixie$binary" ] && [ -f "$root/.installed-$VERSION-cudart" ]; then
    run_it
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "perf_analyzer needs a Debian 13 root made with debootstrap, which needs root" >&2
    exit 3
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get to install debootstrap with" >&2
    exit 3
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "no python3 with pip to download the perf-analyzer wheel with" >&2
    exit 3
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1)
mirror="${mirror:-http://deb.debian.org/debian}"

rm -rf "$root"
mkdir -p "$root"
debootstrap --variant=minbase --include=libstdc++6,libgcc-s1,libssl3t64,zlib1g,ca-certificates \
    trixie "$root/trixie" "$mirror" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_38_x86_64 -d "$root/wheel" \
    "perf-analyzer==$VERSION" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d "$root/wheel" "$CUDART" >&2
python3 - "$root" <<'PY' >&2
import glob, os, sys, zipfile
root = sys.argv[1]
wheel, = glob.glob(f"{root}/wheel/perf_analyzer-*.whl")
zipfile.ZipFile(wheel).extractall(f"{root}/trixie/pa")
cudart, = glob.glob(f"{root}/wheel/nvidia_cuda_runtime_cu12-*.whl")
os.makedirs(f"{root}/cuda", exist_ok=True)
with zipfile.ZipFile(cudart) as wheel:
    with open(f"{root}/cuda/libcudart.so", "wb") as out:
        out.write(wheel.read("nvidia/cuda_runtime/lib/libcudart.so.12"))
PY
chmod +x "$root/trixie$binary"
$(run_it) --version >&2
touch "$root/.installed-$VERSION-cudart"
run_it
