#!/usr/bin/env bash
# Monitor overhead in instructions, which do not depend on what else the machine is doing:
# one Nereid under valgrind's callgrind serves the models of bench/monitoring.sh (monitoring
# at the defaults `on`, every request `all`, and `off`); for each, instrumentation is zeroed,
# a fixed closed-loop load runs, the monitor gets a second to drain, and the server's
# instructions (all threads: front end, instances, monitor) are dumped and divided by the
# inferences served. Slow (valgrind runs the server ~50x slower), so the load is small.
#
#   flock /tmp/nereid-cargo.lock bash bench/monitoring-instructions.sh
#
# Env: LOAD_MS (load per model, default 20000 ms), CONFIGS ("http:binary grpc:binary").
source "$(dirname "$0")/lib.sh"

LOAD_MS="${LOAD_MS:-20000}"
CONFIGS="${CONFIGS:-http:binary grpc:binary}"
OUT="$(results_dir monitoring-instructions)"
machine_info | tee "$OUT/machine.txt"
build_release
(cd "$ROOT" && cargo build --release -q -p nereid-pipeline --example export_iris)

# The repository and request data of bench/monitoring.sh.
repo="$WORK/repo"
mkdir -p "$repo"
for model in iris_classifier identity_fp32; do
    for mode in on all off; do
        cp -r "$ROOT/model-repo/$model" "$repo/${model}_$mode"
        sed -i "s/^name: \"$model\"/name: \"${model}_$mode\"/" "$repo/${model}_$mode/config.pbtxt"
    done
    echo 'parameters { key: "nereid.monitor.enabled" value: { string_value: "false" } }' \
        >> "$repo/${model}_off/config.pbtxt"
    echo 'parameters { key: "nereid.monitor.sample_rate" value: { string_value: "1" } }' \
        >> "$repo/${model}_all/config.pbtxt"
done
python3 - "$WORK/synthetic.csv" <<'PY'
import random, sys
random.seed(16)
with open(sys.argv[1], "w") as f:
    f.write(",".join(f"x{i}" for i in range(16)) + "\n")
    for _ in range(5000):
        f.write(",".join(f"{random.gauss(0, 1):.4f}" for _ in range(16)) + "\n")
PY
"$BIN/nereid" features ingest "$WORK/synthetic.csv" --name synthetic --store "$WORK/store" > /dev/null
for mode in on all; do
    "$BIN/nereid" monitor reference --dataset synthetic --store "$WORK/store" \
        --repository "$repo" --model "identity_fp32_$mode" --version 1 > /dev/null
done
"$BIN/examples/export_iris" "$WORK/iris.csv" > /dev/null
python3 - "$WORK/iris.csv" "$WORK/iris.json" "$WORK/identity.json" <<'PY'
import csv, json, random, sys
rows = [[float(v) for v in r[:4]] for r in list(csv.reader(open(sys.argv[1])))[1:]]
random.seed(4)
json.dump({"data": [{"INPUT": random.choice(rows)} for _ in range(1000)]}, open(sys.argv[2], "w"))
json.dump({"data": [{"INPUT0": [round(random.gauss(0, 1), 4) for _ in range(16)]} for _ in range(1000)]},
          open(sys.argv[3], "w"))
PY

NEREID_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$WORK/callgrind.%p" \
    "$BIN/nereid" serve --model-repository "$repo" \
    --host 127.0.0.1 --http-port 0 --grpc-port 0 --metrics-port 0 \
    --prediction-log-dir "$WORK/prediction-log" \
    --port-file "$WORK/nereid.ports" > "$WORK/nereid.log" 2>&1 &
NEREID_PID=$!
STARTED_PIDS+=("$NEREID_PID")
wait_for_file "$WORK/nereid.ports"
HTTP="127.0.0.1:$(port_of "$WORK/nereid.ports" http)"
GRPC="127.0.0.1:$(port_of "$WORK/nereid.ports" grpc)"
wait_for_url "http://$HTTP/v2/health/ready" 600

inferences() {
    curl -s "http://$HTTP/v2/models/$1/stats" | python3 -c \
        "import json,sys; print(json.load(sys.stdin)['model_stats'][0]['inference_count'])"
}

echo "| model | config | off Ir/inference | on Ir/inference | on/off | all Ir/inference | all/off |" | tee "$OUT/summary.md"
echo "|---|---|---:|---:|---:|---:|---:|" | tee -a "$OUT/summary.md"
for config in $CONFIGS; do
    protocol="${config%%:*}"
    url="$HTTP"; [ "$protocol" = grpc ] && url="$GRPC"
    for model in iris_classifier identity_fp32; do
        data="$WORK/iris.json"; [ "$model" = identity_fp32 ] && data="$WORK/identity.json"
        declare -A per
        for mode in off on all; do
            name="${model}_$mode"
            before=$(inferences "$name")
            callgrind_control -z "$NEREID_PID" > /dev/null 2>&1
            callgrind_control -i on "$NEREID_PID" > /dev/null 2>&1
            "$BIN/nereid-loadtest" --threads 1 --url "http://$url" --protocol "$protocol" \
                --format binary -m "$name" --input-data "$data" --concurrency 16 \
                --warmup-ms 0 --window-ms "$LOAD_MS" --max-windows 1 --stable-windows 1 \
                --max-duration-s 600 --request-timeout-ms 60000 > "$OUT/${name}_$protocol.txt" 2>&1
            sleep 1
            callgrind_control -i off "$NEREID_PID" > /dev/null 2>&1
            rm -f "$WORK"/callgrind.*.[0-9]*
            callgrind_control -d "$NEREID_PID" > /dev/null 2>&1
            sleep 1
            dump=$(ls -t "$WORK"/callgrind.* | head -1)
            ir=$(grep -m1 '^totals:' "$dump" | awk '{print $2}')
            after=$(inferences "$name")
            per[$mode]=$(python3 -c "print($ir / max(1, $after - $before))")
            echo "$name $protocol: $ir instructions, $((after - before)) inferences" >> "$OUT/raw.txt"
        done
        python3 - "$model" "$config" "${per[off]}" "${per[on]}" "${per[all]}" <<'PY' | tee -a "$OUT/summary.md"
import sys
model, config, off, on, all_ = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
print(f"| {model} | {config} | {off:,.0f} | {on:,.0f} | {on / off:.3f} | {all_:,.0f} | {all_ / off:.3f} |")
PY
    done
done
echo "raw results: $OUT"
