#!/usr/bin/env python3
"""GPU prefill benchmark: blasst dense and skip modes against PyTorch SDPA (cuDNN and
FlashAttention-2 backends) on the same structured inputs, side by side in one process.

    python3 bench/gpu_bench.py --phase prefill [--lib build/src/libblasst.so]
        [--seqlens 8192,16384,32768] [--causal 0,1] [--sf 1,10,100 | --lambdas 0.05,0.4,0.9] [--reps 30]
        [--csv bench/results/gpu_prefill.csv] [--commit HASH] [--fa3]
    python3 bench/gpu_bench.py --mla [--mla-heads 32,128] ...   # MLA's non-absorbed prefill shape
    python3 bench/gpu_bench.py --fp8 [--d 128] ...              # FP8 (e4m3) inputs, per-tensor scales

`--mla` times MLA's non-absorbed prefill: Q and K with head dim 192, V and O with 128, one KV head
per query head (B = 1, H = --mla-heads), through the sm_90a kernel, against FlashAttention-3's flash_attn_func (PyPI fa3-fwd) and the SDPA
backends that take 192/128 ("n/a" for those that do not). Its rows carry a dv column and go to
bench/results/gpu_prefill_mla.csv unless --csv says otherwise.

`--fp8` quantizes the same bf16 inputs to e4m3 per tensor (scale = amax / 448) and times our FP8
dense and skip modes (the sm_90a kernel)
beside FlashAttention-3's FP8 flash_attn_func (q/k/v in e4m3 with q_descale/k_descale/v_descale
of shape [B, Hkv]) and our bf16 dense and skip modes on the unquantized inputs, all in one
interleaved rotation; each skip mode's speedup is over the dense mode of its dtype. Rows carry dtype fp8_e4m3 (ours
and fa3) or bf16 (ours, cudnn, fa2) in bench/results/gpu_prefill.csv.

Inputs are built in torch with a sink (key 0), local windows (a positional component that
peaks on the diagonal) and heavy tails, so the measured sparsity is that of a structured
problem rather than of noise (`--sample` times a real attention sample of data/samples/
instead). Times are CUDA-event medians after warm-up; each timed call is
queued behind a short sleep kernel so that host-side launch cost stays out of the numbers.
Reported: dense-equivalent TFLOP/s (2*Lq*Lk*Hq*(Dqk+Dv) per entry, i.e. 4*Lq*Lk*D*Hq when
Dqk = Dv = D, halved for causal), sparsity
(skipped / visited tiles), speedups over our dense mode and the peers, and the ratio of the
speedup to the bound 2/(2-s). With BLASST_CUDA_PREFILL_KERNEL=sm80 (the Ampere kernel on Hopper)
our rows are named blasst-dense-sm80 and blasst-skip-sm80.
"""
import argparse
import contextlib
import csv
import ctypes
import datetime
import math
import os
import re
import statistics
import sys

import torch

# ---- the C ABI (include/blasst/blasst.h): the structs of the package's one binding ----
# (python/blasst/_lib.py; importing it loads no native library, so --lib picks the library)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from blasst._lib import BlasstArgs as Args, BlasstRunInfo as RunInfo, BlasstTensor as Tensor  # noqa: E402
from blasst._lib import DTYPE_BFLOAT16 as BF16, DTYPE_FLOAT16 as FP16, ENGINE_CUDA  # noqa: E402
from blasst._lib import DTYPE_FLOAT8_E4M3 as FP8  # noqa: E402
from blasst._lib import ORDER_ANCHORED, ORDER_ASCENDING  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import source_commit  # noqa: E402


