#!/usr/bin/env bash
# The onnxruntime backend against its compute ceiling: a dense model exported to ONNX
# (`nereid repo export-onnx`; the default Iris classifier unless MODEL says), served with
# dynamic batching by one Nereid on core 0, at concurrency 1, 16 and 64 over gRPC
# (PROTOCOL=http: HTTP with binary tensors); and ONNX Runtime called in-process
# (server/examples/onnx_ceiling.rs) on the same core, one intra-op thread like the served
# model, at the average batch size the batcher formed at each level.
#
#   flock /tmp/nereid-cargo.lock bash bench/onnx.sh
#
# Env: ROUNDS (3), ONNX_LEVELS ("1 16 64"), WINDOW_MS, MAX_WINDOWS, ... (see lib.sh); MODEL:
# iris_classifier (default, the checked-in 4-16-3 classifier) or mlp_cpu (a 256-1024-1024-16 MLP
# with random weights, written by kernels/ci/gpu_models.py), exported the same way.
source "$(dirname "$0")/lib.sh"

ONNX_LEVELS="${ONNX_LEVELS:-1 16 64}"
MODEL="${MODEL:-iris_classifier}"
PROTOCOL="${PROTOCOL:-grpc}"
OUT="$(results_dir onnx)"
CSV="$OUT/onnx.csv"
machine_info | tee "$OUT/machine.txt"
build_release
(cd "$ROOT" && cargo build --release -q -p nereid-server --example onnx_ceiling)
NEREID_ONNXRUNTIME_LIB="$(bash "$ROOT/server/ci/onnx-venv.sh" | tail -1)"
export NEREID_ONNXRUNTIME_LIB
echo "onnxruntime: $NEREID_ONNXRUNTIME_LIB" | tee -a "$OUT/machine.txt"

repo="$WORK/repo"
mkdir -p "$repo/exported/1"
source_repo="$ROOT/model-repo"
if [ "$MODEL" = mlp_cpu ]; then
    source_repo="$WORK/generated"
    python3 "$ROOT/kernels/ci/gpu_models.py" write "$ROOT/model-repo" "$source_repo" KIND_CPU
fi
mkdir -p "$WORK/source"
cp -r "$source_repo/$MODEL" "$WORK/source/$MODEL"
"$BIN/nereid" repo export-onnx --repository "$WORK/source" --model "$MODEL" --version 1
mv "$WORK/source/$MODEL/1/model.onnx" "$repo/exported/1/model.onnx"
cat > "$repo/exported/config.pbtxt" <<'CONFIG'
# Inputs and outputs are completed from the graph.
backend: "onnxruntime"
max_batch_size: 64
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
CONFIG

serve_repository "$repo" /v2/models/exported/ready
counts() {
    curl -sf "http://$NEREID_HTTP/v2/models/exported/stats" | python3 -c \
        "import json,sys; s=json.load(sys.stdin)['model_stats'][0]; print(s['inference_count'], s['execution_count'])"
}
for round in $(seq "$ROUNDS"); do
    for c in $ONNX_LEVELS; do
        echo "== concurrency $c r$round"
        read -r inf0 exec0 <<< "$(counts)"
        taskset -c "$LOAD_CORE" "$BIN/nereid-loadtest" --threads 1 \
            --url "http://$(if [ "$PROTOCOL" = grpc ]; then echo "$NEREID_GRPC"; else echo "$NEREID_HTTP"; fi)" \
            --protocol "$PROTOCOL" --format binary -m exported \
            --concurrency "$c" --warmup-ms "$WARMUP_MS" --window-ms "$WINDOW_MS" \
            --max-windows "$MAX_WINDOWS" --stability-percent "$STABILITY" \
            --max-duration-s 300 --request-timeout-ms 10000 --server-pid "$NEREID_PID" \
            --label "c$c/r$round" --csv "$CSV" --json "$OUT/c${c}_r$round.json"
        read -r inf1 exec1 <<< "$(counts)"
        echo "$c $(( (inf1 - inf0 + (exec1 - exec0) / 2) / (exec1 - exec0 > 0 ? exec1 - exec0 : 1) ))" >> "$OUT/batches.txt"
    done
done
kill "$NEREID_PID"; wait "$NEREID_PID" 2>/dev/null || true

echo "== ceiling: ONNX Runtime in-process on core $SERVER_CORE"
for batch in $(awk '{print $2}' "$OUT/batches.txt" | sort -n | uniq); do
    taskset -c "$SERVER_CORE" "$BIN/examples/onnx_ceiling" "$repo/exported/1/model.onnx" \
        "$batch" 3 | tee -a "$OUT/ceiling.jsonl"
done

python3 - "$CSV" "$OUT/batches.txt" "$OUT/ceiling.jsonl" <<'PY' | tee "$OUT/summary.md"
import csv, json, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
batches = {}
for line in open(sys.argv[2]):
    c, b = line.split()
    batches.setdefault(int(c), []).append(int(b))
ceiling = {j["batch"]: j for j in map(json.loads, open(sys.argv[3]))}
print("| concurrency | Nereid inf/s | avg batch | ceiling rows/s at that batch | ratio | server CPU us/inf | ceiling CPU us/row | CPU ratio |")
print("|---|---|---|---|---|---|---|---|")
for c in sorted(batches):
    mine = [r for r in rows if r["label"].startswith(f"c{c}/")]
    tput = statistics.median(float(r["throughput"]) for r in mine)
    cpu = statistics.median(float(r["server_cpu_us_per_inference"]) for r in mine if r["server_cpu_us_per_inference"])
    batch = round(statistics.median(batches[c]))
    ceil = ceiling.get(batch) or ceiling[min(ceiling, key=lambda b: abs(b - batch))]
    print(f"| {c} | {tput:.0f} | {batch} | {ceil['rows_per_s']:.0f} | {tput / ceil['rows_per_s']:.2f} "
          f"| {cpu:.1f} | {ceil['cpu_us_per_row']:.2f} | {cpu / ceil['cpu_us_per_row']:.1f} |")
PY
echo "raw results: $OUT"
