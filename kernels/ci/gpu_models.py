#!/usr/bin/env python3
"""Model repository and HTTP check for the GPU backend part of gpu-check.sh. Standard library only
(no numpy, no grpcio): the GPU machine's Python may have nothing else.

    gpu_models.py write SRC_REPO DST_REPO KIND
        DST_REPO gets:
          iris_classifier  the checked-in model from SRC_REPO, as is (KIND_CPU);
          iris_gpu         the same weights and config with instance_group [ { count: 1 kind: KIND } ];
          mlp_cpu/mlp_gpu  a 256 -> 1024 -> 1024 -> 16 ReLU MLP (hidden width from MLP_HIDDEN,
                           default 1024) with input standardisation and a
                           softmax output, the same random weights (fixed seed), KIND_CPU and KIND,
                           two instances each, max_batch_size 64, dynamic batching.
        KIND is KIND_GPU on the GPU machine (KIND_CPU for a dry run of the harness without a GPU).

    gpu_models.py check-http HTTP_ADDR METRICS_ADDR GPU=CPU[,GPU=CPU...]
        For each pair: the same random inputs (batch 1, 7 and max_batch_size) over HTTP/JSON to both
        models; the outputs must agree within 1e-5 + 1e-4 * |cpu|. Then prints the nv_gpu_* lines of
        the metrics endpoint (or says there are none). Exit 1 on a mismatch or an HTTP error.
"""

import json
import os
import random
import shutil
import struct
import sys
import urllib.error
import urllib.request

# MLP_HIDDEN widens the two hidden layers (a slower model, e.g. for bench/overload.sh).
MLP_HIDDEN = int(os.environ.get("MLP_HIDDEN", "1024"))
MLP_SIZES = [256, MLP_HIDDEN, MLP_HIDDEN, 16]
MLP_MAX_BATCH = 64


def write_safetensors(path, tensors):
    """tensors: list of (name, shape, flat list of floats), written as F32 little-endian."""
    header, blobs, offset = {}, [], 0
    for name, shape, values in tensors:
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def group_line(kind, count):
    return "instance_group [ { count: %d kind: %s } ]\n" % (count, kind)


def write_repo(src, dst, kind):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    iris = os.path.join(src, "iris_classifier")
    shutil.copytree(iris, os.path.join(dst, "iris_classifier"))
    gpu_dir = os.path.join(dst, "iris_gpu")
    shutil.copytree(iris, gpu_dir)
    with open(os.path.join(iris, "config.pbtxt")) as f:
        config = f.read()
    lines = [l for l in config.splitlines(True) if not l.startswith("instance_group")]
    config = "".join(lines).replace('name: "iris_classifier"', 'name: "iris_gpu"')
    with open(os.path.join(gpu_dir, "config.pbtxt"), "w") as f:
        f.write(config + group_line(kind, 1))

    rng = random.Random(1234)
    tensors = []
    for i in range(len(MLP_SIZES) - 1):
        n_in, n_out = MLP_SIZES[i], MLP_SIZES[i + 1]
        bound = 1.0 / n_in ** 0.5
        tensors.append(("layers.%d.weight" % i, [n_out, n_in],
                        [rng.uniform(-bound, bound) for _ in range(n_out * n_in)]))
        tensors.append(("layers.%d.bias" % i, [n_out], [rng.uniform(-bound, bound) for _ in range(n_out)]))
    f0 = MLP_SIZES[0]
    tensors.append(("normalize.mean", [f0], [rng.uniform(-1, 1) for _ in range(f0)]))
    tensors.append(("normalize.std", [f0], [rng.uniform(0.5, 2.0) for _ in range(f0)]))
    for name, model_kind in (("mlp_cpu", "KIND_CPU"), ("mlp_gpu", kind)):
        d = os.path.join(dst, name)
        os.makedirs(os.path.join(d, "1"))
        write_safetensors(os.path.join(d, "1", "model.safetensors"), tensors)
        with open(os.path.join(d, "config.pbtxt"), "w") as f:
            f.write(
                'name: "%s"\nbackend: "candle"\nmax_batch_size: %d\n'
                'input [ { name: "X" data_type: TYPE_FP32 dims: [ %d ] } ]\n'
                'output [ { name: "Y" data_type: TYPE_FP32 dims: [ %d ] } ]\n'
                'parameters { key: "nereid.architecture" value: { string_value: "mlp" } }\n'
                'parameters { key: "nereid.activation" value: { string_value: "relu" } }\n'
                'parameters { key: "nereid.output_activation" value: { string_value: "softmax" } }\n'
                '%sdynamic_batching { }\n'
                % (name, MLP_MAX_BATCH, MLP_SIZES[0], MLP_SIZES[-1], group_line(model_kind, 2)))
    print("wrote %s: iris_classifier, iris_gpu (%s), mlp_cpu, mlp_gpu (%s)" % (dst, kind, kind))


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise SystemExit("%s %s: HTTP %d: %s" % (method, url, e.code, e.read().decode(errors="replace")))


def check_http(addr, metrics_addr, pairs):
    base = "http://" + addr
    rng = random.Random(99)
    failed = False
    for pair in pairs.split(","):
        gpu, cpu = pair.split("=")
        meta = http("GET", "%s/v2/models/%s" % (base, gpu))
        config = http("GET", "%s/v2/models/%s/config" % (base, gpu))
        name, features = meta["inputs"][0]["name"], meta["inputs"][0]["shape"][1]
        max_batch = max(1, config.get("max_batch_size", 1))
        worst, pair_failed = 0.0, False
        for batch in sorted({1, min(7, max_batch), max_batch}):
            x = [rng.uniform(-3, 3) for _ in range(batch * features)]
            body = {"inputs": [{"name": name, "shape": [batch, features], "datatype": "FP32", "data": x}]}
            got = http("POST", "%s/v2/models/%s/infer" % (base, gpu), body)["outputs"][0]["data"]
            want = http("POST", "%s/v2/models/%s/infer" % (base, cpu), body)["outputs"][0]["data"]
            if len(got) != len(want):
                print("MISMATCH %s b=%d: %d outputs vs %d" % (gpu, batch, len(got), len(want)))
                pair_failed = True
                continue
            for i, (g, w) in enumerate(zip(got, want)):
                worst = max(worst, abs(g - w))
                if abs(g - w) > 1e-5 + 1e-4 * abs(w):
                    print("MISMATCH %s b=%d element %d: gpu %r cpu %r" % (gpu, batch, i, g, w))
                    pair_failed = True
                    break
        failed = failed or pair_failed
        print("HTTP (urllib): %s vs %s: %s, max |diff| %.3g"
              % (gpu, cpu, "FAILED" if pair_failed else "ok", worst))
    try:
        with urllib.request.urlopen("http://%s/metrics" % metrics_addr, timeout=30) as r:
            text = r.read().decode()
        gpu_lines = [l for l in text.splitlines() if l.startswith("nv_gpu_")]
        print("\n".join(gpu_lines) if gpu_lines else "metrics: no nv_gpu_* series")
    except Exception as e:  # the metrics check is informational
        print("metrics: could not scrape: %s" % e)
    return 1 if failed else 0


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "write":
        write_repo(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    if len(sys.argv) == 5 and sys.argv[1] == "check-http":
        return check_http(sys.argv[2], sys.argv[3], sys.argv[4])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
