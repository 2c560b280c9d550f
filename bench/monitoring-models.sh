# The repository and request data that bench/monitoring.sh and bench/monitoring-instructions.sh
# measure (sourced after lib.sh, not run): iris_classifier and identity_fp32, each served three
# times, with monitoring `on` at the defaults, sampling every request (`all`: sample_rate 1) and
# `off` (`nereid.monitor.enabled: false`). iris_classifier keeps its checked-in reference;
# identity_fp32 (16 features) is given one with `nereid monitor reference` from 5,000 rows of
# standard normals. Request data in perf_analyzer's JSON form, 1,000 different rows per model
# (Fisher's Iris rows; standard normals), so that windows hold real variety.
#
# prepare_monitoring_models: writes $WORK/repo, $WORK/iris.json and $WORK/identity.json.
prepare_monitoring_models() {
    (cd "$ROOT" && cargo build --release -q -p nereid-pipeline --example export_iris)
    local repo="$WORK/repo" model mode
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
}
