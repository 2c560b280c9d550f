#!/usr/bin/env bash
# Monitor overhead: the models of bench/monitoring-models.sh (monitoring on at the defaults: on
# when a version has a reference.json, a tenth of requests sampled, windows of 200 rows every
# 100, sampled requests in the prediction log; every request sampled; off), served side by side
# by one Nereid on core 0, closed loop at concurrency 16 over HTTP (binary tensors) and gRPC, the
# order rotating each round.
#
#   flock /tmp/nereid-cargo.lock bash bench/monitoring.sh
#
# Env: ROUNDS (5), CONCURRENCY (16), CONFIGS ("http:binary grpc:binary"), WINDOW_MS, ...
ROUNDS="${ROUNDS:-5}"
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/monitoring-models.sh"

CONFIGS="${CONFIGS:-http:binary grpc:binary}"
CONCURRENCY="${CONCURRENCY:-16}"
OUT="$(results_dir monitoring)"
CSV="$OUT/monitoring.csv"
machine_info | tee "$OUT/machine.txt"
build_release
prepare_monitoring_models

serve_repository "$WORK/repo" /v2/health/ready --prediction-log-dir "$WORK/prediction-log"
HTTP="$NEREID_HTTP" GRPC="$NEREID_GRPC" METRICS="$NEREID_METRICS"

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
