#!/usr/bin/env bash
# Front-end overhead: Nereid serving identity_fp32 [1,16] vs. the echo server (hyper/tonic with
# canned responses, no parsing) as the transport ceiling, over HTTP (binary tensors) and gRPC,
# closed loop at concurrency 1..64. Both servers run at once on core 0; sweeps alternate between
# them (A B, then B A, ...) for ROUNDS rounds; the summary quotes medians and ratios.
#
#   flock /tmp/nereid-cargo.lock bash bench/frontend.sh
#
# Env: ROUNDS (3), LEVELS (1,2,4,8,16,32,64), CONFIGS ("http:binary grpc:binary"; add
# http:json for JSON), WARMUP_MS, WINDOW_MS, MAX_WINDOWS, STABILITY.
source "$(dirname "$0")/lib.sh"

CONFIGS="${CONFIGS:-http:binary grpc:binary}"
OUT="$(results_dir frontend)"
CSV="$OUT/frontend.csv"
machine_info | tee "$OUT/machine.txt"
build_release
start_nereid
start_echo
echo "nereid pid $NEREID_PID (http $NEREID_HTTP, grpc $NEREID_GRPC); echo pid $ECHO_PID (http $ECHO_HTTP, grpc $ECHO_GRPC)"

for round in $(seq "$ROUNDS"); do
    for config in $CONFIGS; do
        protocol="${config%%:*}"
        format="${config##*:}"
        if [ "$protocol" = grpc ]; then
            nereid_url="$NEREID_GRPC"; echo_url="$ECHO_GRPC"
        else
            nereid_url="$NEREID_HTTP"; echo_url="$ECHO_HTTP"
        fi
        # Alternate which server goes first, so that drift favours neither.
        if [ $((round % 2)) -eq 1 ]; then order="echo nereid"; else order="nereid echo"; fi
        for server in $order; do
            if [ "$server" = echo ]; then
                load "echo/$config/r$round" "$echo_url" "$protocol" "$format" "$ECHO_PID" "$CSV"
            else
                load "nereid/$config/r$round" "$nereid_url" "$protocol" "$format" "$NEREID_PID" "$CSV"
            fi
        done
    done
done

python3 "$ROOT/bench/summarize.py" "$CSV" --baseline echo --subject nereid \
    --title "Front-end overhead: Nereid vs. echo ceiling (identity_fp32 [1,16])" | tee "$OUT/summary.md"
echo "raw results: $OUT"
