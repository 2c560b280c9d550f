#!/usr/bin/env bash
# Monitor overhead: the same models with monitoring on at the defaults (on when a version has a
# reference.json: a tenth of requests sampled, windows of 200 rows every 100, sampled requests
# in the prediction log), with every request sampled (`all`: sample_rate 1), and off
# (`nereid.monitor.enabled: false`), served side by side by one Nereid on core 0, closed loop at
# concurrency 16 over HTTP (binary tensors) and gRPC, the order rotating each round.
# Models: iris_classifier (its checked-in reference) and identity_fp32 (16 features, given a
# reference with `nereid monitor reference` from a synthetic dataset). Request data: 1,000
# different rows per model (Fisher's Iris rows; standard normals), so that windows hold real
# variety.
#
#   flock /tmp/nereid-cargo.lock bash bench/monitoring.sh
#
# Env: ROUNDS (5), CONCURRENCY (16), CONFIGS ("http:binary grpc:binary"), WINDOW_MS, ...
ROUNDS="${ROUNDS:-5}"
source "$(dirname "$0")/lib.sh"

CONFIGS="${CONFIGS:-http:binary grpc:binary}"
CONCURRENCY="${CONCURRENCY:-16}"
OUT="$(results_dir monitoring)"
CSV="$OUT/monitoring.csv"
machine_info | tee "$OUT/machine.txt"
build_release
(cd "$ROOT" && cargo build --release -q -p nereid-pipeline --example export_iris)

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

# A reference for identity_fp32_on: 5,000 rows of 16 standard normals.
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
        --repository "$repo" --model "identity_fp32_$mode" --version 1
done

# Request data: perf_analyzer's JSON form, 1,000 entries per model.
"$BIN/examples/export_iris" "$WORK/iris.csv" > /dev/null
python3 - "$WORK/iris.csv" "$WORK/iris.json" "$WORK/identity.json" <<'PY'
import csv, json, random, sys
rows = [[float(v) for v in r[:4]] for r in list(csv.reader(open(sys.argv[1])))[1:]]
random.seed(4)
json.dump({"data": [{"INPUT": random.choice(rows)} for _ in range(1000)]}, open(sys.argv[2], "w"))
json.dump({"data": [{"INPUT0": [round(random.gauss(0, 1), 4) for _ in range(16)]} for _ in range(1000)]},
          open(sys.argv[3], "w"))
PY

NEREID_LOG=warn taskset -c "$SERVER_CORE" "$BIN/nereid" serve --model-repository "$repo" \
    --host 127.0.0.1 --http-port 0 --grpc-port 0 --metrics-port 0 \
    --prediction-log-dir "$WORK/prediction-log" \
    --port-file "$WORK/nereid.ports" > "$WORK/nereid.log" 2>&1 &
NEREID_PID=$!
STARTED_PIDS+=("$NEREID_PID")
wait_for_file "$WORK/nereid.ports"
HTTP="127.0.0.1:$(port_of "$WORK/nereid.ports" http)"
GRPC="127.0.0.1:$(port_of "$WORK/nereid.ports" grpc)"
METRICS="127.0.0.1:$(port_of "$WORK/nereid.ports" metrics)"
wait_for_url "http://$HTTP/v2/health/ready"

sweep() {
    local model="$1" mode="$2" protocol="$3" format="$4" round="$5" data="$6" url
    if [ "$protocol" = grpc ]; then url="$GRPC"; else url="$HTTP"; fi
    echo "== ${model}_$mode $protocol:$format r$round"
    taskset -c "$LOAD_CORE" "$BIN/nereid-loadtest" --threads 1 \
        --url "http://$url" --protocol "$protocol" --format "$format" -m "${model}_$mode" \
        --input-data "$data" \
        --concurrency "$CONCURRENCY" --warmup-ms "$WARMUP_MS" --window-ms "$WINDOW_MS" \
        --max-windows "$MAX_WINDOWS" --stability-percent "$STABILITY" \
        --max-duration-s 300 --request-timeout-ms 10000 --server-pid "$NEREID_PID" \
        --label "$mode/$model-$protocol:$format/r$round" --csv "$CSV" \
        --json "$OUT/${model}_${mode}_${protocol}_${format}_r$round.json"
}

for round in $(seq "$ROUNDS"); do
    case $((round % 3)) in
        1) order="off on all" ;;
        2) order="on all off" ;;
        *) order="all off on" ;;
    esac
    for config in $CONFIGS; do
        for model in iris_classifier identity_fp32; do
            data="$WORK/iris.json"
            [ "$model" = identity_fp32 ] && data="$WORK/identity.json"
            for mode in $order; do
                sweep "$model" "$mode" "${config%%:*}" "${config##*:}" "$round" "$data"
            done
        done
    done
done

curl -s "http://$METRICS/metrics" | grep -E '^nereid_monitor_(samples|samples_dropped|windows)_total' \
    | tee "$OUT/monitor-counters.txt"
du -sh "$WORK/prediction-log" | tee "$OUT/prediction-log-size.txt"
python3 "$ROOT/bench/summarize.py" "$CSV" --baseline off --subject on \
    --title "Monitor overhead at the defaults: on vs off (concurrency $CONCURRENCY)" | tee "$OUT/summary.md"
python3 "$ROOT/bench/summarize.py" "$CSV" --baseline off --subject all \
    --title "Monitor overhead sampling every request: all vs off (concurrency $CONCURRENCY)" | tee -a "$OUT/summary.md"
echo "raw results: $OUT"
