#!/usr/bin/env bash
# Peer comparison: the identity_fp32 contract ([1,16] FP32 in, the same out) served by Nereid and
# by Seldon MLServer (a custom Python runtime, bench/mlserver/), same load generator, closed loop
# at concurrency 1..64, over HTTP (JSON: MLServer has no binary tensor extension) and gRPC.
# Both servers run at once on core 0; sweeps alternate between them for ROUNDS rounds.
#
#   flock /tmp/nereid-cargo.lock bash bench/peer.sh
#
# MLServer is installed from PyPI into bench/.venv-mlserver on first use.
# Env: ROUNDS (3), LEVELS, CONFIGS ("http:json grpc:binary"), MLSERVER_WORKERS (0), WARMUP_MS,
# WINDOW_MS, MAX_WINDOWS, STABILITY.
source "$(dirname "$0")/lib.sh"

CONFIGS="${CONFIGS:-http:json grpc:binary}"
OUT="$(results_dir peer)"
CSV="$OUT/peer.csv"
machine_info | tee "$OUT/machine.txt"
install_mlserver
echo "mlserver: $("$MLSERVER_VENV/bin/python" -c 'import mlserver; print(mlserver.__version__)'), parallel_workers=${MLSERVER_WORKERS:-0}" | tee -a "$OUT/machine.txt"
build_release
start_nereid
start_mlserver
echo "nereid pid $NEREID_PID (http $NEREID_HTTP, grpc $NEREID_GRPC); mlserver pid $MLSERVER_PID (http $MLSERVER_HTTP, grpc $MLSERVER_GRPC)"

for round in $(seq "$ROUNDS"); do
    for config in $CONFIGS; do
        protocol="${config%%:*}"
        format="${config##*:}"
        if [ "$protocol" = grpc ]; then
            nereid_url="$NEREID_GRPC"; peer_url="$MLSERVER_GRPC"
        else
            nereid_url="$NEREID_HTTP"; peer_url="$MLSERVER_HTTP"
        fi
        if [ $((round % 2)) -eq 1 ]; then order="mlserver nereid"; else order="nereid mlserver"; fi
        for server in $order; do
            if [ "$server" = mlserver ]; then
                # MLServer has no statistics extension; CPU per inference uses the client's count.
                load "mlserver/$config/r$round" "$peer_url" "$protocol" "$format" "$MLSERVER_PID" "$CSV" --no-server-stats
            else
                load "nereid/$config/r$round" "$nereid_url" "$protocol" "$format" "$NEREID_PID" "$CSV"
            fi
        done
    done
done

python3 "$ROOT/bench/summarize.py" "$CSV" --baseline mlserver --subject nereid \
    --title "Peer: Nereid vs. MLServer (identity [1,16] FP32)" | tee "$OUT/summary.md"
echo "raw results: $OUT"