class Blasst:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.blasst_prefill.argtypes = [ctypes.POINTER(Args), ctypes.POINTER(RunInfo)]
        self.lib.blasst_prefill.restype = ctypes.c_int
        self.lib.blasst_last_error.restype = ctypes.c_char_p
        self.lib.blasst_args_init.argtypes = [ctypes.POINTER(Args)]
        self.lib.blasst_run_info_init.argtypes = [ctypes.POINTER(RunInfo)]
        probe = Args()
        self.lib.blasst_args_init(ctypes.byref(probe))
        if probe.struct_size != ctypes.sizeof(Args):
            sys.exit(f"blasst_args layout mismatch: C says {probe.struct_size} bytes, ctypes {ctypes.sizeof(Args)}")

    def make_call(self, q, k, v, out, lse, causal, sf, order, stats=None, paged=None, scales=None):
        """Prepared arguments for q/k/v/out [B, L, H, D] contiguous tensors on the GPU; with
        paged = (k_pages, v_pages, block_table) K/V are read from the pages instead; FP8 (e4m3)
        q/k/v take scales = (q_scale, k_scale, v_scale), one-element fp32 tensors on the GPU."""
        a = Args()
        self.lib.blasst_args_init(ctypes.byref(a))
        B, Lq, Hq, D = q.shape
        Lk, Hkv = k.shape[1], k.shape[2]
        a.batch, a.num_q_heads, a.num_kv_heads = B, Hq, Hkv
        a.head_dim_qk, a.head_dim_v = D, v.shape[3]
        a.max_seqlen_q, a.max_seqlen_k = Lq, Lk
        dt = {torch.bfloat16: BF16, torch.float16: FP16, torch.float8_e4m3fn: FP8}[q.dtype]
        out_dt = BF16 if out.dtype == torch.bfloat16 else FP16

        def tensor(t, dtype):
            return Tensor(t.data_ptr(), dtype, t.stride(0), t.stride(1), t.stride(2), t.numel())

        a.q, a.k, a.v, a.out = tensor(q, dt), tensor(k, dt), tensor(v, dt), tensor(out, out_dt)
        if scales is not None:
            a.scales.q, a.scales.k, a.scales.v = (t.data_ptr() for t in scales)
            a.scales.per_kv_head = 0
        if paged is not None:
            kp, vp, table = paged
            a.k, a.v = tensor(kp, dt), tensor(vp, dt)
            a.block_table = table.data_ptr()
            a.block_table_stride = table.shape[1]
            a.page_size = kp.shape[1]
            a.num_pages = kp.shape[0]
        if lse is not None:
            a.lse = Tensor(lse.data_ptr(), 0, lse.stride(0), lse.stride(1), lse.stride(2), lse.numel())
        a.causal = int(causal)
        a.threshold.threshold_scale_factor = float(sf)
        a.geometry.order = order
        a.engine = ENGINE_CUDA
        a.stream = torch.cuda.current_stream().cuda_stream
        if stats is not None:
            a.stats_per_head = stats.data_ptr()
        return a

    def _prefill(self, a, info):
        st = self.lib.blasst_prefill(ctypes.byref(a), ctypes.byref(info) if info is not None else None)
        if st != 0:
            raise RuntimeError(f"blasst_prefill: {self.lib.blasst_last_error().decode()}")

    def launch(self, a):
        """The call as a caller times it: no run_info, so nothing waits for the statistics (with
        one, the engine copies the counts to the host and synchronizes, some 20-30 us per call
        that the peers' asynchronous calls do not pay)."""
        self._prefill(a, None)

    def run(self, a):
        """One call with a run_info: what the library reports (visited and skipped tiles)."""
        info = RunInfo()
        self.lib.blasst_run_info_init(ctypes.byref(info))
        self._prefill(a, info)
        return info


@contextlib.contextmanager
def env_set(name, value):
    """NAME=VALUE in this process's environment (which the library's getenv sees) for a block."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def append_rows(path, rows, fieldnames=None):
    """Appends dict rows to a CSV (the header first when the file is new). Shared by the benchmarks."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0].keys()))
        if new:
            w.writeheader()
        w.writerows(rows)


def to_pages(k, v, page, gen):
    """K/V [B, L, H, D] (V's D may differ: MLA) copied into pages [B * ceil(L / page), page, H, D] in a
    shuffled order (the last page of an entry zero-padded), as a paged cache holds them, and the
    block table [B, ceil(L / page)] that finds them. Shared with gpu_decode_bench.py."""
    b, lk, hkv, d = k.shape
    dv = v.shape[3]
    per_seq = (lk + page - 1) // page
    pages = b * per_seq
    order = torch.randperm(pages, device=k.device, generator=gen).to(torch.int32)
    table = order.view(b, per_seq).contiguous()
    kp = torch.zeros(pages, page, hkv, d, dtype=k.dtype, device=k.device)
    vp = torch.zeros(pages, page, hkv, dv, dtype=v.dtype, device=v.device)
    pad = per_seq * page - lk
    kpad = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad)).view(b, per_seq, page, hkv, d)
    vpad = torch.nn.functional.pad(v, (0, 0, 0, 0, 0, pad)).view(b, per_seq, page, hkv, dv)
    kp[table.long().flatten()] = kpad.flatten(0, 1)
    vp[table.long().flatten()] = vpad.flatten(0, 1)
    return kp, vp, table


