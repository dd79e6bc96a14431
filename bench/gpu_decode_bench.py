#!/usr/bin/env python3
"""GPU decode benchmark: blasst dense and skip modes (paged and contiguous KV) against PyTorch
SDPA's cuDNN and FlashAttention-2 backends, on the same structured inputs in one process.

    python3 bench/gpu_decode_bench.py [--lib build-gpu/src/libblasst.so]
        [--points 1x131072,8x32768,32x16384,64x8192] [--hq 32] [--hkv 8] [--d 128] [--page 64]
        [--sf 0.5,2,8,32,128 | --lambdas 1e-4,1e-3,4e-3,0.016,0.06] [--order ascending|anchored]
        [--reps 50]
        [--csv bench/results/gpu_decode.csv] [--commit HASH]

Peers see GQA packed the usual way: query heads of one KV head become query rows of that head
(q [B, Hkv, G, D] against k/v [B, Hkv, Lk, D]), so they read K and V once, as ours does.
Reported: bytes of K+V per second (dense-equivalent: the whole cache counted even when tiles
are skipped), the GPU's measured copy bandwidth, sparsity, speedups over our dense mode and each
peer, and the ratio of the speedup to the bound 2/(2-s). Rows go to the CSV (the copy rate as a
row of kernel `device-copy`); `bench/decode_targets.py` prints each run's table from them and
checks the decode targets.

`--sf` gives the same threshold_scale_factors at every point, so the threshold lambda = sf / Lk is
16x smaller at 128K than at 8K and the long points skip little; `--lambdas` sets sf = lambda x Lk per
point instead, so every point is measured over the same range of thresholds.
"""
import argparse
import ctypes
import datetime
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import source_commit  # noqa: E402
from gpu_bench import Args, RunInfo, Tensor, append_rows, time_interleaved, to_pages  # noqa: E402  (C ABI structs, shared)

BF16 = 2
FP8 = 3  # float8_e4m3 (blasst_dtype)
ENGINE_CUDA = 2


def tensor_view(t, dtype_code, batch_stride, token_stride, head_stride):
    return Tensor(t.data_ptr(), dtype_code, batch_stride, token_stride, head_stride, t.numel())


class Decoder:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.blasst_decode.argtypes = [ctypes.POINTER(Args), ctypes.POINTER(RunInfo)]
        self.lib.blasst_decode.restype = ctypes.c_int
        self.lib.blasst_last_error.restype = ctypes.c_char_p
        self.lib.blasst_args_init.argtypes = [ctypes.POINTER(Args)]
        self.lib.blasst_run_info_init.argtypes = [ctypes.POINTER(RunInfo)]
        self.lib.blasst_workspace_size.argtypes = [ctypes.POINTER(Args), ctypes.c_int, ctypes.POINTER(ctypes.c_size_t)]
        self.lib.blasst_workspace_size.restype = ctypes.c_int

    def args(self, q, k, v, out, lk, sf, order, table=None, page=0, splits=0, scales=None):
        """q/out [B, 1, Hq, D]; k/v [B, Lk, Hkv, D] or pages [P, page, Hkv, D] with table [B, pages];
        FP8 k/v (torch.float8_e4m3fn) with scales = (k_scale, v_scale), one-value device tensors."""
        a = Args()
        self.lib.blasst_args_init(ctypes.byref(a))
        b, lq, hq, d = q.shape
        hkv = k.shape[2]
        a.batch, a.num_q_heads, a.num_kv_heads = b, hq, hkv
        a.head_dim_qk = a.head_dim_v = d
        a.max_seqlen_q, a.max_seqlen_k = lq, lk
        a.q = tensor_view(q, BF16, lq * hq * d, hq * d, d)
        a.out = tensor_view(out, BF16, lq * hq * d, hq * d, d)
        kv_code = FP8 if k.dtype == torch.float8_e4m3fn else BF16
        a.k = tensor_view(k, kv_code, k.stride(0), hkv * d, d)
        a.v = tensor_view(v, kv_code, v.stride(0), hkv * d, d)
        if scales is not None:
            a.scales.k, a.scales.v = scales[0].data_ptr(), scales[1].data_ptr()
        if table is not None:
            a.block_table = table.data_ptr()
            a.block_table_stride = table.shape[1]
            a.page_size = page
            a.num_pages = k.shape[0]
        a.causal = 1
        a.threshold.threshold_scale_factor = sf
        a.geometry.order = order
        a.geometry.splits = splits
        a.engine = ENGINE_CUDA
        return a, self.attach_workspace(a)

    def attach_workspace(self, a):
        """Runs `a` on the current stream with a workspace of the size the library asks for (returned:
        keep it alive while `a` is used)."""
        a.stream = torch.cuda.current_stream().cuda_stream
        size = ctypes.c_size_t(0)
        if self.lib.blasst_workspace_size(ctypes.byref(a), 1, ctypes.byref(size)) != 0:
            sys.exit("blasst_workspace_size: " + self.lib.blasst_last_error().decode())
        ws = torch.empty(max(size.value, 1), dtype=torch.uint8, device="cuda")
        a.workspace, a.workspace_bytes = ws.data_ptr(), size.value
        return ws

    def run(self, a, info=None):
        rc = self.lib.blasst_decode(ctypes.byref(a), ctypes.byref(info) if info is not None else None)
        if rc != 0:
            sys.exit("blasst_decode: " + self.lib.blasst_last_error().decode())

    def run_reported(self, a):
        """One call with a run_info: what the library reports (geometry, visited and skipped tiles)."""
        info = RunInfo()
        self.lib.blasst_run_info_init(ctypes.byref(info))
        self.run(a, info)
        return info


