#!/usr/bin/env python3
"""Tables and target checks from the rows `gpu_decode_bench.py` wrote to bench/results/gpu_decode.csv.

One benchmark run is the rows one `gpu_decode_bench.py` call appended: same commit, same date,
starting with its `device-copy` row (the copy rate it measured). Rows written before runs were
timestamped share a day; there a run ends where a (point, kernel, factor) comes again. For
every run of the chosen commit this prints, per point (batch x context), the peers' and our dense
K+V GB/s, dense mode as a share of the copy rate (when the run recorded it) and of the better
peer, skip mode with nothing skipped against dense mode, and each skip row's speedup over dense
mode, its ratio to the bound 2/(2-s) (K is always read) and its speedup over cuDNN.
Then it checks the decode targets on the rows of that commit (d = 128, Hq = 32, Hkv = 8, the
points 1x128K, 8x32K, 32x16K, 64x8K, 64-token pages, i.e. kernels without a -pN suffix):
dense >= the better of cuDNN and FA2, dense >= 0.9 of the copy rate, skip at s~0 within 3% of
dense, >= 0.9 of the bound for s in [0.5, 0.9], >= 1.4x cuDNN for s in [0.7, 0.8]; the skip
targets once per visiting order (blasst-skip: ascending, blasst-skip-anchored: anchored).

  python3 bench/decode_targets.py                        # the newest commit in the CSV
  python3 bench/decode_targets.py --commit a5fc54b
"""

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from target_ratios import (add_check, exit_no_rows, fmt, format_skip_points, point_values,  # noqa: E402
                           print_checks, print_commit_header, read_rows, skip_ratios)

TARGET_POINTS = {(1, 131072), (8, 32768), (32, 16384), (64, 8192)}
TARGET_SHAPE = {"d": 128, "hq": 32, "hkv": 8}


def parse_kernel(kernel):
    """(mode, order, variant): mode is copy, peer, dense or skip; order names the peer or the
    visiting order; variant is '' (64-token pages), 'contig' or 'pN' (N-token pages)."""
    if kernel == "device-copy":
        return "copy", None, ""
    if not kernel.startswith("blasst-"):
        return "peer", kernel, ""
    parts = kernel[len("blasst-"):].split("-")
    mode, rest = parts[0], parts[1:]
    order = None
    if mode == "skip":
        order = "anchored" if rest[:1] == ["anchored"] else "ascending"
        rest = rest[1:] if rest[:1] == ["anchored"] else rest
    variant = rest[0] if rest else ""
    if variant and variant != "contig" and not re.fullmatch(r"p\d+", variant):
        raise ValueError(f"unknown kernel name {kernel!r}")
    return mode, order, variant


def new_run(date):
    return {"date": date, "copy": None, "points": {}, "seen": set()}


def runs_of(rows, commit):
    """The runs of `commit` in file order, each {date, copy (GB/s or None), points: {(batch, lk,
    d, hq, hkv): {peers: {name: entry}, dense: {variant: entry}, skip: {(order, variant): [entry]}}}}."""
    runs = []
    for r in rows:
        if r["commit"] != commit or r.get("phase", "decode") != "decode":
            continue
        if r.get("dtype", "bf16") not in ("bf16", "") and r["kernel"] != "device-copy":
            continue  # the targets and tables are of bf16 caches (FP8 rows: docs/gpu.md, by dtype)
        mode, order, variant = parse_kernel(r["kernel"])
        point = (int(r["batch"]), int(r["lk"]), int(r["d"]), int(r["hq"]), int(r["hkv"]))
        key = (point, r["kernel"], r["sf"])
        run = runs[-1] if runs else None
        if run is None or run["date"] != r["date"] or key in run["seen"] or (mode == "copy" and run["points"]):
            run = new_run(r["date"])
            runs.append(run)
        run["seen"].add(key)
        entry = {"sparsity": float(r["sparsity"]), "ms": float(r["ms"]), "gbs": float(r["gbs"]), "sf": r["sf"]}
        if mode == "copy":
            run["copy"] = entry["gbs"]
            continue
        shape = run["points"].setdefault(point, {"peers": {}, "dense": {}, "skip": {}})
        if mode == "peer":
            shape["peers"][order] = entry
        elif mode == "dense":
            shape["dense"][variant] = entry
        else:
            shape["skip"].setdefault((order, variant), []).append(entry)
    return runs


