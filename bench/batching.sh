#!/usr/bin/env bash
# Dynamic batching: the iris classifier at concurrency 64, with `dynamic_batching { }` and
# without it (one request per execution), served side by side by one Nereid on core 0; and the
# in-process forward pass (pipeline/examples/forward_ceiling.rs) on the same core at the
# average batch size the batcher formed, as the compute ceiling.
#
#   flock /tmp/nereid-cargo.lock bash bench/batching.sh
#
# Env: ROUNDS (3), CONFIGS ("http:binary grpc:binary"), CONCURRENCY (64), WINDOW_MS, ...;
# MODEL: iris_classifier (default, the checked-in 4-16-3 classifier) or mlp_cpu (a 256-1024-1024-16
# MLP with random weights, written by kernels/ci/gpu_models.py), one instance either way.
source "$(dirname "$0")/lib.sh"

CONFIGS="${CONFIGS:-http:binary grpc:binary}"
CONCURRENCY="${CONCURRENCY:-64}"
MODEL="${MODEL:-iris_classifier}"
OUT="$(results_dir batching)"
CSV="$OUT/batching.csv"
machine_info | tee "$OUT/machine.txt"
build_release
(cd "$ROOT" && cargo build --release -q -p nereid-pipeline --example forward_ceiling)

# Two copies of the model: `batched` keeps dynamic_batching, `unbatched` drops it.
source_repo="$ROOT/model-repo"
if [ "$MODEL" = mlp_cpu ]; then
    source_repo="$WORK/generated"
    python3 "$ROOT/kernels/ci/gpu_models.py" write "$ROOT/model-repo" "$source_repo" KIND_CPU
fi
repo="$WORK/repo"
mkdir -p "$repo"
for name in batched unbatched; do
    cp -r "$source_repo/$MODEL" "$repo/$name"
    sed -i -e "s/^name: \"$MODEL\"/name: \"$name\"/" -e 's/count: [0-9]*/count: 1/' \
        "$repo/$name/config.pbtxt"
done
sed -i '/^dynamic_batching/d' "$repo/unbatched/config.pbtxt"
grep -q dynamic_batching "$repo/batched/config.pbtxt"

serve_repository "$repo" /v2/models/batched/ready
HTTP="$NEREID_HTTP" GRPC="$NEREID_GRPC"

sweep() {
    local model="$1" protocol="$2" format="$3" round="$4" url
    if [ "$protocol" = grpc ]; then url="$GRPC"; else url="$HTTP"; fi
    echo "== $model $protocol:$format r$round"
    taskset -c "$LOAD_CORE" "$BIN/nereid-loadtest" --threads 1 \
        --url "http://$url" --protocol "$protocol" --format "$format" -m "$model" \
        --concurrency "$CONCURRENCY" --warmup-ms "$WARMUP_MS" --window-ms "$WINDOW_MS" \
        --max-windows "$MAX_WINDOWS" --stability-percent "$STABILITY" \
        --max-duration-s 300 --request-timeout-ms 10000 --server-pid "$NEREID_PID" \
        --label "$model/$protocol:$format/r$round" --csv "$CSV" \
        --json "$OUT/${model}_${protocol}_${format}_r$round.json"
}

for round in $(seq "$ROUNDS"); do
    for config in $CONFIGS; do
        protocol="${config%%:*}"; format="${config##*:}"
        if [ $((round % 2)) -eq 1 ]; then order="unbatched batched"; else order="batched unbatched"; fi
        for model in $order; do sweep "$model" "$protocol" "$format" "$round"; done
    done
done

# Average batch size of the batched model over everything it served.
stats="$(curl -sf "http://$HTTP/v2/models/batched/stats")"
avg_batch="$(python3 -c "import json,sys; s=json.loads(sys.argv[1])['model_stats'][0]; print(round(s['inference_count']/max(1,s['execution_count'])))" "$stats")"
kill "$NEREID_PID"; wait "$NEREID_PID" 2>/dev/null || true
echo "== ceiling: forward pass at batch $avg_batch (and 1) on core $SERVER_CORE"
for batch in 1 "$avg_batch"; do
    RAYON_NUM_THREADS=1 taskset -c "$SERVER_CORE" "$BIN/examples/forward_ceiling" \
        "$repo/batched" "$batch" 3 | tee -a "$OUT/ceiling.jsonl"
done

python3 "$ROOT/bench/summarize.py" "$CSV" --baseline unbatched --subject batched \
    --title "Dynamic batching: $MODEL at concurrency $CONCURRENCY" | tee "$OUT/summary.md"
echo "average batch size (batched): $avg_batch" | tee -a "$OUT/summary.md"
cat "$OUT/ceiling.jsonl" >> "$OUT/summary.md"
echo "raw results: $OUT"
