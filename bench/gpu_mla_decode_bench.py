#!/usr/bin/env python3
"""MLA decode benchmark (absorbed multi-head latent attention, DeepSeek-V2/V3 shapes): blasst's
sm_90a MLA kernel, dense and skip modes, on a paged (64-token pages) and a contiguous latent cache,
against FlashAttention-3's MLA decode path (PyPI fa3-fwd: flash_attn_with_kvcache with `qv`,
contiguous cache only) on the same tensors, in one process.

    python3 bench/gpu_mla_decode_bench.py --lib build-gpu/python/libblasst_py.so
        [--points 64x8192,32x32768,128x4096] [--hq 128] [--lq 1,2] [--page 64]
        [--lambdas 1e-3,4e-3,0.016,0.06] [--order ascending|anchored] [--reps 30]
        [--csv bench/results/gpu_mla_decode.csv] [--commit HASH]

Q is [B, Lq, Hq, 576] (512 "nope" + 64 rope values per head), the cache one latent vector of 576
values per token ([pages, 64, 1, 576] or [B, Lk, 1, 576]); V is its first 512 values, the same
memory. FA3 gets the same numbers split the way its MLA path takes them: q_rope = q[..., 512:],
qv = q[..., :512], k_cache = latent[..., 512:], v_cache = latent[..., :512].

Reported per point: TFLOP/s dense-equivalent (2 x Hq x Lq x Lk x (576 + 512) per entry), bytes of
latent cache per second, sparsity, speedup over our dense mode and over FA3, and the ratio of the
speedup to the compute-bound bound (576 + 512) / (576 + (1 - s) 512). The sparsity of the 64-pair
decision groups is also compared, on the CPU engine and a slice of the inputs, with one group of
all heads (SPEC section 2). Rows go to the CSV (the copy rate as a row of kernel `device-copy`).
"""
import argparse
import ctypes
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import source_commit  # noqa: E402
from gpu_bench import Args, Tensor, append_rows, to_pages  # noqa: E402  (C ABI structs, shared)
from gpu_decode_bench import Decoder, copy_bandwidth_gbs, fa3_module, time_ms  # noqa: E402

BF16 = 2
ENGINE_CPU, ENGINE_CUDA = 1, 2
DQK, DV = 576, 512


class Mla(Decoder):
    """blasst_decode through the C ABI for the MLA layout (V = the latent's first 512 values)."""

    def args(self, q, latent, out, lk, sf, order, table=None, page=0, engine=ENGINE_CUDA, block_m=0):
        """q [B, Lq, Hq, 576], out [B, Lq, Hq, 512], latent [B, Lk, 1, 576] or pages [P, page, 1, 576]."""
        a = Args()
        self.lib.blasst_args_init(ctypes.byref(a))
        b, lq, hq, _ = q.shape
        a.batch, a.num_q_heads, a.num_kv_heads = b, hq, 1
        a.head_dim_qk, a.head_dim_v = DQK, DV
        a.max_seqlen_q, a.max_seqlen_k = lq, lk
        a.q = Tensor(q.data_ptr(), BF16, lq * hq * DQK, hq * DQK, DQK, q.numel())
        a.out = Tensor(out.data_ptr(), BF16, lq * hq * DV, hq * DV, DV, out.numel())
        a.k = Tensor(latent.data_ptr(), BF16, latent.stride(0), DQK, DQK, latent.numel())
        a.v = a.k  # the same memory and strides: V is the first 512 values of each latent vector
        if table is not None:
            a.block_table = table.data_ptr()
            a.block_table_stride = table.shape[1]
            a.page_size = page
            a.num_pages = latent.shape[0]
        a.causal = 1
        a.threshold.threshold_scale_factor = sf
        a.geometry.order = order
        a.geometry.block_m = block_m
        a.engine = engine
        return a, (self.attach_workspace(a) if engine == ENGINE_CUDA else None)


def latent_inputs(b, lq, hq, lk, gen):
    """Queries sharing a direction with an attention sink (token 0) and a local window (the last
    256 tokens) of heavy-tailed latent vectors, so that middle tiles can be skipped."""
    direction = 0.5 * torch.randn(DQK, device="cuda", generator=gen)
    q = (0.5 * torch.randn(b, lq, hq, DQK, device="cuda", generator=gen) + 0.6 * direction).to(torch.bfloat16)
    latent = torch.distributions.StudentT(torch.tensor(3.0, device="cuda")).sample((b, lk, 1, DQK)) * 0.3
    latent[:, 0] += 3.0 * direction
    latent[:, max(lk - 256, 1):] += 1.2 * direction
    return q, latent.to(torch.bfloat16)