def point_summary(shape, copy, order):
    """Ratios of one point of one run for one visiting order (64-token pages), or None without a
    dense row."""
    dense = shape["dense"].get("")
    if dense is None:
        return None
    cudnn, fa2 = shape["peers"].get("cudnn"), shape["peers"].get("fa2")
    peers = [p["gbs"] for p in (cudnn, fa2) if p]
    skip_zero, points = skip_ratios(dense, shape["skip"].get((order, ""), []), cudnn)
    return {"dense": dense, "cudnn": cudnn, "fa2": fa2, "of_copy": dense["gbs"] / copy if copy else None,
            "of_peer": dense["gbs"] / max(peers) if peers else None, "skip_zero": skip_zero, "points": points}


def point_name(point):
    batch, lk = point[:2]
    return f"{batch} x {lk // 1024}K" if lk % 1024 == 0 else f"{batch} x {lk}"


def print_run(run):
    copy = run["copy"]
    print(f"\n### run {run['date']}, copy rate {fmt(copy, '{:.0f} GB/s')}\n")
    print("| point | cuDNN | FA2 | dense | % copy | dense / better peer | order | skip s~0 / dense |"
          " skip rows: s: speedup, of bound, vs cuDNN |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for point, shape in run["points"].items():
        for order in sorted({o for (o, v) in shape["skip"] if v == ""}) or ["-"]:
            s = point_summary(shape, copy, order)
            if s is None:
                continue
            print(f"| {point_name(point)} | {fmt(s['cudnn'] and s['cudnn']['gbs'], '{:.0f}')} | "
                  f"{fmt(s['fa2'] and s['fa2']['gbs'], '{:.0f}')} | {s['dense']['gbs']:.0f} | "
                  f"{fmt(s['of_copy'] and 100 * s['of_copy'], '{:.0f}%')} | {fmt(s['of_peer'], '{:.3f}')} | {order} | "
                  f"{fmt(s['skip_zero'], '{:.3f}')} | {format_skip_points(s['points'])} |")


def is_target(point):
    batch, lk, d, hq, hkv = point
    return (batch, lk) in TARGET_POINTS and (d, hq, hkv) == (TARGET_SHAPE["d"], TARGET_SHAPE["hq"], TARGET_SHAPE["hkv"])


def check_targets(runs):
    """(name, worst value, threshold, met, points) per target, over every run of the commit."""
    checks = []

    def summaries(order):
        """The target points' summaries of every run for one order (None: dense rows only)."""
        out = [point_summary(shape, run["copy"], order) for run in runs
               for point, shape in run["points"].items() if is_target(point)]
        return [s for s in out if s is not None]

    dense = summaries(None)
    add_check(checks, "dense / better of cuDNN and FA2", [s["of_peer"] for s in dense], 1.0)
    add_check(checks, "dense / copy rate", [s["of_copy"] for s in dense], 0.9)
    for order in ("ascending", "anchored"):
        per = [s for s in summaries(order) if s["points"]]
        add_check(checks, f"{order}: skip s~0 / dense", [s["skip_zero"] for s in per], 0.97)
        add_check(checks, f"{order}: of bound, s in [0.5, 0.9]", point_values(per, "of_bound", 0.5, 0.9), 0.9)
        add_check(checks, f"{order}: vs cuDNN, s in [0.7, 0.8]", point_values(per, "vs_cudnn", 0.7, 0.8), 1.4)
    return checks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", default="bench/results/gpu_decode.csv", help="rows written by gpu_decode_bench.py")
    ap.add_argument("--commit", default=None, help="commit of the rows (default: the newest in the file)")
    args = ap.parse_args(argv)
    rows = read_rows(args.csv)
    commit = args.commit or rows[-1]["commit"]
    try:
        runs = runs_of(rows, commit)
    except (KeyError, ValueError) as e:
        sys.exit(f"{args.csv}: unexpected row ({e})")
    if not runs:
        exit_no_rows(rows, "decode", commit, args.csv)
    print_commit_header(rows, commit)
    for run in runs:
        print_run(run)
    print_checks(check_targets(runs),
                 empty="\nno rows at the target points (d = 128, Hq = 32, Hkv = 8, 64-token pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
