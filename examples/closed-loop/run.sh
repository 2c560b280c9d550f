#!/usr/bin/env bash
# The closed loop on this machine, in one command:
#
#   bash examples/closed-loop/run.sh
#
# Builds the release binaries, then in a scratch folder: the Iris training data in a feature
# store, a copy of the default iris_classifier with every request monitored, the drift trigger
# of triggers.toml whose action is retrain.toml (production data -> train -> evaluate -> gate
# -> publish), and Nereid serving it. Traffic: nereid-loadtest at a fixed rate with petal length 1.5 cm longer
# (unlabelled), and closed_loop_client sending labelled requests (the same shift after a
# stationary start) with their true species as feedback. Prints when the trigger fired, when
# version 2 served, whether drift cleared on it, failures, and the lineage of a request before
# and after the swap. Everything stays on 127.0.0.1 and every load is bounded.
#
# Env: SHIFT (petal_length=+1.5), RATE (loadtest requests/s, 200), KEEP=1 keeps the folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$ROOT/target/release"
SHIFT="${SHIFT:-petal_length=+1.5}"
RATE="${RATE:-200}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

echo "building (release)..."
(cd "$ROOT" && cargo build --release -q -p nereid-server -p nereid-loadtest \
    && cargo build --release -q -p nereid-server --example closed_loop_client \
    && cargo build --release -q -p nereid-pipeline --example export_iris)

cd "$WORK"
"$BIN/examples/export_iris" iris.csv > /dev/null
"$BIN/nereid" features ingest iris.csv --name iris --store store > /dev/null

# The served model: the default classifier, every request sampled (so that every prediction can
# be labelled), windows of 200 rows tested every 100.
mkdir -p repo
cp -r "$ROOT/model-repo/iris_classifier" repo/
echo 'parameters { key: "nereid.monitor.sample_rate" value: { string_value: "1" } }' \
    >> repo/iris_classifier/config.pbtxt

cp "$ROOT/examples/closed-loop/triggers.toml" "$ROOT/examples/closed-loop/retrain.toml" .

"$BIN/nereid" serve --model-repository repo --host 127.0.0.1 \
    --http-port 0 --grpc-port 0 --metrics-port 0 --port-file ports.json \
    --model-control-mode explicit --load-model '*' \
    --prediction-log-dir prediction-log --triggers triggers.toml \
    --trigger-record-dir trigger-record > server.log 2>&1 &
PIDS+=("$!")
for _ in $(seq 300); do [ -s ports.json ] && break; sleep 0.1; done
HTTP="127.0.0.1:$(sed -E 's/.*"http": *([0-9]+).*/\1/' ports.json)"
echo "serving on $HTTP"

# The publish step (retrain.toml's last) loads the new version on this server.
echo "server_url = \"http://$HTTP\"" >> retrain.toml

# Unlabelled background traffic at a fixed rate, shifted like the labelled traffic.
"$BIN/examples/closed_loop_client" --shift "$SHIFT" --write-shifted shifted.json
"$BIN/examples/closed_loop_client" --url "http://$HTTP" --shift "$SHIFT" \
    --shift-marker shift-started &
CLIENT=$!
PIDS+=("$CLIENT")
# The unlabelled traffic starts with the labelled traffic's shift.
for _ in $(seq 600); do [ -e shift-started ] && break; sleep 0.05; done
"$BIN/nereid-loadtest" --url "http://$HTTP" --protocol http --format binary -m iris_classifier \
    --input-data shifted.json --rate "$RATE" --warmup-ms 0 --window-ms 5000 --max-windows 6 \
    --stable-windows 6 --max-duration-s 40 --no-server-stats > loadtest.txt 2>&1 &
LOAD=$!
PIDS+=("$LOAD")
wait "$CLIENT"
echo
echo "nereid-loadtest (shifted, unlabelled, ${RATE}/s for 30 s, across the swap):"
wait "$LOAD" || true
cat loadtest.txt
echo
"$BIN/nereid" triggers list --url "http://$HTTP"
