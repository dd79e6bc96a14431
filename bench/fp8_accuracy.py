#!/usr/bin/env python3
"""Accuracy of FP8 (e4m3) attention on real attention samples, with and without skipping.

    python3 bench/fp8_accuracy.py [--samples NAME,...] [--factors 4,32] [--csv bench/results/fp8_accuracy.csv]
    python3 bench/fp8_accuracy.py --engine cuda ...   # the same through the CUDA engine (a GPU)

For each sample of data/samples (post-RoPE Q/K/V of SmolLM2-135M-Instruct on real text, causal
prefill), blasst's CPU engine runs: bf16 inputs, K/V in e4m3 beside bf16 Q (an FP8 KV cache),
and Q/K/V all in e4m3 (bf16 output); each dense and at every --factors threshold. The reference
is dense attention of the stored float16 values in fp32. FP8 scales are per KV head (per query
head group for Q), amax / 448, as FP8 KV caches compute them. Reported per run: relative L2
error ||O - ref|| / ||ref||, the largest absolute error, and the sparsity (skipped / visited tiles),
so the error FP8 adds can be read against the error skipping adds. The numbers are exact
properties of the engine's arithmetic (no timing): any machine reproduces them.
--engine cuda runs the bf16 and all-FP8 variants on the GPU instead (the CUDA engine picks its own
tiles; an FP8 KV cache beside bf16 queries has no CUDA prefill kernel). Its FP8 prefill quantizes P
to e4m3 for P V, which the CPU engine does not: the rows show what that adds. The reference stays
the CPU engine's.
"""
import argparse
import datetime
import os
import platform
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "bench"))
from gpu_bench import append_rows, load_sample  # noqa: E402  (the benchmarks' helpers)
from provenance import source_commit  # noqa: E402

import blasst  # noqa: E402

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0
DEFAULT_SAMPLES = "smollm2_licenses_L23_all_2048,smollm2_licenses_L0_kv0_2048,smollm2_licenses_L23_kv1_8192"


def per_kv_head_scale(x: torch.Tensor, heads: int) -> torch.Tensor:
    """amax / 448 per KV head of x [B, L, H, D] (H = heads * g: a query head group per KV head)."""
    amax = x.float().abs().unflatten(2, (heads, -1)).amax(dim=(0, 1, 3, 4))
    return (amax / E4M3_MAX).clamp_min(1e-12)


def quantize(x: torch.Tensor, scale: torch.Tensor, heads: int) -> torch.Tensor:
    """x / scale rounded to e4m3, scale [heads] broadcast over each KV head's group of heads."""
    group = x.shape[2] // heads
    return (x.float() / scale.repeat_interleave(group).view(1, 1, -1, 1)).to(FP8)


def error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = out.double() - ref.double()
    return float(diff.norm() / ref.double().norm()), float(diff.abs().max())




def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", default=DEFAULT_SAMPLES, help="comma-separated sample names under data/samples")
    p.add_argument("--factors", default="100,1000", help="threshold_scale_factor values to run besides dense")
    p.add_argument("--block", type=int, default=128, help="block_m = block_n of the decision tiles")
    p.add_argument("--csv", help="append the rows to this CSV (bench/results/fp8_accuracy.csv)")
    p.add_argument("--threads", type=int, default=0, help="CPU engine threads (0 = all)")
    p.add_argument("--engine", default="cpu", choices=["cpu", "cuda"],
                   help="the engine of the bf16 and FP8 runs (the reference is always the CPU engine's)")
    args = p.parse_args()
    factors = [0.0] + [float(x) for x in args.factors.split(",") if x]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = []
    for name in [s for s in args.samples.split(",") if s]:
        q, k, v = (t.float() for t in load_sample(name))
        hkv = k.shape[2]
        geometry = dict(causal=True, phase="prefill", block_m=args.block, block_n=args.block, engine="cpu",
                        num_threads=args.threads, return_stats=True)
        ref, _, _ = blasst.attention(q, k, v, **geometry)
        qs, ks, vs = per_kv_head_scale(q, hkv), per_kv_head_scale(k, hkv), per_kv_head_scale(v, hkv)
        q8, k8, v8 = quantize(q, qs, hkv), quantize(k, ks, hkv), quantize(v, vs, hkv)
        if args.engine == "cuda":  # its own tiles, device tensors
            geometry = dict(causal=True, phase="prefill", engine="cuda", return_stats=True)
            q, k, v, q8, k8, v8, qs, ks, vs = (t.cuda() for t in (q, k, v, q8, k8, v8, qs, ks, vs))
        variants = {
            "bf16": lambda f: blasst.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), threshold_scale_factor=f,
                                               **geometry),
            "fp8-kv": None if args.engine == "cuda" else
            lambda f: blasst.attention(q.bfloat16(), k8, v8, k_scale=ks, v_scale=vs, threshold_scale_factor=f,
                                       **geometry),
            "fp8-all": lambda f: blasst.attention(q8, k8, v8, q_scale=qs, k_scale=ks, v_scale=vs,
                                                  threshold_scale_factor=f, **geometry),
        }
        for variant, run in ((name, run) for name, run in variants.items() if run is not None):
            for f in factors:
                out, _, stats = run(f)
                block = blasst.last_run_info().block_m if args.engine == "cuda" else args.block
                rel, mx = error(out.cpu(), ref)
                sparsity = float(stats[:, 1].sum()) / max(1, float(stats[:, 0].sum()))
                rows.append(dict(sample=name, L=q.shape[1], variant=variant, factor=f, sparsity=round(sparsity, 4),
                                 rel_l2=f"{rel:.3e}", max_abs=f"{mx:.3e}", block=block))
                print(f"{name} {variant} factor {f:g}: sparsity {sparsity:.3f} rel L2 {rel:.2e} max {mx:.2e}",
                      file=sys.stderr, flush=True)

    print("| sample | L | variant | factor | sparsity | rel. L2 error | max abs error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sample'].replace('smollm2_licenses_', '')} | {r['L']} | {r['variant']} | {r['factor']:g} | "
              f"{r['sparsity']:.3f} | {r['rel_l2']} | {r['max_abs']} |")
    if args.csv:
        fields = ["date", "commit", "machine", "engine", "sample", "L", "variant", "factor", "block", "sparsity",
                  "rel_l2", "max_abs"]
        machine = torch.cuda.get_device_name() if args.engine == "cuda" else platform.machine()
        append_rows(args.csv, [dict(r, date=stamp, commit=source_commit(), machine=machine, engine=args.engine)
                               for r in rows], fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())
