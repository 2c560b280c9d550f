#!/usr/bin/env bash
# System shared memory against the same runs without it: NVIDIA's perf_analyzer (installed by
# server/ci/perf-analyzer.sh) against one Nereid on core 0, perf_analyzer on core 1, over HTTP and
# gRPC, with the tensors in the request and response bodies and then in shared memory. The model
# is an identity with one FP32 input of SIZE elements (default 262,144: 1 MiB in, 1 MiB out),
# where copying tensors through the transport is most of the work; plus identity_fp32 (16
# elements, 64 bytes) to show the small-tensor case.
#
#   flock /tmp/nereid-cargo.lock bash bench/shared_memory.sh
#
# Env: SIZE (elements), CONCURRENCY (1), REQUESTS (per window, 400).
source "$(dirname "$0")/lib.sh"

SIZE="${SIZE:-262144}"
CONCURRENCY="${CONCURRENCY:-1}"
REQUESTS="${REQUESTS:-400}"
OUT="$(results_dir shared-memory)"
machine_info | tee "$OUT/machine.txt"
build_release
read -ra PA <<< "$(bash "$ROOT/server/ci/perf-analyzer.sh")"

repo="$WORK/repo"
mkdir -p "$repo/identity_large/1"
cp -r "$ROOT/model-repo/identity_fp32" "$repo/"
cat > "$repo/identity_large/config.pbtxt" <<PBTXT
name: "identity_large"
backend: "identity"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ $SIZE ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ $SIZE ] } ]
PBTXT
serve_repository "$repo" /v2/health/ready

echo "| model | protocol | tensors | throughput (infer/s) | p50 latency (us) | p99 latency (us) |" | tee "$OUT/summary.md"
echo "|---|---|---|---:|---:|---:|" | tee -a "$OUT/summary.md"
for model in identity_large identity_fp32; do
    for protocol in http grpc; do
        address="$NEREID_HTTP"
        [ "$protocol" = grpc ] && address="$NEREID_GRPC"
        for memory in none system; do
            label="$model-$protocol-$memory"
            taskset -c "$LOAD_CORE" "${PA[@]}" -m "$model" -u "$address" -i "$protocol" \
                --shared-memory "$memory" --concurrency-range "$CONCURRENCY" \
                --measurement-mode count_windows --measurement-request-count "$REQUESTS" \
                --stability-percentage 25 --max-trials 20 -f "$OUT/$label.csv" \
                > "$OUT/$label.log" 2>&1 || { echo "| $model | $protocol | $memory | no stable measurement (see $label.log) | | |" | tee -a "$OUT/summary.md"; continue; }
            python3 - "$OUT/$label.csv" "$model" "$protocol" "$memory" <<'PY' | tee -a "$OUT/summary.md"
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
tensors = "in the body" if sys.argv[4] == "none" else "system shared memory"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {tensors} | {float(row['Inferences/Second']):.0f} "
      f"| {row['p50 latency']} | {row['p99 latency']} |")
PY
        done
    done
done
echo "raw results: $OUT"
