#!/usr/bin/env python3
"""Tables and target checks from the rows `gpu_bench.py` wrote to bench/results/gpu_prefill.csv.

One benchmark run is the rows one `gpu_bench.py` call appended: same commit, same timestamp. For
every run of the chosen commit this prints, per (head dim, length, causal), the peers' and our
dense TFLOP/s, skip mode with nothing skipped against dense mode, and each skip row's speedup over
dense mode, its ratio to the bound 2/(2-s) (QK^T is always computed) and its speedup over cuDNN.
Then it checks the prefill targets on the rows of that commit:
  sm_90a kernel (rows blasst-dense / blasst-skip): dense >= 0.95x cuDNN; skip at s~0 within 3% of
  dense; >= 0.92 of the bound for s in [0.5, 0.9]; >= 1.45x cuDNN for s in [0.7, 0.8];
  sm_80 kernel (rows blasst-*-sm80): dense >= FA2; skip at s~0 within 3%; >= 0.92 of the bound
  for s >= 0.5.

  python3 bench/prefill_targets.py                       # the newest commit in the CSV
  python3 bench/prefill_targets.py --commit 3cde3ee --d 128
"""

import argparse
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from target_ratios import (add_check, exit_no_rows, fmt, format_skip_points, point_values,  # noqa: E402
                           print_checks, print_commit_header, read_rows, skip_ratios)


def family(kernel):
    """('dense'|'skip'|peer name, suffix): blasst-skip-sm80 -> ('skip', '-sm80')."""
    for mode in ("dense", "skip"):
        prefix = "blasst-" + mode
        if kernel.startswith(prefix):
            return mode, kernel[len(prefix):]
    return kernel, None


def runs_of(rows, commit):
    """The runs of `commit` in file order: {date: {(d, L, causal): shape}}, where a shape holds
    the run's dense row, skip rows, peers' rows and the kernel suffix of its blasst rows."""
    runs = OrderedDict()
    for r in rows:
        if r["commit"] != commit or r.get("phase", "prefill") != "prefill":
            continue
        mode, suffix = family(r["kernel"])
        key = (int(r["d"]), int(r["lq"]), int(r["causal"]))
        run = runs.setdefault(r["date"], OrderedDict())
        shape = run.setdefault(key, {"suffix": None, "dense": None, "skip": [], "peers": {}})
        entry = {"sparsity": float(r["sparsity"]), "ms": float(r["ms"]), "tflops": float(r["tflops"]),
                 "sf": r["sf"]}
        if suffix is None:
            shape["peers"][mode] = entry
            continue
        shape["suffix"] = suffix
        if mode == "dense":
            shape["dense"] = entry
        else:
            shape["skip"].append(entry)
    return runs


def shape_summary(shape):
    """Ratios of one (d, L, causal) of one run, or None without dense and skip rows."""
    dense, skips = shape["dense"], shape["skip"]
    if dense is None or not skips:
        return None
    cudnn, fa2 = shape["peers"].get("cudnn"), shape["peers"].get("fa2")
    skip_zero, points = skip_ratios(dense, skips, cudnn)
    return {"suffix": shape["suffix"], "dense": dense, "cudnn": cudnn, "fa2": fa2, "skip_zero": skip_zero,
            "points": points}


def print_run(date, run, only_d):
    shapes = [(k, shape_summary(v)) for k, v in run.items() if only_d in (None, k[0])]
    shapes = [(k, s) for k, s in shapes if s is not None]
    if not shapes:
        return
    print(f"\n### run {date}, rows blasst-*{shapes[0][1]['suffix']}\n")
    print("| d | L | causal | cuDNN | FA2 | dense | dense / cuDNN | dense / FA2 | skip s~0 / dense |"
          " skip rows: s: speedup, of bound, vs cuDNN |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (d, L, causal), s in shapes:
        cud = s["cudnn"]["tflops"] if s["cudnn"] else None
        fa = s["fa2"]["tflops"] if s["fa2"] else None
        dt = s["dense"]["tflops"]
        print(f"| {d} | {L // 1024}K | {'yes' if causal else 'no'} | {fmt(cud, '{:.0f}')} | {fmt(fa, '{:.0f}')} | "
              f"{dt:.0f} | {fmt(cud and dt / cud, '{:.2f}')} | {fmt(fa and dt / fa, '{:.2f}')} | "
              f"{fmt(s['skip_zero'], '{:.3f}')} | {format_skip_points(s['points'])} |")


def check_targets(runs, only_d):
    """(name, worst value, threshold, met) per target, over every run of the commit."""
    by_suffix = {"": [], "-sm80": []}
    for run in runs.values():
        for (d, L, causal), shape in run.items():
            if only_d not in (None, d):
                continue
            s = shape_summary(shape)
            if s is not None and s["suffix"] in by_suffix:
                by_suffix[s["suffix"]].append(s)
    checks = []
    sm90, sm80 = by_suffix[""], by_suffix["-sm80"]
    add_check(checks, "sm_90a dense / cuDNN",
              [s["cudnn"] and s["dense"]["tflops"] / s["cudnn"]["tflops"] for s in sm90], 0.95)
    add_check(checks, "sm_90a skip s~0 / dense", [s["skip_zero"] for s in sm90], 0.97)
    add_check(checks, "sm_90a of bound, s in [0.5, 0.9]", point_values(sm90, "of_bound", 0.5, 0.9), 0.92)
    add_check(checks, "sm_90a vs cuDNN, s in [0.7, 0.8]", point_values(sm90, "vs_cudnn", 0.7, 0.8), 1.45)
    add_check(checks, "sm_80 dense / FA2", [s["fa2"] and s["dense"]["tflops"] / s["fa2"]["tflops"] for s in sm80], 1.0)
    add_check(checks, "sm_80 skip s~0 / dense", [s["skip_zero"] for s in sm80], 0.97)
    add_check(checks, "sm_80 of bound, s >= 0.5", point_values(sm80, "of_bound", 0.5), 0.92)
    return checks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", default="bench/results/gpu_prefill.csv", help="rows written by gpu_bench.py")
    ap.add_argument("--commit", default=None, help="commit of the rows (default: the newest in the file)")
    ap.add_argument("--d", type=int, default=None, help="only this head dim (the targets are stated for 128)")
    args = ap.parse_args(argv)
    rows = read_rows(args.csv)
    commit = args.commit or rows[-1]["commit"]
    runs = runs_of(rows, commit)
    if not runs:
        exit_no_rows(rows, "prefill", commit, args.csv)
    print_commit_header(rows, commit)
    for date, run in runs.items():
        print_run(date, run, args.d)
    print_checks(check_targets(runs, args.d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
