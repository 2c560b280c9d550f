#!/usr/bin/env bash
# Overload: a model without dynamic batching (mlp_cpu, a 256-1024-1024-16 MLP on candle, one
# instance; written by kernels/ci/gpu_models.py) served by one Nereid on core 0 with the default
# queue admission (--max-queue-wait-ms 2000). First its saturating throughput X (closed loop,
# concurrency 16); then open-loop Poisson load at 2X and at 10X; then closed loop again in
# quarter-second windows, to see how soon full throughput is back. The server's resident memory
# is sampled every 100 ms throughout. Load from core 1, HTTP with binary tensors.
#
#   flock /tmp/nereid-cargo.lock bash bench/overload.sh
#
# Env: OVERLOAD_WINDOWS (5 one-second windows per open-loop level), WAIT_MS (2000), MLP_HIDDEN
# (1024: the hidden layers' width; 4096 makes a model slow enough, about 16x the work per request,
# that one load-generating core can offer 10X its saturating rate).
source "$(dirname "$0")/lib.sh"

OVERLOAD_WINDOWS="${OVERLOAD_WINDOWS:-5}"
WAIT_MS="${WAIT_MS:-2000}"
OUT="$(results_dir overload)"
machine_info | tee "$OUT/machine.txt"
build_release

repo="$WORK/repo"
MLP_HIDDEN="${MLP_HIDDEN:-1024}" python3 "$ROOT/kernels/ci/gpu_models.py" write "$ROOT/model-repo" "$WORK/generated" KIND_CPU
mkdir -p "$repo"
cp -r "$WORK/generated/mlp_cpu" "$repo/mlp_cpu"
sed -i -e '/dynamic_batching/d' -e 's/count: [0-9]*/count: 1/' "$repo/mlp_cpu/config.pbtxt"
! grep -q dynamic_batching "$repo/mlp_cpu/config.pbtxt"
serve_repository "$repo" /v2/models/mlp_cpu/ready --max-queue-wait-ms "$WAIT_MS"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$NEREID_PID/status"; }
(while kill -0 "$NEREID_PID" 2>/dev/null; do
    echo "$(date +%s.%N) $(rss_kib)"
    sleep 0.1
done) > "$OUT/rss.txt" &
STARTED_PIDS+=("$!")

load() {
    local label="$1"
    shift
    taskset -c "$LOAD_CORE" "$BIN/nereid-loadtest" --threads 1 \
        --url "http://$NEREID_HTTP" --protocol http --format binary -m mlp_cpu \
        --request-timeout-ms 30000 --server-pid "$NEREID_PID" --label "$label" \
        --json "$OUT/$label.json" "$@"
}

echo "== saturation (closed loop, concurrency 16)"
load saturation --concurrency 16 --warmup-ms "$WARMUP_MS" --window-ms "$WINDOW_MS" \
    --max-windows "$MAX_WINDOWS" --stability-percent "$STABILITY"
x=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['steps'][0]['throughput']))" "$OUT/saturation.json")
echo "mlp_cpu 256-${MLP_HIDDEN:-1024}-${MLP_HIDDEN:-1024}-16; saturating throughput: $x/s" | tee "$OUT/summary.md"

date +%s.%N > "$OUT/overload.start"
echo "== open loop at 2X and 10X"
load overload --rate "$((2 * x)),$((10 * x))" --max-outstanding 8192 --warmup-ms 0 \
    --window-ms 1000 --stable-windows "$OVERLOAD_WINDOWS" --max-windows "$OVERLOAD_WINDOWS"
date +%s.%N > "$OUT/overload.end"

echo "== recovery (closed loop, concurrency 16, quarter-second windows)"
for i in 1 2 3 4 5 6; do
    load "recovery$i" --concurrency 16 --warmup-ms 0 --window-ms 250 --stable-windows 1 \
        --max-windows 1
done

python3 - "$OUT" "$x" <<'PY' | tee -a "$OUT/summary.md"
import json, sys
out, x = sys.argv[1], float(sys.argv[2])
start, end = (float(open(f"{out}/overload.{w}").read()) for w in ("start", "end"))
rss = [(float(t), int(k)) for t, k in (l.split() for l in open(f"{out}/rss.txt") if len(l.split()) == 2)]
before = max((k for t, k in rss if t < start), default=0)
during = max((k for t, k in rss if start <= t <= end), default=0)
print(f"server RSS: {before / 1024:.0f} MiB before the overload, {during / 1024:.0f} MiB at most during it")
print()
print("Refusal times run from the scheduled send; the generator's own lag behind its schedule and")
print("the refusal time from the actual send are shown beside them.")
print()
print("| offered | served/s | refused/s | success p99 (ms) | refusal p50 / p99 (ms) | send lag p50 (ms) | refusal from send p50 / p99 (ms) | errors |")
print("|---|---|---|---|---|---|---|---|")
for step in json.load(open(f"{out}/overload.json"))["steps"]:
    s = step["measured_s"] or 1
    e = step.get("error_latency_us") or {}
    f = step.get("error_service_latency_us") or {}
    lag = step.get("send_lag_us") or {}
    print(f"| {step['offered_rate']:.0f}/s ({step['offered_rate'] / x:.1f}X) | {step['throughput']:.0f} "
          f"| {step['failed'] / s:.0f} | {step['latency_us']['p99'] / 1000:.1f} "
          f"| {e.get('p50', 0) / 1000:.2f} / {e.get('p99', 0) / 1000:.2f} | {lag.get('p50', 0) / 1000:.2f} "
          f"| {f.get('p50', 0) / 1000:.2f} / {f.get('p99', 0) / 1000:.2f} | {dict(step['errors'])} |")
print()
quarters = [json.load(open(f"{out}/recovery{i}.json"))["steps"][0]["throughput"] for i in range(1, 7)]
print("recovery, throughput in consecutive quarter-second windows after the overload: "
      + ", ".join(f"{q:.0f}/s ({q / x:.2f}X)" for q in quarters))
PY
echo "raw results: $OUT"