# ---- structured inputs ----
def make_inputs(B, L, Hq, Hkv, D, dtype, seed, sink=6.0, window=3.0, tail=0.03, noise=0.5, Dv=None):
    """Q, K [B, L, H, D], V [B, L, Hkv, Dv] (Dv: D unless given): a sink on key 0, a positional
    component that peaks on the diagonal (local windows), heavy-tailed keys and values. Scores are
    in units of the scaled product."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = "cuda"
    root = math.sqrt(D)
    pos = torch.arange(L, device=dev, dtype=torch.float32)
    freqs = torch.tensor([0.3, 0.1, 0.03, 0.01], device=dev)
    amp = math.sqrt(window * root / len(freqs))
    ang = pos[:, None] * freqs[None, :]
    feat = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1).reshape(L, 2 * len(freqs)) * amp  # [L, 8]
    k = torch.randn(B, L, Hkv, D, device=dev, generator=g)
    k = k * torch.where(torch.rand(B, L, Hkv, 1, device=dev, generator=g) < tail, 3.0, 1.0)
    k[..., : feat.shape[1]] += feat[None, :, None, :]
    k[:, 0, :, 8] += math.sqrt(sink * root)
    q = noise * torch.randn(B, L, Hq, D, device=dev, generator=g)
    q[..., : feat.shape[1]] += feat[None, :, None, :]
    q[..., 8] += math.sqrt(sink * root)
    v = torch.randn(B, L, Hkv, Dv or D, device=dev, generator=g)
    v = v * torch.where(torch.rand(B, L, Hkv, 1, device=dev, generator=g) < tail, 5.0, 1.0)
    return q.to(dtype).contiguous(), k.to(dtype).contiguous(), v.to(dtype).contiguous()


def load_sample(prefix):
    """Q, K, V [B, L, H, D] (CPU tensors, dtype as stored) of a real attention sample: <prefix>_q.npy,
    _k.npy, _v.npy, where prefix is a path or a name under data/samples/ (data/samples/README.md).
    Exits with a message when a file is missing or the shapes do not fit together."""
    import numpy as np
    if not os.path.exists(f"{prefix}_q.npy") and os.sep not in prefix:
        prefix = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "samples", prefix)
    out = []
    for part in "qkv":
        path = f"{prefix}_{part}.npy"
        try:
            out.append(torch.from_numpy(np.load(path)))
        except (OSError, ValueError) as e:
            sys.exit(f"--sample: cannot read {path}: {e}")
    q, k, v = out
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3] \
            or q.shape[2] % k.shape[2] != 0:
        sys.exit(f"--sample {prefix}: expected q [B, L, Hq, D] and k, v [B, L, Hkv, D] with Hkv dividing Hq; got "
                 f"q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    return q, k, v


def time_ms(fn, warmup, reps):
    """Median of per-call CUDA-event times; a sleep kernel ahead of each call hides host cost."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(200_000)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_interleaved(fns, warmup, reps):
    """Median per-call CUDA-event time of each function, measured round-robin: every repetition
    times each function once, in an order rotated per repetition, so that clock and temperature
    drift over the run (large on a GPU at full power) lands on all of them alike instead of
    favouring whichever ran first."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times = [[] for _ in fns]
    for rep in range(reps):
        for j in range(len(fns)):
            i = (j + rep) % len(fns)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(200_000)
            start.record()
            fns[i]()
            end.record()
            end.synchronize()
            times[i].append(start.elapsed_time(end))
    return [statistics.median(t) for t in times]


def sdpa_fn(backend, q, k, v, causal):
    from torch.nn.attention import sdpa_kernel
    import torch.nn.functional as F
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[2] != k.shape[2]

    def native():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=bool(causal), enable_gqa=gqa)

    try:
        out = native()
        torch.cuda.synchronize()
        return native, out, "gqa" if gqa else "mha"
    except Exception:  # backend without GQA: expand K/V to the query heads
        rep = q.shape[2] // k.shape[2]
        ke, ve = kt.repeat_interleave(rep, dim=1), vt.repeat_interleave(rep, dim=1)

        def expanded():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qt, ke, ve, is_causal=bool(causal))

        try:
            out = expanded()
            torch.cuda.synchronize()
            return expanded, out, "kv-expanded"
        except Exception as e:  # backend refuses the shape
            return None, None, f"unavailable: {str(e).splitlines()[0][:80]}"


def quantize_e4m3(t):
    """Per-tensor e4m3 quantization: (stored values, scale as a one-element fp32 tensor), with
    t ~ stored * scale and scale = amax / 448."""
    scale = (t.float().abs().amax() / 448.0).clamp(min=1e-12).reshape(1)
    return (t.float() / scale).to(torch.float8_e4m3fn).contiguous(), scale.contiguous()


def fa3_fp8_fn(q8, k8, v8, scales, causal):
    """FlashAttention-3's FP8 forward on e4m3 [B, L, H, D] tensors with per-tensor scales given as
    descale factors of shape [B, Hkv]: (fn, out, how), or (None, None, why)."""
    try:
        import fa3_fwd_interface as fa3
    except (ImportError, OSError) as e:
        return None, None, f"n/a: cannot load fa3_fwd_interface ({str(e).splitlines()[0][:80]})"
    B, Hkv = q8.shape[0], k8.shape[2]
    qd, kd, vd = (s.expand(B, Hkv).contiguous() for s in scales)

    def run():
        out = fa3.flash_attn_func(q8, k8, v8, causal=bool(causal), q_descale=qd, k_descale=kd, v_descale=vd)
        return out[0] if isinstance(out, tuple) else out

    try:
        out = run()
        torch.cuda.synchronize()
        return run, out, "flash_attn_func fp8"
    except Exception as e:
        return None, None, f"n/a: {str(e).splitlines()[0][:80]}"


def fa3_fn(q, k, v, causal):
    """FlashAttention-3's dense forward (PyPI fa3-fwd: fa3_fwd_interface.flash_attn_func) on the same
    [B, L, H, D] tensors: (fn, out, how), or (None, None, why) where it cannot run them."""
    try:
        import fa3_fwd_interface as fa3
    except (ImportError, OSError) as e:
        return None, None, f"n/a: cannot load fa3_fwd_interface ({str(e).splitlines()[0][:80]})"

    def run():
        out = fa3.flash_attn_func(q, k, v, causal=bool(causal))
        return out[0] if isinstance(out, tuple) else out

    try:
        out = run()
        torch.cuda.synchronize()
        return run, out, "flash_attn_func"
    except Exception as e:  # a head dim pair this build has no kernel for
        return None, None, f"n/a: {str(e).splitlines()[0][:80]}"


def run_fp8(args, lib, q, k, v, q8, k8, v8, scales, out, lse, stats, causal, order, L, flops, record):
    """One (L, causal) of --fp8: our FP8 dense and skip modes, FlashAttention-3's FP8 forward, our
    bf16 dense and skip modes and the SDPA backends (bf16), timed in one interleaved rotation. CSV
    rows through record(); returns the printed table's rows (skip speedups over our FP8 dense)."""
    from torch.nn.attention import SDPBackend
    Hq = q.shape[2]
    sfs = [round(float(x) * L, 3) for x in args.lambdas.split(",")] if args.lambdas else \
        [float(x) for x in args.sf.split(",") if x]
    variants = []  # (name, dtype, sf, sparsity, fn, note)

    def ours(q_, k_, v_, sc, dtype):
        a = lib.make_call(q_, k_, v_, out, lse, causal, 0.0, order, scales=sc)
        lib.run(a)
        torch.cuda.synchronize()
        dense_out = out.clone()
        variants.append(("blasst-dense", dtype, 0, 0.0, lambda a=a: lib.launch(a), ""))
        for sf in sfs:
            info = lib.run(lib.make_call(q_, k_, v_, out, lse, causal, sf, order, stats, scales=sc))
            torch.cuda.synchronize()
            s = info.skipped / info.visited if info.visited > 0 else 0.0
            timed = lib.make_call(q_, k_, v_, out, lse, causal, sf, order, scales=sc)
            variants.append(("blasst-skip", dtype, sf, s, lambda a=timed: lib.launch(a), ""))
        return dense_out

    fp8_out = ours(q8, k8, v8, scales, "fp8_e4m3")
    bf16_out = ours(q, k, v, None, "bf16")
    err = (fp8_out.float() - bf16_out.float()).abs().max().item()
    variants[0] = variants[0][:5] + (f"max|fp8-bf16|={err:.3g}",)
    fn, ref, how = fa3_fp8_fn(q8, k8, v8, scales, causal)
    if fn is None:
        print(f"  L={L} H={Hq} causal={causal} fa3 fp8: {how}")
    else:
        e = (ref.float() - fp8_out.float()).abs().max().item()
        variants.append(("fa3", "fp8_e4m3", 0, 0.0, fn, f"{how} max|ours-fa3|={e:.3g}"))
    if not args.no_peers:
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
            fn, ref, how = sdpa_fn(backend, q, k, v, causal)
            if fn is None:
                print(f"  L={L} H={Hq} causal={causal} {name}: n/a ({how})")
                continue
            variants.append((name, "bf16", 0, 0.0, fn, how))
        if args.fa3:
            fn, ref, how = fa3_fn(q, k, v, causal)
            if fn is not None:
                variants.append(("fa3", "bf16", 0, 0.0, fn, how))
    times = time_interleaved([vt[4] for vt in variants], args.warmup, args.reps)
    dense_ms = {vt[1]: ms for vt, ms in zip(variants, times) if vt[0] == "blasst-dense"}
    peers = {f"{vt[0]}-{vt[1]}": ms for vt, ms in zip(variants, times) if not vt[0].startswith("blasst-")}
    table = []
    for (kernel, dtype, sf, s, _, note), ms in zip(variants, times):
        record(kernel, sf, s, ms, dtype)
        label = f"{kernel}/{'fp8' if dtype == 'fp8_e4m3' else dtype}"
        vs = " ".join(f"vs {n} {pms / ms:.3f}x" for n, pms in peers.items())
        if not kernel.startswith("blasst-"):
            table.append((Hq, L, causal, label, "-", 0.0, ms, flops / ms * 1e-9, dense_ms["fp8_e4m3"] / ms, None, "",
                          note))
        elif kernel == "blasst-dense":
            table.append((Hq, L, causal, label, "-", 0.0, ms, flops / ms * 1e-9, dense_ms["fp8_e4m3"] / ms, None, "",
                          (note + " " + vs).strip()))
        else:
            speedup = dense_ms[dtype] / ms
            table.append((Hq, L, causal, label, sf, s, ms, flops / ms * 1e-9, speedup, speedup / (2.0 / (2.0 - s)),
                          "", vs))
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", default="prefill", choices=["prefill"])
    ap.add_argument("--lib", default="build/src/libblasst.so")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hq", type=int, default=32)
    ap.add_argument("--hkv", type=int, default=8)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--seqlens", default="8192,16384,32768")
    ap.add_argument("--causal", default=None, help="0, 1 or 0,1 (default 0,1; with --sample 1)")
    ap.add_argument("--sf", default="1,10,100,300,1000,3000", help="threshold_scale_factor values for skip mode")
    ap.add_argument("--lambdas", default=None,
                    help="skip mode at lambda values instead: threshold_scale_factor = lambda * L per length")
    ap.add_argument("--order", default="ascending", choices=["ascending", "anchored"])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--csv", default=None, help="default bench/results/gpu_prefill.csv (--mla: gpu_prefill_mla.csv)")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--fa3", action="store_true",
                    help="also time FlashAttention-3's flash_attn_func (PyPI fa3-fwd) as a peer (on with --mla)")
    ap.add_argument("--mla", action="store_true",
                    help="MLA's non-absorbed prefill shape: Dqk 192, Dv 128, Hkv = Hq for each of --mla-heads")
    ap.add_argument("--mla-heads", default="32,128", help="query (= KV) head counts of the --mla runs")
    ap.add_argument("--fp8", action="store_true",
                    help="time our FP8 (e4m3, per-tensor scales) dense and skip modes beside FlashAttention-3's FP8 "
                         "flash_attn_func and our bf16 modes")
    ap.add_argument("--baseline-lib", default=None,
                    help="another libblasst.so (e.g. an earlier commit) whose dense and skip modes are timed in "
                         "the same interleaved rotation; printed as base-dense/base-skip, not written to the CSV")
    ap.add_argument("--twin", default=None, metavar="NAME=VALUE:TAG",
                    help="time every blasst variant a second time in the same rotation with the environment "
                         "variable NAME set to VALUE during its calls (a switch the engine reads per call, e.g. "
                         "BLASST_CUDA_SM90_D256=0:sm80); its rows are named blasst-*-TAG")
    ap.add_argument("--page", type=int, default=0,
                    help="our K/V from a paged cache of this page size (shuffled pages, a block table); the "
                         "peers read the contiguous tensors; rows named blasst-*-p<N>. 0: contiguous")
    ap.add_argument("--profile-once", action="store_true",
                    help="run dense, skip (first --sf) and fa2 once at the first length, for a profiler")
    ap.add_argument("--sample", default=None,
                    help="time a real attention sample instead of the structured inputs: a prefix of data/samples/ "
                         "(e.g. smollm2_licenses_L23_kv1_8192) or a path prefix of <p>_q.npy, _k.npy, _v.npy; the "
                         "shape comes from the files, causal only unless --causal says otherwise; rows named "
                         "blasst-*-real")
    args = ap.parse_args()
    sample = load_sample(args.sample) if args.sample else None
    if sample is not None:
        if args.profile_once:
            ap.error("--profile-once times the structured inputs; leave out --sample")
        args.batch, L_sample, args.hq, args.d = sample[0].shape
        args.hkv = sample[1].shape[2]
        args.seqlens = str(L_sample)
    if args.causal is None:
        args.causal = "1" if sample is not None else "0,1"  # the samples are causal self-attention
    if args.mla:
        if sample is not None:
            ap.error("--mla times the structured inputs; leave out --sample")
        args.d, args.fa3 = 192, True
    if args.fp8:
        if args.mla or sample is not None or args.page or args.baseline_lib or args.profile_once:
            ap.error("--fp8 times the structured inputs, contiguous, without --mla, --page, --baseline-lib, "
                     "--profile-once")
        if args.dtype != "bf16":
            ap.error("--fp8 quantizes bf16 inputs (our FP8 kernel writes bf16)")
    twin = None
    if args.twin:
        m = re.fullmatch(r"([A-Z0-9_]+)=([^:]*):([a-z0-9]+)", args.twin)
        if not m:
            ap.error(f"--twin {args.twin!r}: expected NAME=VALUE:TAG (e.g. BLASST_CUDA_SM90_D256=0:sm80)")
        if args.fp8 or args.baseline_lib or args.profile_once:
            ap.error("--twin times the bf16/fp16 variants; leave out --fp8, --baseline-lib and --profile-once")
        twin = m.groups()
    if args.csv is None:
        args.csv = "bench/results/gpu_prefill_mla.csv" if args.mla else "bench/results/gpu_prefill.csv"
    Dv = 128 if args.mla else args.d
    # (Hq, Hkv) of each run: --hq/--hkv, or with --mla each of --mla-heads with one KV head per query head
    head_configs = [(int(h), int(h)) for h in args.mla_heads.split(",") if h] if args.mla else [(args.hq, args.hkv)]

    from torch.nn.attention import SDPBackend
    lib = Blasst(args.lib)
    base = Blasst(args.baseline_lib) if args.baseline_lib else None
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    order = ORDER_ANCHORED if args.order == "anchored" else ORDER_ASCENDING
    gpu = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = args.commit or source_commit()
    # The engine picks the sm_90a kernel on Hopper; BLASST_CUDA_PREFILL_KERNEL=sm80 forces the
    # Ampere kernel there, and its rows are then named blasst-dense-sm80 / blasst-skip-sm80.
    sm80_forced = os.environ.get("BLASST_CUDA_PREFILL_KERNEL") == "sm80"
    kernel_suffix = "-sm80" if sm80_forced else ""
    if args.page:
        kernel_suffix += f"-p{args.page}"
    if sample is not None:
        kernel_suffix += "-real"
    sfs = [float(x) for x in args.sf.split(",") if x]
    if args.page and any(int(x) % args.page for x in args.seqlens.split(",")):
        sys.exit(f"--page {args.page} must divide every length in --seqlens")
    rows, table = [], []
    B, D = args.batch, args.d
    Hq, Hkv = head_configs[0]

    if args.profile_once:
        L = int(args.seqlens.split(",")[0])
        causal = int(args.causal.split(",")[0])
        q, k, v = make_inputs(B, L, Hq, Hkv, D, dtype, seed=L, Dv=Dv)
        pg = to_pages(k, v, args.page, torch.Generator(device="cuda").manual_seed(L)) if args.page else None
        out = q.new_empty(B, L, Hq, Dv)
        lse = torch.empty(B, L, Hq, device="cuda", dtype=torch.float32)
        lib.run(lib.make_call(q, k, v, out, lse, causal, 0.0, order, paged=pg))
        lib.run(lib.make_call(q, k, v, out, lse, causal, sfs[0], order, paged=pg))
        fn, _, _ = sdpa_fn(SDPBackend.FLASH_ATTENTION, q, k, v, causal)
        if fn is not None:
            fn()
        torch.cuda.synchronize()
        return

    for (Hq, Hkv), L in [(hc, int(x)) for hc in head_configs for x in args.seqlens.split(",")]:
        if sample is not None:
            q, k, v = (t.to("cuda", dtype).contiguous() for t in sample)
        else:
            q, k, v = make_inputs(B, L, Hq, Hkv, D, dtype, seed=L, Dv=Dv)
        pg = to_pages(k, v, args.page, torch.Generator(device="cuda").manual_seed(L)) if args.page else None
        out = q.new_empty(B, L, Hq, v.shape[3])
        lse = torch.empty(B, L, Hq, device="cuda", dtype=torch.float32)
        stats = torch.zeros(Hq, 2, device="cuda", dtype=torch.int64)
        if args.fp8:
            (q8, q_s), (k8, k_s), (v8, v_s) = quantize_e4m3(q), quantize_e4m3(k), quantize_e4m3(v)
            fp8_scales = (q_s, k_s, v_s)
        for causal in [int(x) for x in args.causal.split(",")]:
            flops = 2.0 * L * L * (D + v.shape[3]) * Hq * B / (2 if causal else 1)
            io_bytes = (q.numel() * 2 + k.numel() * 2 + v.numel() * 2 + out.numel() * 2)
            io_bytes_fp8 = q.numel() + k.numel() + v.numel() + out.numel() * 2

            def record(kernel, sf, sparsity, ms, dtype=None):
                fp8_row = dtype == "fp8_e4m3"
                if kernel.startswith("blasst-"):
                    kernel += kernel_suffix
                row = dict(gpu=gpu, date=date, commit=commit, phase="prefill", kernel=kernel, dtype=dtype or args.dtype,
                           batch=B, lq=L, lk=L, hq=Hq, hkv=Hkv, d=D, causal=causal, sf=sf,
                           sparsity=f"{sparsity:.4f}", ms=f"{ms:.4f}", tflops=f"{flops / ms * 1e-9:.1f}",
                           gbs=f"{(io_bytes_fp8 if fp8_row else io_bytes) / ms * 1e-6:.1f}")
                if args.mla:
                    row["dv"] = Dv
                rows.append(row)

            if args.fp8:
                table.extend(run_fp8(args, lib, q, k, v, q8, k8, v8, fp8_scales, out, lse, stats, causal, order, L,
                                     flops, record))
                continue
            # Every variant of this shape is set up first (and its sparsity measured), then all
            # are timed together, interleaved.
            dense_args = lib.make_call(q, k, v, out, lse, causal, 0.0, order, paged=pg)
            lib.run(dense_args)
            torch.cuda.synchronize()
            dense_out = out.clone()
            variants = [("blasst-dense", 0, 0.0, lambda a=dense_args: lib.launch(a), "")]
            if not args.no_peers:
                for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
                    fn, ref, how = sdpa_fn(backend, q, k, v, causal)
                    if fn is None:
                        print(f"  L={L} H={Hq} causal={causal} {name}: n/a ({how})")
                        continue
                    err = (ref.transpose(1, 2).float() - dense_out.float()).abs().max().item()
                    variants.append((name, 0, 0.0, fn, f"{how} max|ours-{name}|={err:.3g}"))
                if args.fa3:
                    fn, ref, how = fa3_fn(q, k, v, causal)
                    if fn is None:
                        print(f"  L={L} H={Hq} causal={causal} fa3: {how}")
                    else:
                        err = (ref.float() - dense_out.float()).abs().max().item()
                        variants.append(("fa3", 0, 0.0, fn, f"{how} max|ours-fa3|={err:.3g}"))
            for sf in ([round(float(x) * L, 3) for x in args.lambdas.split(",")] if args.lambdas else sfs):
                skip_args = lib.make_call(q, k, v, out, lse, causal, sf, order, stats, paged=pg)
                info = lib.run(skip_args)
                torch.cuda.synchronize()
                s = info.skipped / info.visited if info.visited > 0 else 0.0
                timed_args = lib.make_call(q, k, v, out, lse, causal, sf, order, paged=pg)
                variants.append(("blasst-skip", sf, s, lambda a=timed_args: lib.launch(a), ""))
            if twin is not None:
                # The same calls with the twin's switch set while they are made (the engine reads it per
                # call), each with its own sparsity: the switch may change the kernel and so the geometry.
                name, value, tag = twin
                for kernel, sf, _, _, _ in [vt for vt in variants if vt[0].startswith("blasst-")]:
                    with env_set(name, value):
                        info = lib.run(lib.make_call(q, k, v, out, lse, causal, sf, order, stats if sf else None,
                                                     paged=pg))
                        torch.cuda.synchronize()
                    s = info.skipped / info.visited if sf and info.visited > 0 else 0.0
                    timed_args = lib.make_call(q, k, v, out, lse, causal, sf, order, paged=pg)

                    def call(a=timed_args):
                        with env_set(name, value):
                            lib.launch(a)
                    variants.append((f"{kernel}-{tag}", sf, s, call, ""))
            if base is not None:
                # The baseline's variants, with its own sparsity (it may decide differently).
                for sf in [0.0] + ([round(float(x) * L, 3) for x in args.lambdas.split(",")] if args.lambdas else sfs):
                    info = base.run(base.make_call(q, k, v, out, lse, causal, sf, order, stats if sf else None, paged=pg))
                    torch.cuda.synchronize()
                    s = info.skipped / info.visited if sf and info.visited > 0 else 0.0
                    timed_args = base.make_call(q, k, v, out, lse, causal, sf, order, paged=pg)
                    variants.append(("base-dense" if sf == 0.0 else "base-skip", sf, s,
                                     lambda a=timed_args: base.launch(a), ""))
            times = time_interleaved([vt[3] for vt in variants], args.warmup, args.reps)
            dense_ms = times[0]
            peers = {vt[0]: ms for vt, ms in zip(variants, times) if vt[0] in ("cudnn", "fa2", "fa3")}
            ours = {(vt[0].split("-")[1], vt[1]): ms for vt, ms in zip(variants, times) if vt[0] in ("blasst-dense", "blasst-skip")}
            twin_dense = next((ms for vt, ms in zip(variants, times) if twin and vt[0] == f"blasst-dense-{twin[2]}"), None)
            base_dense = next((ms for vt, ms in zip(variants, times) if vt[0] == "base-dense"), None)
            for (kernel, sf, s, _, note), ms in zip(variants, times):
                if kernel.startswith("base-"):
                    speedup = base_dense / ms
                    mine = ours.get((kernel.split("-")[1], sf))
                    table.append((Hq, L, causal, kernel, sf if sf else "-", s, ms, flops / ms * 1e-9, speedup,
                                  speedup / (2.0 / (2.0 - s)) if sf else None, "",
                                  f"ours/base {ms / mine:.3f}x" if mine else ""))
                    continue
                record(kernel, sf, s, ms)
                if kernel in peers:
                    table.append((Hq, L, causal, kernel, "-", 0.0, ms, flops / ms * 1e-9, dense_ms / ms, None, "", note))
                elif kernel.startswith("blasst-dense"):
                    table.append((Hq, L, causal, kernel, "-", 0.0, ms, flops / ms * 1e-9, dense_ms / ms, None, "",
                                  " ".join(f"vs {n} {pms / ms:.3f}x" for n, pms in peers.items())))
                else:
                    # a skip mode's speedup is over the dense mode of the same kernel (the twin's over its own)
                    speedup = (twin_dense if twin and kernel.endswith("-" + twin[2]) else dense_ms) / ms
                    bound = 2.0 / (2.0 - s)
                    table.append((Hq, L, causal, kernel, sf, s, ms, flops / ms * 1e-9, speedup, speedup / bound, "",
                                  " ".join(f"vs {n} {pms / ms:.3f}x" for n, pms in peers.items())))
        del q, k, v, out, lse, pg
        if args.fp8:
            del q8, k8, v8, fp8_scales
        torch.cuda.empty_cache()

    fields = ["gpu", "date", "commit", "phase", "kernel", "dtype", "batch", "lq", "lk", "hq", "hkv", "d", "causal", "sf",
              "sparsity", "ms", "tflops", "gbs"] + (["dv"] if args.mla else [])
    if os.path.exists(args.csv):
        with open(args.csv, newline="") as f:
            header = next(csv.reader(f), None)
        if header and header != fields:
            sys.exit(f"{args.csv} has the columns {header}, these rows {fields}: pass another --csv")
    append_rows(args.csv, rows, fields)

    heads = ", ".join(f"Hq={h} Hkv={hk}" for h, hk in head_configs)
    print(f"{gpu}, {'fp8_e4m3 (bf16 beside)' if args.fp8 else args.dtype}, B={B} {heads} D={D}" + (f" Dv={Dv}" if Dv != D else "")
          + f", order={args.order}, commit {commit}"
          + (" (sm_80 kernel forced)" if sm80_forced else "")
          + (f", ours from {args.page}-token pages" if args.page else "")
          + (f", real sample {args.sample}" if sample is not None else ""))
    print(f"{'Hq':>4} {'L':>6} {'causal':>6} {'kernel':>13} {'sf':>7} {'sparsity':>8} {'ms':>9} {'TFLOP/s':>8} "
          f"{'vs dense':>8} {'/bound':>6}  notes")
    for (Hq, L, causal, kernel, sf, s, ms, tf, sp, rb, how, note) in table:
        rbs = f"{rb:6.3f}" if rb is not None else "     -"
        print(f"{Hq:>4} {L:>6} {causal:>6} {kernel:>13} {str(sf):>7} {s:8.3f} {ms:9.3f} {tf:8.1f} {sp:8.3f} {rbs}  "
              f"{how} {note}")
    print(f"rows appended to {args.csv}")


if __name__ == "__main__":
    main()