def fp64_reference(q, latent, lk):
    """Dense causal attention of entry 0 in fp64 on the GPU: [Lq, Hq, 512]."""
    lq = q.shape[1]
    s = torch.einsum("qhd,kd->hqk", q[0].double(), latent[0, :, 0].double()) * DQK ** -0.5
    visible = torch.arange(lk, device=q.device)[None, :] <= torch.arange(lq, device=q.device)[:, None] + lk - lq
    s = s.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,kd->qhd", s.softmax(-1), latent[0, :, 0, :DV].double())


def group_sparsity(mla, q, latent, lk, sf, order):
    """Sparsity of 64-pair groups and of one group of all heads, CPU engine, entry 0 only."""
    qc = q[:1].cpu().contiguous()
    kc = latent[:1].cpu().contiguous()
    res = []
    for block_m in (64, 0):
        out = torch.empty(qc.shape[:-1] + (DV,), dtype=torch.bfloat16)
        a, _ = mla.args(qc, kc, out, lk, sf, order, engine=ENGINE_CPU, block_m=block_m)
        a.geometry.block_n = 64
        info = mla.run_reported(a)
        res.append(info.skipped / max(info.visited, 1))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build-gpu/python/libblasst_py.so", help="libblasst (CUDA build with sm_90a)")
    ap.add_argument("--points", default="64x8192,32x32768,128x4096", help="batch x context, comma separated")
    ap.add_argument("--hq", type=int, default=128, help="query heads sharing the latent head")
    ap.add_argument("--lq", default="1,2", help="query tokens per request (2: multi-token prediction)")
    ap.add_argument("--page", type=int, default=64)
    ap.add_argument("--lambdas", default="1e-3,4e-3,0.016,0.06", help="skip thresholds lambda; sf = lambda x Lk")
    ap.add_argument("--order", default="ascending", choices=["ascending", "anchored"])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-cpu-groups", action="store_true", help="skip the CPU comparison of group sizes")
    ap.add_argument("--csv", default="bench/results/gpu_mla_decode.csv")
    ap.add_argument("--commit", default=None)
    opts = ap.parse_args()

    gpu = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = opts.commit or source_commit()
    mla = Mla(opts.lib)
    order = 1 if opts.order == "anchored" else 0
    skip_kernel = "blasst-skip-anchored" if order else "blasst-skip"
    # BLASST_CUDA_MLA_CLUSTER=1 (multicast clusters, opt-in) names its rows apart, for same-lend A/B runs
    tag = "-cluster" if os.environ.get("BLASST_CUDA_MLA_CLUSTER", "") == "1" else ""
    copy_gbs = copy_bandwidth_gbs()
    print(f"{gpu}: device copy {copy_gbs:.0f} GB/s (bytes read + written)")
    base = dict(gpu=gpu, date=date, commit=commit, phase="mla-decode")
    rows = [dict(base, kernel="device-copy", batch=0, lq=0, lk=0, hq=0, sf=0, sparsity="0.0000", ms="0",
                 tflops="0", gbs=f"{copy_gbs:.1f}", vs_dense="", vs_fa3="", bound_ratio="")]
    torch.manual_seed(0)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    fa3 = fa3_module()
    lambdas = [float(x) for x in opts.lambdas.split(",") if x]
    for lq in (int(x) for x in opts.lq.split(",")):
        for point in opts.points.split(","):
            b, lk = (int(x) for x in point.split("x"))
            hq = opts.hq
            q, latent = latent_inputs(b, lq, hq, lk, gen)
            lp, _, table = to_pages(latent, latent[..., :1], opts.page, gen)
            out = torch.empty(b, lq, hq, DV, dtype=torch.bfloat16, device="cuda")
            flops = 2.0 * b * lq * hq * lk * (DQK + DV)
            cache_bytes = b * lk * DQK * 2
            peers = {}
            ref = None
            exact = fp64_reference(q, latent, lk)
            scale_of = exact.abs().max().item()
            if fa3 is not None:
                lens = torch.full((b,), lk, dtype=torch.int32, device="cuda")
                q_rope, q_nope = q[..., DV:], q[..., :DV]
                k_rope, v_lat = latent[..., DV:], latent[..., :DV]

                def fa3_call():
                    return fa3.flash_attn_with_kvcache(q_rope, k_rope, v_lat, qv=q_nope, cache_seqlens=lens,
                                                       causal=True, softmax_scale=DQK ** -0.5)

                try:
                    ref = fa3_call()
                    ref = ref[0] if isinstance(ref, tuple) else ref
                    print(f"  fa3: max |fa3 - fp64| on entry 0 = {(ref[0].double() - exact).abs().max().item():.2e}"
                          f" (max |fp64| {scale_of:.2f})")
                    peers["fa3"] = time_ms(fa3_call, opts.reps)
                except (RuntimeError, TypeError) as err:
                    print(f"  fa3: not available ({str(err).splitlines()[0][:100]})")
            dense = {}
            for layout in ("paged", "contig"):
                a, ws = mla.args(q, lp if layout == "paged" else latent, out, lk, 0.0, order,
                                 table if layout == "paged" else None, opts.page)
                info = mla.run_reported(a)
                torch.cuda.synchronize()
                err = (out[0].double() - exact).abs().max().item()
                print(f"  {layout}: max |ours - fp64| on entry 0 = {err:.2e}"
                      + (f", max |ours - fa3| = {(out.float() - ref.float()).abs().max().item():.2e}" if ref is not None else ""))
                dense[layout] = (time_ms(lambda a=a: mla.run(a), opts.reps), info.geometry.splits)
            d_ms = dense["paged"][0]
            print(f"\nHq={hq} Lq={lq} B={b} Lk={lk} page={opts.page}: {dense['paged'][1]} splits")
            print(f"  {'kernel':<22}{'sf':>8}{'sparsity':>9}{'ms':>9}{'TFLOP/s':>9}{'GB/s':>7}{'%copy':>6}"
                  f"{'vs dense':>9}{'vs fa3':>8}{'/bound':>8}")

            def line(kernel, sf, s, ms):
                kernel += tag if kernel.startswith("blasst") else ""
                tf, gbs = flops / ms / 1e9, cache_bytes / ms / 1e6
                bound = (DQK + DV) / (DQK + (1 - s) * DV)
                vs_fa3 = peers["fa3"] / ms if "fa3" in peers else float("nan")
                print(f"  {kernel:<22}{sf:>8.4g}{s:>9.3f}{ms:>9.3f}{tf:>9.0f}{gbs:>7.0f}{100 * gbs / copy_gbs:>5.0f}%"
                      f"{d_ms / ms:>8.2f}x{vs_fa3:>7.2f}x{d_ms / ms / bound:>8.2f}")
                rows.append(dict(base, kernel=kernel, batch=b, lq=lq, lk=lk, hq=hq, sf=f"{sf:.6g}", sparsity=f"{s:.4f}",
                                 ms=f"{ms:.4f}", tflops=f"{tf:.1f}", gbs=f"{gbs:.1f}", vs_dense=f"{d_ms / ms:.3f}",
                                 vs_fa3=f"{vs_fa3:.3f}", bound_ratio=f"{d_ms / ms / bound:.3f}"))

            for name, ms in peers.items():
                line(name, 0, 0.0, ms)
            line("blasst-dense", 0, 0.0, d_ms)
            line("blasst-dense-contig", 0, 0.0, dense["contig"][0])
            for lam in lambdas:
                sf = lam * lk
                a, ws = mla.args(q, lp, out, lk, sf, order, table, opts.page)
                info = mla.run_reported(a)
                s = info.skipped / max(info.visited, 1)
                line(skip_kernel, sf, s, time_ms(lambda a=a: mla.run(a), opts.reps))
                if not opts.no_cpu_groups and point == opts.points.split(",")[0]:
                    g64, gall = group_sparsity(mla, q, latent, lk, sf, order)
                    print(f"  {'':<22}CPU entry 0: sparsity with 64-pair groups {g64:.3f}, one group of all "
                          f"{hq * lq} pairs {gall:.3f}")
            del q, latent, lp, out
            torch.cuda.empty_cache()
    append_rows(opts.csv, rows)
    print(f"\n{len(rows)} rows appended to {opts.csv}")


if __name__ == "__main__":
    main()
