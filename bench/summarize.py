#!/usr/bin/env python3
"""Medians and ratios of alternating benchmark runs, as a Markdown table.

Reads the CSV that `nereid-loadtest --csv` appends to, with labels `SERVER/CONFIG/rN` (e.g.
`nereid/grpc:binary/r2`), and prints, per config and concurrency level, the median over rounds
of each server's throughput, p50, p99 and server CPU time per inference, and the subject's
ratios to the baseline. Standard library only.
"""

import argparse
import csv
import statistics
import sys
from collections import defaultdict


def fmt(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.{digits}f}"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def number(text):
    try:
        return float(text) if text != "" else None
    except ValueError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv")
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--title", default="Benchmark")
    args = parser.parse_args()

    # (config, concurrency, server) -> list of row dicts, one per round
    cells = defaultdict(list)
    configs, levels, rounds = [], set(), set()
    with open(args.csv, newline="") as f:
        for row in csv.DictReader(f):
            parts = row["label"].split("/")
            if len(parts) != 3 or row["concurrency"] == "":
                continue
            server, config, rnd = parts
            if config not in configs:
                configs.append(config)
            level = int(row["concurrency"])
            levels.add(level)
            rounds.add(rnd)
            cells[(config, level, server)].append(row)

    base, subj = args.baseline, args.subject
    print(f"## {args.title}\n")
    print(
        f"Medians over {len(rounds)} alternating rounds; ratios are {subj} / {base}. "
        "Latencies in microseconds; `cpu/inf` is server CPU time (utime+stime) per inference; "
        "`*` marks a cell where some round did not reach stable windows.\n"
    )
    for config in configs:
        print(f"### {config}\n")
        print(
            f"| conc | {base} infer/s | {subj} infer/s | thr ratio | {base} p50 | {subj} p50 "
            f"| {base} p99 | {subj} p99 | p99 ratio | {base} cpu/inf | {subj} cpu/inf | errors |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for level in sorted(levels):
            stats = {}
            errors = 0
            unstable = {}
            for server in (base, subj):
                rows = cells.get((config, level, server), [])
                errors += sum(int(r["failed"] or 0) for r in rows)
                unstable[server] = "*" if any(r["stable"] != "true" for r in rows) else ""
                stats[server] = {
                    key: median(number(r[key]) for r in rows)
                    for key in ("throughput", "p50_us", "p99_us", "server_cpu_us_per_inference")
                }
            b, s = stats[base], stats[subj]
            print(
                f"| {level} | {fmt(b['throughput'])}{unstable[base]} | {fmt(s['throughput'])}{unstable[subj]} "
                f"| {ratio(s['throughput'], b['throughput'])} | {fmt(b['p50_us'])} | {fmt(s['p50_us'])} "
                f"| {fmt(b['p99_us'])} | {fmt(s['p99_us'])} | {ratio(s['p99_us'], b['p99_us'])} "
                f"| {fmt(b['server_cpu_us_per_inference'], 1)} | {fmt(s['server_cpu_us_per_inference'], 1)} "
                f"| {errors} |"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
