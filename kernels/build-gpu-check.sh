#!/usr/bin/env bash
# Builds, on this (CPU) machine, everything gpu-check.sh runs on the GPU machine, and stages it in
# kernels/.gpu-bundle/ (git-ignored):
#   unit             CPU reference unit tests                  (nereid-kernels, cargo test --lib)
#   nvrtc_compile    NVRTC compile check                       (kernels/tests/nvrtc_compile.rs)
#   gpu              GPU-vs-CPU kernel tests                   (kernels/tests/gpu.rs)
#   gpu_bench        benchmark                                 (kernels/examples/gpu_bench.rs)
#   nereid.gz        the server binary, gzipped                (server, --bin nereid)
#   gpu_backend.gz   GPU backend tests through the server,     (server/tests/gpu_backend.rs)
#                    gzipped; also the gRPC client of the end-to-end check
#   model-repo/      the checked-in iris_classifier (the GPU backend tests' reference model)
#   gpu-check.sh, torch_mlp.py, gpu_models.py
# Release builds, found through cargo's --message-format=json. Cargo runs under
# flock /tmp/nereid-cargo.lock (override with NEREID_CARGO_LOCK) and builds nereid-kernels and
# nereid-server only. The executables are stripped of debug info and the two server ones gzipped
# (the device tool carries at most 64 MiB).
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
flock "$lock" cargo build -p nereid-server --release --bin nereid \
    --message-format=json-render-diagnostics >>"$json"
flock "$lock" cargo test -p nereid-server --release --test gpu_backend --no-run \
    --message-format=json-render-diagnostics >>"$json"

rm -rf "$bundle"
mkdir -p "$bundle"
python3 - "$json" "$bundle" <<'PY'
import json, os, shutil, sys

src, bundle = sys.argv[1], sys.argv[2]
wanted = {("nereid-kernels", "lib", "nereid_kernels"): "unit",
          ("nereid-kernels", "test", "gpu"): "gpu",
          ("nereid-kernels", "test", "nvrtc_compile"): "nvrtc_compile",
          ("nereid-kernels", "example", "gpu_bench"): "gpu_bench",
          ("nereid-server", "bin", "nereid"): "nereid",
          ("nereid-server", "test", "gpu_backend"): "gpu_backend"}
found = {}
for line in open(src):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    package_id = msg.get("package_id", "")
    package = next((p for p in ("nereid-kernels", "nereid-server") if p in package_id), None)
    if package is None:
        continue
    target = msg["target"]
    key = (package, target["kind"][0], target["name"])
    if key in wanted:
        found[wanted[key]] = msg["executable"]
missing = sorted(set(wanted.values()) - set(found))
if missing:
    sys.exit("build-gpu-check: no executable for %s" % ", ".join(missing))
for name, exe in sorted(found.items()):
    shutil.copy2(exe, os.path.join(bundle, name))
    print("staged %-14s <- %s" % (name, os.path.relpath(exe)))
PY

exes=(unit gpu nvrtc_compile gpu_bench nereid gpu_backend)
if command -v strip >/dev/null 2>&1; then
    for exe in "${exes[@]}"; do strip --strip-debug "$bundle/$exe"; done
fi
gzip -9 "$bundle/nereid" "$bundle/gpu_backend"
mkdir -p "$bundle/model-repo"
cp -r "$root/model-repo/iris_classifier" "$bundle/model-repo/"
cp "$kernels/gpu-check.sh" "$kernels/ci/torch_mlp.py" "$kernels/ci/gpu_models.py" "$bundle/"
chmod +x "$bundle/gpu-check.sh"
echo "bundle: $(du -sh "$bundle" | cut -f1) in ${bundle#"$root"/}"
echo "device run: carry [\"kernels/.gpu-bundle\"], command: bash kernels/.gpu-bundle/gpu-check.sh"
