#!/usr/bin/env python3
"""Target checks of the training issue from the rows of bench/results/gpu_backward.csv
(`gpu_backward_bench.py`).

Per commit, for one of our backward kernels (default blasst-triton, the Triton kernels in their
default blocks), at d = 64 and 128, 8K-16K, causal: dense >= 0.9 of FlashAttention-2's dense backward
in the same run, and at forward sparsity s in [0.5, 0.8] a speedup over our dense backward >= 0.8 of
1 / (1 - s). Every skip point is listed, those outside [0.5, 0.8] too.

  python3 bench/backward_targets.py [--commit HASH] [--kernel blasst-triton] [--csv PATH]
"""

import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from target_ratios import SPARSITY_ZERO, add_check, of_commit, print_checks, print_rows_line, read_rows  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LENGTHS = range(8192, 16384 + 1)


def skip_bound(s):
    """The speedup that skipping a fraction s of the backward's tiles allows: 1 / (1 - s)."""
    return 1.0 / (1.0 - s)


def checks_of(rows, kernel="blasst-triton"):
    """(target checks, skip points [(d, L, s, speedup, of bound)]) over the rows of one commit."""
    points = defaultdict(dict)  # (d, L) -> {"fa2": ms, "dense": ms, "skip": [(s, ms)]}
    for r in rows:
        if int(r["causal"]) != 1:
            continue
        key = (int(r["d"]), int(r["lq"]))
        ms, s = float(r["ms"]), float(r["sparsity"])
        if r["kernel"] == "fa2":
            points[key]["fa2"] = ms
        elif r["kernel"] == kernel:
            if float(r["sf"]) == 0.0:
                points[key]["dense"] = ms
            elif s >= SPARSITY_ZERO:
                points[key].setdefault("skip", []).append((s, ms))
    checks, skips, of_fa2, of_bound = [], [], [], []
    for (d, length), p in sorted(points.items()):
        if "dense" not in p or d not in (64, 128) or length not in LENGTHS:
            continue
        if "fa2" in p:
            of_fa2.append(p["fa2"] / p["dense"])
        for s, ms in sorted(p.get("skip", [])):
            speedup = p["dense"] / ms
            skips.append((d, length, s, speedup, speedup / skip_bound(s)))
            if 0.5 <= s <= 0.8:
                of_bound.append(speedup / skip_bound(s))
    add_check(checks, f"{kernel}: dense / FA2 dense", of_fa2, 0.9)
    add_check(checks, f"{kernel}: speedup / (1/(1-s)), s in [0.5, 0.8]", of_bound, 0.8)
    return checks, skips


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", default=os.path.join(RESULTS, "gpu_backward.csv"))
    ap.add_argument("--commit", default=None, help="commit of the rows (default: the newest in the file)")
    ap.add_argument("--kernel", default="blasst-triton", help="our kernel's rows to check")
    args = ap.parse_args(argv)
    commit, rows = of_commit(read_rows(args.csv), args.commit)
    print_rows_line("backward", commit, rows)
    checks, skips = checks_of(rows, args.kernel)
    if skips:
        print("\n| d | L | sparsity | speedup over dense | of 1/(1-s) |\n| --- | --- | --- | --- | --- |")
        for d, length, s, speedup, ratio in skips:
            print(f"| {d} | {length} | {s:.3f} | {speedup:.2f}x | {ratio:.2f} |")
    print_checks(checks, empty="no rows at the target points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
