"""Sparsity vs threshold_scale_factor on the captured samples (data/samples/manifest.json).

    python3 eval/measure_sparsity.py [--cli build-data/tools/blasst] [--check-ref] [--factors 1,2,4,...]

For every sample, order and factor it runs
    blasst run --q Q --k K --v V --out O --stats S.json --causal --phase prefill \\
               --block-m 128 --block-n 128 --order ORDER --threshold-scale-factor F
and reads visited / skipped tiles from the statistics. --check-ref also computes the decisions with
eval/blasst_ref.py (numpy) and reports any sample whose counts differ. Without a CLI (--cli none) the
numpy model alone is used. Writes data/samples/sparsity.json and prints markdown tables: sparsity per
sample and factor, and the factor that reaches sparsity 0.3 / 0.5 / 0.7 / 0.9 (log-linear interpolation
between the measured factors; '>F' where even the largest factor below Lk stays under the target).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import blasst_ref  # noqa: E402

DEFAULT_FACTORS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1536, 2000, 3000, 4000, 6000, 8000]
TARGETS = [0.3, 0.5, 0.7, 0.9]


def run_cli(cli: str, sample_dir: str, s: dict, factor: float, order: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        stats = os.path.join(tmp, "s.json")
        cmd = [cli, "run", "--q", os.path.join(sample_dir, s["files"]["q"]),
               "--k", os.path.join(sample_dir, s["files"]["k"]), "--v", os.path.join(sample_dir, s["files"]["v"]),
               "--out", os.path.join(tmp, "o.npy"), "--stats", stats, "--causal", "--phase", "prefill",
               "--block-m", "128", "--block-n", "128", "--order", order, "--engine", "cpu",
               "--threads", str(threads), "--threshold-scale-factor", repr(float(factor))]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        with open(stats) as f:
            return json.load(f)


def factor_for(factors: list[float], sparsity: list[float], target: float) -> str:
    """Log-linear interpolation of the factor reaching `target` (sparsity is non-decreasing in the
    factor up to rounding)."""
    for i in range(1, len(factors)):
        s0, s1 = sparsity[i - 1], sparsity[i]
        if s0 < target <= s1:
            w = (target - s0) / (s1 - s0)
            return f"{math.exp(math.log(factors[i - 1]) + w * (math.log(factors[i]) - math.log(factors[i - 1]))):.3g}"
    if sparsity and sparsity[0] >= target:
        return f"<={factors[0]:g}"
    return f">{factors[-1]:g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default=os.path.join(ROOT, "data", "samples"))
    ap.add_argument("--cli", default=os.path.join(ROOT, "build-data", "tools", "blasst"),
                    help="blasst executable, or 'none' for the numpy model only")
    ap.add_argument("--factors", default=",".join(str(f) for f in DEFAULT_FACTORS))
    ap.add_argument("--orders", default="ascending,anchored")
    ap.add_argument("--check-ref", action="store_true", help="also run the numpy model and compare counts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON output (default <samples>/sparsity.json)")
    args = ap.parse_args()
    with open(os.path.join(args.samples, "manifest.json")) as f:
        manifest = json.load(f)
    factors = [float(x) for x in args.factors.split(",")]
    orders = args.orders.split(",")
    use_cli = args.cli != "none"
    if use_cli and not os.access(args.cli, os.X_OK):
        sys.exit(f"no executable CLI at {args.cli} (build it, or pass --cli none)")

    results = []
    mismatches = []
    for s in manifest["samples"]:
        load = lambda k: np.load(os.path.join(args.samples, s["files"][k]))[0].astype(np.float32)  # noqa: E731
        q = k = None
        for order in orders:
            entry = {"sample": s["name"], "role": s["role"], "layer": s["layer"], "tokens": s["tokens"],
                     "query_heads": s["query_heads"], "order": order, "factors": factors,
                     "visited": [], "skipped": [], "sparsity": [], "per_head": [], "source": "cli" if use_cli else "numpy"}
            t0 = time.time()
            ref = None
            if args.check_ref or not use_cli:
                if q is None:
                    q, k = load("q"), load("k")   # [L, Hq, D], [L, Hkv, D]; the CLI reads the same fp16 values
                ref = blasst_ref.prefill_stats(q, k, factors, bm=128, bn=128, causal=True, order=order)
            for f in factors:
                if use_cli:
                    st = run_cli(args.cli, args.samples, s, f, order, args.threads)
                    vis, sk, ph = st["visited"], st["skipped"], st["per_head"]
                    if ref is not None and (ref[f]["visited"], ref[f]["skipped"]) != (vis, sk):
                        mismatches.append((s["name"], order, f, (vis, sk), (ref[f]["visited"], ref[f]["skipped"])))
                else:
                    vis, sk, ph = ref[f]["visited"], ref[f]["skipped"], ref[f]["per_head"]
                entry["visited"].append(vis)
                entry["skipped"].append(sk)
                entry["sparsity"].append(sk / vis if vis else 0.0)
                entry["per_head"].append(ph)
            entry["seconds"] = round(time.time() - t0, 1)
            results.append(entry)
            print(f"{s['name']} {order}: " + " ".join(f"{f:g}:{x:.3f}" for f, x in zip(factors, entry["sparsity"]))
                  + f"  ({entry['seconds']} s)", flush=True)

    out = args.out or os.path.join(args.samples, "sparsity.json")
    with open(out, "w") as f:
        json.dump({"block_m": 128, "block_n": 128, "phase": "prefill", "causal": True,
                   "cli": os.path.relpath(args.cli, ROOT) if use_cli else None,
                   "command": "python3 eval/measure_sparsity.py " + " ".join(sys.argv[1:]),
                   "mismatches_vs_numpy": mismatches if args.check_ref else None, "results": results}, f, indent=1)

    # rows for the tables: each sample, plus each KV-head group of the all-heads samples (from the
    # per-head counts) so that one group can be followed across 2K / 4K / 8K
    rows = []
    for e in results:
        qh = e["query_heads"]
        rows.append((f"{e['role']} " + ("all heads" if len(qh) == 9 else f"q{qh}"), e, e["sparsity"]))
        if len(qh) == 9:
            for j in range(3):
                sp = []
                for ph in e["per_head"]:
                    v = sum(ph[h][0] for h in range(3 * j, 3 * j + 3))
                    sp.append(sum(ph[h][1] for h in range(3 * j, 3 * j + 3)) / v if v else 0.0)
                rows.append((f"{e['role']} q{list(range(3 * j, 3 * j + 3))}", e, sp))
    print("\nsparsity (skipped / visited tiles); '-' where lambda = factor / L >= 1 (skipping off)")
    print("\n| heads | layer | L | order | " + " | ".join(f"{f:g}" for f in factors) + " |")
    print("|---" * (4 + len(factors)) + "|")
    for label, e, sp in rows:
        print(f"| {label} | {e['layer']} | {e['tokens']} | {e['order']} | "
              + " | ".join(f"{x:.3f}" if f < e["tokens"] else "-" for f, x in zip(factors, sp)) + " |")
    print("\nthreshold_scale_factor reaching a target sparsity")
    print("\n| heads | layer | L | order | " + " | ".join(f"s={t}" for t in TARGETS) + " |")
    print("|---" * (4 + len(TARGETS)) + "|")
    for label, e, sp in rows:
        usable = [(f, x) for f, x in zip(factors, sp) if f < e["tokens"]]
        fs, xs = [u[0] for u in usable], [u[1] for u in usable]
        print(f"| {label} | {e['layer']} | {e['tokens']} | {e['order']} | "
              + " | ".join(factor_for(fs, xs, t) for t in TARGETS) + " |")
    if args.check_ref:
        print(f"\nCLI vs numpy model: {len(mismatches)} mismatching (sample, order, factor) of "
              f"{len(results) * len(factors)}" + (f": {mismatches[:5]}" if mismatches else ""))


if __name__ == "__main__":
    main()
