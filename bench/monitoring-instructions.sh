#!/usr/bin/env bash
# Monitor overhead in instructions, which do not depend on what else the machine is doing:
# one Nereid under valgrind's callgrind serves the models of bench/monitoring-models.sh (monitoring
# at the defaults `on`, every request `all`, and `off`); for each, instrumentation is zeroed,
# a fixed closed-loop load runs, the monitor gets a second to drain, and the server's
# instructions (all threads: front end, instances, monitor) are dumped and divided by the
# inferences served. Slow (valgrind runs the server ~50x slower), so the load is small.
#
#   flock /tmp/nereid-cargo.lock bash bench/monitoring-instructions.sh
#
# Env: LOAD_MS (load per model, default 20000 ms), CONFIGS ("http:binary grpc:binary").
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/monitoring-models.sh"

LOAD_MS="${LOAD_MS:-20000}"
CONFIGS="${CONFIGS:-http:binary grpc:binary}"
OUT="$(results_dir monitoring-instructions)"
machine_info | tee "$OUT/machine.txt"
build_release
prepare_monitoring_models

NEREID_WRAPPER="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$WORK/callgrind.%p" \
    READY_WAIT_S=600 serve_repository "$WORK/repo" /v2/health/ready \
    --prediction-log-dir "$WORK/prediction-log"
HTTP="$NEREID_HTTP" GRPC="$NEREID_GRPC"

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