def sparsity(info):
    return info.skipped / max(info.visited, 1)


def structured_inputs(b, lk, hq, hkv, d, gen):
    """Sink at key 0, a local window over the last 256 keys, heavy-tailed keys elsewhere."""
    direction = torch.randn(d, device="cuda", generator=gen)
    q = (0.6 * torch.randn(b, 1, hq, d, device="cuda", generator=gen) + 0.25 * direction).to(torch.bfloat16)
    k = torch.distributions.StudentT(torch.tensor(3.0, device="cuda")).sample((b, lk, hkv, d)) * 0.5
    k[:, 0] += 3.0 * direction
    k[:, max(lk - 256, 1):] += 1.2 * direction
    v = torch.randn(b, lk, hkv, d, device="cuda", generator=gen)
    return q, k.to(torch.bfloat16), v.to(torch.bfloat16)


def time_ms(fn, reps, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(20000)  # keep host launch cost out of the timed span
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def copy_bandwidth_gbs():
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), 10)
    return 2 * x.numel() / ms / 1e6


def fa3_module():
    """FlashAttention-3's Python interface (PyPI fa3-fwd), or None with a message."""
    try:
        import fa3_fwd_interface
        return fa3_fwd_interface
    except (ImportError, OSError) as err:
        print(f"  fa3: cannot load fa3_fwd_interface ({err})")
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build-gpu/src/libblasst.so", help="path of libblasst.so (CUDA build)")
    ap.add_argument("--points", default="1x131072,8x32768,32x16384,64x8192", help="batch x context, comma separated")
    ap.add_argument("--hq", type=int, default=32)
    ap.add_argument("--hkv", type=int, default=8)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--page", type=int, default=64,
                    help="page size of the paged KV cache (tokens); rows of sizes other than 64 are named blasst-*-p<N>")
    ap.add_argument("--sf", default="0.5,2,8,32,128", help="threshold_scale_factor values for the skip mode")
    ap.add_argument("--lambdas", default="",
                    help="thresholds lambda for the skip mode, sf = lambda x Lk per point (replaces --sf)")
    ap.add_argument("--order", default="ascending", choices=["ascending", "anchored"])
    ap.add_argument("--reps", type=int, default=50, help="timed repetitions (median)")
    ap.add_argument("--csv", default="bench/results/gpu_decode.csv")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--baseline-lib", default=None,
                    help="a second libblasst.so: its dense and skip modes are timed in the same interleaved "
                         "rotation as ours at every point and factor (printed, not recorded)")
    ap.add_argument("--splits", default="", help="also time dense paged at these forced split counts (printed, not recorded)")
    ap.add_argument("--fa3", action="store_true",
                    help="also time FlashAttention-3's decode (PyPI fa3-fwd: fa3_fwd_interface.flash_attn_with_kvcache) "
                         "on the same cache, contiguous (that build has no paged KV), bf16 (row fa3) and with --fp8 "
                         "in e4m3 (row fa3-fp8; FA3 takes the query in e4m3 too)")
    ap.add_argument("--fp8", action="store_true",
                    help="also time an FP8 (e4m3) copy of the paged cache, per-tensor scales (rows blasst-fp8-*; "
                         "GB/s count the FP8 cache's bytes)")
    opts = ap.parse_args()
    try:
        lambdas = [float(x) for x in opts.lambdas.split(",") if x]
    except ValueError:
        ap.error(f"--lambdas {opts.lambdas!r}: expected a comma list of numbers")
    if any(not 0 < x < 1 for x in lambdas):
        ap.error("--lambdas: every lambda must lie in (0, 1); lambda >= 1 turns skipping off (SPEC section 4)")

    gpu = torch.cuda.get_device_name()
    # one timestamp per run, so that bench/decode_targets.py can tell runs of one day apart
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = opts.commit or source_commit()
    dec = Decoder(opts.lib)
    base = Decoder(opts.baseline_lib) if opts.baseline_lib else None
    order = 1 if opts.order == "anchored" else 0
    # the CSV has no order column: anchored-order skip rows are told apart by their kernel name
    skip_kernel = "blasst-skip-anchored" if order else "blasst-skip"
    copy_gbs = copy_bandwidth_gbs()
    print(f"{gpu}: device copy {copy_gbs:.0f} GB/s (bytes read + written)")
    # the copy rate goes into the CSV too (kernel device-copy, no shape): the dense target is a
    # share of it
    rows = [dict(gpu=gpu, date=date, commit=commit, phase="decode", kernel="device-copy", dtype="bf16", batch=0, lq=0,
                 lk=0, hq=0, hkv=0, d=0, causal=0, sf=0, sparsity="0.0000", ms="0", tflops="0", gbs=f"{copy_gbs:.1f}")]
    torch.manual_seed(0)  # StudentT samples from the global generator
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    for point in opts.points.split(","):
        b, lk = (int(x) for x in point.split("x"))
        hq, hkv, d = opts.hq, opts.hkv, opts.d
        q, k, v = structured_inputs(b, lk, hq, hkv, d, gen)
        kp, vp, table = to_pages(k, v, opts.page, gen)
        out = torch.empty_like(q)
        kv_bytes = 2 * b * lk * hkv * d * 2

        def record(kernel, sf, sparsity, ms):
            fp8 = "fp8" in kernel
            gbs = (kv_bytes // 2 if fp8 else kv_bytes) / ms / 1e6
            if kernel.startswith("blasst-") and not kernel.endswith("-contig") and opts.page != 64:
                kernel += f"-p{opts.page}"  # the tables quote 64-token pages; other sizes are named
            tflops = 4.0 * b * lk * d * hq / ms / 1e9
            rows.append(dict(gpu=gpu, date=date, commit=commit, phase="decode", kernel=kernel,
                             dtype="fp8_e4m3" if fp8 else "bf16", batch=b,
                             lq=1, lk=lk, hq=hq, hkv=hkv, d=d, causal=1, sf=sf, sparsity=f"{sparsity:.4f}",
                             ms=f"{ms:.4f}", tflops=f"{tflops:.2f}", gbs=f"{gbs:.1f}"))
            return gbs

        # peers: GQA packed as Hkv heads x G query rows
        qp = q.view(b, hkv, hq // hkv, d)  # [B, 1, Hq, D] -> [B, Hkv, G, D]
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # [B, Hkv, Lk, D] views
        peers = {}
        ref = None
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    ref = F.scaled_dot_product_attention(qp, kt, vt)
                    peers[name] = time_ms(lambda: F.scaled_dot_product_attention(qp, kt, vt), opts.reps)
            except RuntimeError as err:
                print(f"  {name}: not available ({str(err).splitlines()[0][:80]})")
        dense_args = {}
        for layout in ("paged", "contiguous"):
            a, ws = dec.args(q, kp if layout == "paged" else k, vp if layout == "paged" else v, out, lk, 0.0, order,
                             table if layout == "paged" else None, opts.page)
            dense_args[layout] = (a, ws)
        a, _ = dense_args["paged"]
        auto_splits = dec.run_reported(a).geometry.splits  # what the library's heuristic picked
        torch.cuda.synchronize()
        err = float("nan") if ref is None else (out.view(b, hkv, hq // hkv, d).float() - ref.float()).abs().max().item()
        dense_ms = {lay: time_ms(lambda a=args[0]: dec.run(a), opts.reps) for lay, args in dense_args.items()}
        print(f"\nB={b} Lk={lk} Hq={hq} Hkv={hkv} D={d} page={opts.page}: dense max |ours - peer| = {err:.2e}, "
              f"{auto_splits} splits")
        print(f"  {'kernel':<22}{'sf':>8}{'sparsity':>10}{'ms':>10}{'GB/s':>9}{'%copy':>7}{'vs dense':>9}"
              f"{'vs cudnn':>9}{'vs fa2':>8}{'/bound':>8}")

        def line(kernel, sf, s, ms):
            gbs = record(kernel, sf, s, ms)  # of the bytes the kernel's cache holds (FP8: half)
            vs = lambda p: f"{peers[p] / ms:.2f}x" if p in peers else "-"  # noqa: E731
            bound = 2.0 / (2.0 - s)
            print(f"  {kernel:<22}{sf:>8}{s:>10.3f}{ms:>10.3f}{gbs:>9.0f}{100 * gbs / copy_gbs:>6.0f}%"
                  f"{dense_ms['paged'] / ms:>8.2f}x{vs('cudnn'):>9}{vs('fa2'):>8}"
                  f"{dense_ms['paged'] / ms / bound:>8.2f}")

        fa3 = fa3_module() if opts.fa3 else None
        lens = torch.full((b,), lk, dtype=torch.int32, device="cuda")
        if fa3 is not None:
            try:
                # this FA3 build takes contiguous caches only: it reads k, v [B, Lk, Hkv, D]
                fa3_out = fa3.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens, causal=True)
                torch.cuda.synchronize()
                err3 = (fa3_out.view(b, hkv, hq // hkv, d).float() - ref.float()).abs().max().item() if ref is not None else 0
                print(f"  fa3: max |fa3 - peer| = {err3:.2e}")
                peers["fa3"] = time_ms(lambda q=q, k=k, v=v: fa3.flash_attn_with_kvcache(
                    q, k, v, cache_seqlens=lens, causal=True), opts.reps)
            except RuntimeError as err:
                print(f"  fa3: not available ({str(err).splitlines()[0][:100]})")
        for name, ms in peers.items():
            line(name, 0, 0.0, ms)
        line("blasst-dense", 0, 0.0, dense_ms["paged"])
        line("blasst-dense-contig", 0, 0.0, dense_ms["contiguous"])
        for sp in (int(x) for x in opts.splits.split(",") if x):
            a, ws = dec.args(q, kp, vp, out, lk, 0.0, order, table, opts.page, splits=sp)
            ms = time_ms(lambda a=a: dec.run(a), opts.reps)
            print(f"  dense splits={sp:<4}{'':>22}{ms:>10.3f}{kv_bytes / ms / 1e6:>9.0f}{100 * kv_bytes / ms / 1e6 / copy_gbs:>6.0f}%")
        factors = [x * lk for x in lambdas] if lambdas else [float(x) for x in opts.sf.split(",") if x]
        for sf in factors:
            a, ws = dec.args(q, kp, vp, out, lk, sf, order, table, opts.page)
            s = sparsity(dec.run_reported(a))
            ms = time_ms(lambda a=a: dec.run(a), opts.reps)
            line(skip_kernel, sf, s, ms)
            for sp in (int(x) for x in opts.splits.split(",") if x):
                a, ws = dec.args(q, kp, vp, out, lk, sf, order, table, opts.page, splits=sp)
                s = sparsity(dec.run_reported(a))
                ms = time_ms(lambda a=a: dec.run(a), opts.reps)
                print(f"  skip sf={sf:<6} splits={sp:<4} s={s:.3f} {ms:.3f} ms {kv_bytes / ms / 1e6:.0f} GB/s"
                      f" x{dense_ms['paged'] / ms:.2f} bound {dense_ms['paged'] / ms / (2 / (2 - s)):.2f}")
        if opts.fp8:
            # per-tensor scales amax / 448; the same paged layout, shuffled anew (bytes as uint8)
            scales = tuple((t.float().abs().amax() / 448.0).reshape(1) for t in (k, v))
            k8, v8 = ((t.float() / s).to(torch.float8_e4m3fn) for t, s in zip((k, v), scales))
            kp8, vp8, table8 = to_pages(k8.view(torch.uint8), v8.view(torch.uint8), opts.page, gen)
            kp8, vp8 = kp8.view(torch.float8_e4m3fn), vp8.view(torch.float8_e4m3fn)
            out8 = torch.empty_like(q)
            a8, ws8 = dec.args(q, kp8, vp8, out8, lk, 0.0, order, table8, opts.page, scales=scales)
            dec.run(a8)
            torch.cuda.synchronize()
            if ref is not None:
                err8 = (out8.view(b, hkv, hq // hkv, d).float() - ref.float()).abs().max().item()
                print(f"  fp8: max |ours - bf16 peer| = {err8:.2e} (quantization included)")
            line("blasst-fp8-dense", 0, 0.0, time_ms(lambda: dec.run(a8), opts.reps))
            if fa3 is not None:
                try:  # FA3's FP8 path quantizes q too; descales [B, Hkv]
                    q8 = q.to(torch.float8_e4m3fn)
                    ones = torch.ones(b, hkv, device="cuda")
                    kd, vd = (s.expand(b, hkv).contiguous() for s in scales)

                    def fa3_fp8():
                        return fa3.flash_attn_with_kvcache(q8, k8, v8, cache_seqlens=lens, q_descale=ones,
                                                           k_descale=kd, v_descale=vd, causal=True)

                    out3 = fa3_fp8()
                    torch.cuda.synchronize()
                    print(f"  fa3-fp8: max |fa3-fp8 - ours fp8| = {(out3.float() - out8.float()).abs().max().item():.2e}")
                    line("fa3-fp8", 0, 0.0, time_ms(fa3_fp8, opts.reps))
                except RuntimeError as err:
                    print(f"  fa3-fp8: not available ({str(err).splitlines()[0][:100]})")
            for sf in factors:
                a8s, ws8s = dec.args(q, kp8, vp8, out8, lk, sf, order, table8, opts.page, scales=scales)
                s = sparsity(dec.run_reported(a8s))
                line(skip_kernel.replace("blasst-", "blasst-fp8-"), sf, s, time_ms(lambda a=a8s: dec.run(a), opts.reps))
            del kp8, vp8
        if base is not None:
            print(f"  same-run A/B against {opts.baseline_lib} (paged):")
            for sf in [0.0] + factors:
                ours_a, ours_ws = dec.args(q, kp, vp, out, lk, sf, order, table, opts.page)
                base_a, base_ws = base.args(q, kp, vp, out, lk, sf, order, table, opts.page)
                ours_ms, base_ms = time_interleaved([lambda: dec.run(ours_a), lambda: base.run(base_a)], 5, opts.reps)
                print(f"  {'dense' if sf == 0 else 'skip':<6}sf={sf:<10g} ours {ours_ms:.4f} ms  base {base_ms:.4f} ms"
                      f"  ours/base speed {base_ms / ours_ms:.3f}x")
        del q, k, v, kp, vp, out
        if opts.fp8:
            del k8, v8
        torch.cuda.empty_cache()

    append_rows(opts.csv, rows)
    print(f"\n{len(rows)} rows appended to {opts.csv}")


if __name__ == "__main__":
    main()
