#!/usr/bin/env python3
"""PyTorch side of the nereid-kernels GPU benchmark, and the printer of its one table.

usage: torch_mlp.py DIR

DIR is where `gpu_bench --out DIR` wrote bench.json and the MLP's weights, input and outputs
(mlp_*.bin, raw little-endian f32). This script times the same MLP (two 4096 -> 4096 Linear +
ReLU layers, batch 1/32/256/1024, f32 and f16) in PyTorch eager on the same GPU with the same
weights, timed the same way (CUDA events, best of REPEATS batches of ITERS calls after WARMUP),
compares PyTorch's outputs with nereid's, and prints every gpu_bench row with PyTorch's time
beside nereid's MLP rows. The table is also written to DIR/table.txt.

Exits 0 when PyTorch or CUDA is missing (the table says so); exits 1 when the outputs disagree.
"""

import json
import os
import sys

# Output agreement (max |torch - nereid| / max |torch|) required per dtype.
TOLERANCE = {"f32": 1e-4, "f16": 2e-2}


def fmt_table(rows):
    head = ("section", "case", "dtype", "time (us)", "throughput", "vs")
    lines = ["{:<9} {:<48} {:<5} {:>10} {:>14}  {}".format(*head)]
    for r in rows:
        lines.append(
            "{:<9} {:<48} {:<5} {:>10.1f} {:>14}  {}".format(
                r["section"], r["case"], r["dtype"], r["time_us"], r["throughput"], r["vs"]
            )
        )
    return "\n".join(lines)


def torch_mlp(d, mlp):
    """Returns ({(dtype, batch): us}, {dtype: relative max difference}, torch description)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch %s sees no CUDA device" % torch.__version__)
    dev = torch.device("cuda:0")
    # Plain FP32 GEMMs, as nereid's cuBLAS calls (CUBLAS_COMPUTE_32F, no TF32).
    torch.backends.cuda.matmul.allow_tf32 = False
    hidden, layers = mlp["hidden"], mlp["layers"]
    warmup, iters, repeats = mlp["warmup"], mlp["iters"], mlp["repeats"]

    def load(name, shape):
        with open(os.path.join(d, name), "rb") as f:
            data = bytearray(f.read())
        return torch.frombuffer(data, dtype=torch.float32).reshape(shape)

    weights = [
        (load("mlp_w%d.bin" % (i + 1), (hidden, hidden)), load("mlp_b%d.bin" % (i + 1), (hidden,)))
        for i in range(layers)
    ]
    x_all = load("mlp_x.bin", (mlp["max_batch"], hidden))
    times, diffs = {}, {}
    for name, dtype in (("f32", torch.float32), ("f16", torch.float16)):
        params = [(w.to(dev, dtype), b.to(dev, dtype)) for w, b in weights]
        batches = sorted({r["batch"] for r in mlp["results"] if r["dtype"] == name})
        for batch in batches:
            x = x_all[:batch].to(dev, dtype)

            def forward():
                h = x
                for w, b in params:
                    h = torch.nn.functional.linear(h, w, b).relu()
                return h

            with torch.inference_mode():
                for _ in range(warmup):
                    forward()
                torch.cuda.synchronize()
                best = float("inf")
                for _ in range(repeats):
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(iters):
                        forward()
                    end.record()
                    end.synchronize()
                    best = min(best, start.elapsed_time(end) * 1e3 / iters)
                times[(name, batch)] = best
                if batch == mlp["check_rows"]:
                    ours = load("mlp_y_%s_b%d.bin" % (name, batch), (batch, hidden))
                    theirs = forward().float().cpu()
                    scale = max(theirs.abs().max().item(), 1e-30)
                    diffs[name] = (theirs - ours).abs().max().item() / scale
    desc = "torch %s (CUDA %s) on %s" % (
        torch.__version__,
        torch.version.cuda,
        torch.cuda.get_device_name(0),
    )
    return times, diffs, desc


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = sys.argv[1]
    path = os.path.join(d, "bench.json")
    if not os.path.exists(path):
        print("torch_mlp: no %s (gpu_bench did not run or skipped)" % path)
        return 0
    with open(path) as f:
        bench = json.load(f)
    mlp = bench["mlp"]
    try:
        times, diffs, desc = torch_mlp(d, mlp)
    except Exception as e:  # noqa: BLE001 - any failure means "no comparison", said in the table
        times, diffs, desc = {}, {}, "PyTorch comparison skipped: %s: %s" % (type(e).__name__, e)

    nereid = {(r["dtype"], r["batch"]): r["nereid_us"] for r in mlp["results"]}
    rows = []
    failed = []
    for r in bench["rows"]:
        r = dict(r)
        if r["section"] == "mlp":
            batch = int(r["case"].rsplit("b=", 1)[1])
            key = (r["dtype"], batch)
            if key in times:
                r["vs"] = "torch %.1f us: nereid %.2fx" % (times[key], times[key] / nereid[key])
            else:
                r["vs"] = "torch n/a"
            if batch == mlp["check_rows"] and r["dtype"] in diffs:
                diff = diffs[r["dtype"]]
                ok = diff <= TOLERANCE[r["dtype"]]
                r["vs"] += ", out rel.diff %.1e%s" % (diff, "" if ok else " MISMATCH")
                if not ok:
                    failed.append("%s: nereid and torch outputs differ by %.2e" % (r["dtype"], diff))
        rows.append(r)

    text = "nereid-kernels on %s (d2d copy %.0f GB/s); %s\n%s\n" % (
        bench["device"],
        bench["copy_gbps"],
        desc,
        fmt_table(rows),
    )
    print(text, end="")
    with open(os.path.join(d, "table.txt"), "w") as f:
        f.write(text)
    for msg in failed:
        print("FAILED:", msg)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
