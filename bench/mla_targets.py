#!/usr/bin/env python3
"""Target checks of the MLA issue from the rows of bench/results/gpu_mla_decode.csv
(`gpu_mla_decode_bench.py`) and bench/results/gpu_prefill_mla.csv (`gpu_bench.py --mla`).

Decode, per commit (rows of the benchmark's default 64-token pages, no cluster suffix unless
--cluster): at Hq = 128 (points 64x8K, 32x32K, 128x4K, Lq 1 and 2) dense >= FA3's MLA path of the same
point, skip at s in [0.5, 0.9] >= 0.9 of the compute bound (576 + 512) / (576 + (1 - s) 512), skip at
s ~ 0 within 3% of dense; at Hq = 16 dense >= 0.9 of the run's copy rate.
Prefill 192/128: dense >= FA3 and >= cuDNN at the same (H, L, causal), skip at s in [0.5, 0.9]
>= 0.92 of 2 / (2 - s).

  python3 bench/mla_targets.py [--commit HASH] [--prefill-commit HASH] [--cluster]
"""

import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from target_ratios import SPARSITY_ZERO, add_check, of_commit, print_checks, print_rows_line, read_rows  # noqa: E402

DQK, DV = 576, 512
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DECODE_POINTS = {(64, 8192), (32, 32768), (128, 4096)}


def mla_bound(s):
    return (DQK + DV) / (DQK + (1.0 - s) * DV)


def decode_checks(rows, cluster=False):
    """Target checks over the decode rows of one commit (list of dicts as read from the CSV)."""
    suffix = "-cluster" if cluster else ""
    copy = [float(r["gbs"]) for r in rows if r["kernel"] == "device-copy"]
    points = defaultdict(dict)  # (hq, lq, batch, lk) -> {"fa3": ms, "dense": ms, "skip": [(s, ms)]}
    for r in rows:
        if r["kernel"] == "device-copy":
            continue
        key = (int(r["hq"]), int(r["lq"]), int(r["batch"]), int(r["lk"]))
        ms, s = float(r["ms"]), float(r["sparsity"])
        if r["kernel"] == "fa3":
            points[key]["fa3"] = ms
        elif r["kernel"] == "blasst-dense" + suffix:
            points[key]["dense"] = (ms, float(r["gbs"]))
        elif r["kernel"] in ("blasst-skip" + suffix, "blasst-skip-anchored" + suffix):
            points[key].setdefault("skip", []).append((s, ms))
    checks = []
    of_fa3, of_bound, at_zero, of_copy = [], [], [], []
    for (hq, lq, batch, lk), p in sorted(points.items()):
        if "dense" not in p:
            continue
        dense_ms, dense_gbs = p["dense"]
        if hq == 128 and (batch, lk) in DECODE_POINTS:
            if "fa3" in p:
                of_fa3.append(p["fa3"] / dense_ms)
            for s, ms in p.get("skip", []):
                if 0.5 <= s <= 0.9:
                    of_bound.append(dense_ms / ms / mla_bound(s))
                if s < SPARSITY_ZERO:
                    at_zero.append(dense_ms / ms)
        if hq == 16 and copy:
            of_copy.append(dense_gbs / max(copy))
    add_check(checks, "decode Hq 128: dense / FA3", of_fa3, 1.0)
    add_check(checks, "decode Hq 128: skip s~0 / dense", at_zero, 0.97)
    add_check(checks, "decode Hq 128: of bound, s in [0.5, 0.9]", of_bound, 0.9)
    add_check(checks, "decode Hq 16: dense / copy rate", of_copy, 0.9)
    return checks


def prefill_checks(rows):
    """Target checks over the 192/128 prefill rows of one commit."""
    points = defaultdict(dict)  # (hq, lq, causal) -> {"fa3": ms, "cudnn": ms, "dense": ms, "skip": [...]}
    for r in rows:
        if int(r.get("d", 0) or 0) != 192:
            continue
        key = (int(r["hq"]), int(r["lq"]), int(r["causal"]))
        ms, s = float(r["ms"]), float(r["sparsity"])
        if r["kernel"] in ("fa3", "cudnn", "blasst-dense"):
            points[key][r["kernel"]] = ms
        elif r["kernel"] == "blasst-skip":
            points[key].setdefault("skip", []).append((s, ms))
    checks = []
    vs_fa3, vs_cudnn, of_bound = [], [], []
    for p in points.values():
        if "blasst-dense" not in p:
            continue
        dense = p["blasst-dense"]
        if "fa3" in p:
            vs_fa3.append(p["fa3"] / dense)
        if "cudnn" in p:
            vs_cudnn.append(p["cudnn"] / dense)
        of_bound += [dense / ms / (2.0 / (2.0 - s)) for s, ms in p.get("skip", []) if 0.5 <= s <= 0.9]
    add_check(checks, "prefill 192/128: dense / FA3", vs_fa3, 1.0)
    add_check(checks, "prefill 192/128: dense / cuDNN", vs_cudnn, 1.0)
    add_check(checks, "prefill 192/128: of bound, s in [0.5, 0.9]", of_bound, 0.92)
    return checks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decode-csv", default=os.path.join(RESULTS, "gpu_mla_decode.csv"))
    ap.add_argument("--prefill-csv", default=os.path.join(RESULTS, "gpu_prefill_mla.csv"))
    ap.add_argument("--commit", default=None, help="commit of the decode rows (default: the newest in the file)")
    ap.add_argument("--prefill-commit", default=None, help="commit of the prefill rows (default: the newest)")
    ap.add_argument("--cluster", action="store_true", help="check the decode rows run with multicast clusters")
    args = ap.parse_args(argv)
    checks = []
    commit, rows = of_commit(read_rows(args.decode_csv), args.commit)
    print_rows_line("decode", commit, rows)
    checks += decode_checks(rows, args.cluster)
    commit, rows = of_commit(read_rows(args.prefill_csv), args.prefill_commit)
    print_rows_line("prefill 192/128", commit, rows)
    checks += prefill_checks(rows)
    print_checks(checks, empty="no rows at the target points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
