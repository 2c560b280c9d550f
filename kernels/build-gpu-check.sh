#!/usr/bin/env bash
# Builds, on this (CPU) machine, everything gpu-check.sh runs on the GPU machine, and stages it in
# kernels/.gpu-bundle/ (git-ignored):
#   unit           CPU reference unit tests           (cargo test --lib)
#   nvrtc_compile  NVRTC compile check                (tests/nvrtc_compile.rs)
#   gpu            GPU-vs-CPU kernel tests            (tests/gpu.rs)
#   gpu_bench      benchmark                          (examples/gpu_bench.rs)
#   gpu-check.sh, torch_mlp.py
# Release builds, found through cargo's --message-format=json. Cargo runs under
# flock /tmp/nereid-cargo.lock (override with NEREID_CARGO_LOCK) and builds nereid-kernels only.
# Then, with the device tool: carry ["kernels/.gpu-bundle"], command
#   bash kernels/.gpu-bundle/gpu-check.sh
set -euo pipefail

kernels=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$kernels/.." && pwd)
bundle="$kernels/.gpu-bundle"
lock=${NEREID_CARGO_LOCK:-/tmp/nereid-cargo.lock}
json=$(mktemp /tmp/nereid-gpu-build.XXXXXX.json)
trap 'rm -f "$json"' EXIT

cd "$root"
flock "$lock" cargo test -p nereid-kernels --release --no-run \
    --message-format=json-render-diagnostics >"$json"
flock "$lock" cargo build -p nereid-kernels --release --example gpu_bench \
    --message-format=json-render-diagnostics >>"$json"

rm -rf "$bundle"
mkdir -p "$bundle"
python3 - "$json" "$bundle" <<'PY'
import json, os, shutil, sys

src, bundle = sys.argv[1], sys.argv[2]
wanted = {("lib", "nereid_kernels"): "unit", ("test", "gpu"): "gpu",
          ("test", "nvrtc_compile"): "nvrtc_compile", ("example", "gpu_bench"): "gpu_bench"}
found = {}
for line in open(src):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if "nereid-kernels" not in msg.get("package_id", ""):
        continue
    target = msg["target"]
    key = (target["kind"][0], target["name"])
    if key in wanted:
        found[wanted[key]] = msg["executable"]
missing = sorted(set(wanted.values()) - set(found))
if missing:
    sys.exit("build-gpu-check: no executable for %s" % ", ".join(missing))
for name, exe in sorted(found.items()):
    shutil.copy2(exe, os.path.join(bundle, name))
    print("staged %-14s <- %s" % (name, os.path.relpath(exe)))
PY

if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$bundle"/unit "$bundle"/gpu "$bundle"/nvrtc_compile "$bundle"/gpu_bench
fi
cp "$kernels/gpu-check.sh" "$kernels/ci/torch_mlp.py" "$bundle/"
chmod +x "$bundle/gpu-check.sh"
echo "bundle: $(du -sh "$bundle" | cut -f1) in ${bundle#"$root"/}"
echo "device run: carry [\"kernels/.gpu-bundle\"], command: bash kernels/.gpu-bundle/gpu-check.sh"
