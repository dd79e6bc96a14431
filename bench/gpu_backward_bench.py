#!/usr/bin/env python3
"""GPU backward benchmark: the gradients of BLASST attention over the kept tiles of the forward's
decisions, through blasst's torch formulas and through FlexAttention with a BlockMask of the kept
tiles, against the dense backward of PyTorch SDPA (cuDNN and FlashAttention-2), same inputs, one run.

    python3 bench/gpu_backward_bench.py [--seqlens 4096,8192] [--sf 0,200,2000 | --lambdas 0,0.3,0.6]
        [--d 128] [--reps 10]
        [--csv bench/results/gpu_backward.csv] [--commit HASH]

Inputs: bf16, B = 1, Hq = 32, Hkv = 8, d = --d (128), causal, the structured inputs of gpu_bench.py.
Each row times one backward (median of CUDA-event times): for blasst, the gradients given the
forward's decisions (the forward is not timed; FlexAttention's includes the forward it re-runs to
differentiate) through the torch formulas (blasst-torch), FlexAttention in blocks of 128 rows
(blasst-flex) and of 64 rows (blasst-flex-q64, as BLASST_FLEX_Q_BLOCK=64: one sm_90a decision group
per block), and blasst's Triton kernels (blasst-triton; --triton-configs times other block
configurations beside it, named blasst-triton-M1-N1-M2-N2-warps-stages, ending in -torchrowsum
where BLASST_TRITON_BWD_ROWDOT=0 is set and -torchplan where BLASST_TRITON_BWD_PLAN=torch is; rows
of commits before these were the default end in -rowdot and -plan where they were on), which read
the forward's LSE and re-run nothing; for SDPA, autograd.grad of its forward's output.
Accuracy (--check-len, default the first length): each backward's error against fp64 autograd of
the same attention (dense for SDPA, over the kept tiles for blasst), as max |g - g64| / max |g64|
per gradient, so that blasst's error reads against a bf16 kernel's own.
"""
import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from provenance import source_commit  # noqa: E402
from gpu_bench import append_rows, make_inputs, time_ms  # noqa: E402

from blasst import _core, _lib, autograd  # noqa: E402
from blasst._triton_backward import DEFAULT_BLOCKS as TRITON_DEFAULT  # noqa: E402


def fp64_grads(q, k, v, dout, keep):
    """fp64 autograd of attention of q [B, L, Hq, D] over keep [B, Hq, Lq, Lk] (bool)."""
    g = q.shape[2] // k.shape[2]
    qd, kd, vd = (t.detach().double().transpose(1, 2).requires_grad_() for t in (q, k, v))
    s = qd @ kd.repeat_interleave(g, dim=1).transpose(-1, -2) * q.shape[3] ** -0.5
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
    out = p @ vd.repeat_interleave(g, dim=1)
    return [t.transpose(1, 2) for t in torch.autograd.grad(out, (qd, kd, vd), dout.double().transpose(1, 2))]


def rel_errors(got, want):
    """'dq/dk/dv' max |g - g64| / max |g64| of each gradient."""
    return "/".join(f"{float((a.double() - b).abs().max() / b.abs().max()):.2e}" for a, b in zip(got, want))


def largest_difference(got, ref):
    """Largest max |g - r| / (1 + max |r|) over the three gradients: two backwards side by side."""
    return max(float((g.float() - r.float()).abs().max() / (1 + r.float().abs().max())) for g, r in zip(got, ref))


def first_line(err, width):
    """'Type: first line of the message' of an exception, cut to width characters."""
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:width]}"


def print_profile(name, fn, calls=3):
    """The device time of each kernel and op in `calls` calls of fn, largest first (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    print(f"       profile of {name}, {calls} calls:")
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=50)
    print("\n".join("         " + line for line in table.splitlines()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqlens", default="4096,8192")
    ap.add_argument("--sf", default="0,200,2000", help="threshold_scale_factor values (0 = dense)")
    ap.add_argument("--lambdas", default=None,
                    help="skip thresholds as lambda values instead of --sf: factor = lambda x L per length")
    ap.add_argument("--torch-max-len", type=int, default=8192,
                    help="time the torch formulas only up to this length (they hold [Hq, L, L] in fp32)")
    ap.add_argument("--d", type=int, default=128, choices=[64, 128], help="head dim")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--sink", type=float, default=6.0,
                    help="the inputs' attention sink (gpu_bench.make_inputs): larger skips more at a lambda")
    ap.add_argument("--csv", default="bench/results/gpu_backward.csv")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--triton-configs", default=TRITON_DEFAULT,
                    help="';'-separated BLASST_TRITON_BWD_BLOCKS values to time blasst's Triton kernels at "
                         "(BLOCK_M1,BLOCK_N1,BLOCK_M2,BLOCK_N2,warps,stages; '' for none)")
    ap.add_argument("--triton-dq", default="recompute",
                    help="BLASST_TRITON_BWD_DQ values to time each Triton configuration at, comma-separated "
                         "(recompute, atomic; atomic rows are named ...-atomic)")
    ap.add_argument("--triton-split", default="",
                    help="BLASST_TRITON_BWD_SPLIT values to time each Triton run at, comma-separated (rows "
                         "named ...-splitN; default: the package's own choice, unnamed)")
    ap.add_argument("--profile", action="store_true",
                    help="after each Triton row, the CUDA time of each kernel and torch op of three calls "
                         "(torch.profiler)")
    ap.add_argument("--check-len", type=int, default=None,
                    help="length of the fp64 accuracy check (default the first of --seqlens; 0: none)")
    opts = ap.parse_args()
    check_len = int(opts.seqlens.split(",")[0]) if opts.check_len is None else opts.check_len
    gpu = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = opts.commit or source_commit()
    hq, hkv, d = 32, 8, opts.d
    rows, written = [], 0
    print(f"{gpu}: backward, bf16, B=1, Hq={hq}, Hkv={hkv}, d={d}, causal")
    print(f"{'L':>6} {'kernel':<16}{'sf':>8}{'sparsity':>10}{'ms':>10}{'x vs cudnn':>12}")
    for lk in (int(x) for x in opts.seqlens.split(",")):
        q, k, v = make_inputs(1, lk, hq, hkv, d, torch.bfloat16, seed=0, sink=opts.sink)
        dout = torch.randn_like(q)
        times = {}
        qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
                times[name] = time_ms(lambda o=out: torch.autograd.grad(o, (qt, kt, vt), dout.transpose(1, 2),
                                                                       retain_graph=True), 3, opts.reps)
            except RuntimeError as err:
                print(f"  {name}: not available ({str(err).splitlines()[0][:80]})")

        def record(kernel, sf, s, ms):
            rows.append(dict(gpu=gpu, date=date, commit=commit, phase="backward", kernel=kernel, dtype="bf16",
                             batch=1, lq=lk, lk=lk, hq=hq, hkv=hkv, d=d, causal=1, sf=sf, sparsity=f"{s:.4f}",
                             ms=f"{ms:.4f}"))
            base = times.get("cudnn")
            print(f"{lk:>6} {kernel:<16}{sf:>8}{s:>10.3f}{ms:>10.3f}{(base / ms if base else float('nan')):>11.2f}x")

        for name, ms in times.items():
            record(name, 0, 0.0, ms)
        causal_keep = None
        if lk == check_len:
            rows_, keys_ = torch.arange(lk, device="cuda"), torch.arange(lk, device="cuda")
            causal_keep = (keys_[None, :] <= rows_[:, None]).expand(1, hq, lk, lk)
            want = fp64_grads(q, k, v, dout, causal_keep)
            for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
                if name in times:
                    with sdpa_kernel(backend):
                        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
                    got = torch.autograd.grad(out, (qt, kt, vt), dout.transpose(1, 2))
                    print(f"       {name} vs fp64 (dense): dq/dk/dv {rel_errors([t.transpose(1, 2) for t in got], want)}")
            del want
        factors = ([round(float(x) * lk, 3) for x in opts.lambdas.split(",")] if opts.lambdas
                   else [float(x) for x in opts.sf.split(",")])
        for sf in factors:
            out, lse, stats, decisions, info = _core.run(_lib.PHASE_PREFILL, q, k, v, causal=True,
                                                       threshold_scale_factor=sf, return_stats=True,
                                                       return_decisions=True)
            s = float(stats[:, 1].sum()) / max(1.0, float(stats[:, 0].sum()))
            ours = lambda: autograd.torch_backward(_lib.PHASE_PREFILL, q, k, v, dout, None, decisions,  # noqa: E731
                                                   info, causal=True)
            flex = lambda: autograd.flex_backward(_lib.PHASE_PREFILL, q, k, v, dout, decisions, info,  # noqa: E731
                                                  causal=True)
            triton_run = lambda: autograd.triton_backward(_lib.PHASE_PREFILL, q, k, v, out, dout, lse,  # noqa: E731
                                                          None, decisions, info, causal=True)
            # the torch formulas hold [Hq, L, L] fp32 scores and probabilities: not past --torch-max-len
            with_torch = lk <= opts.torch_max_len
            g_ours, g_flex = (ours() if with_torch else None), flex()
            if with_torch:
                print(f"       flex vs torch gradients: largest relative difference "
                      f"{largest_difference(g_flex, g_ours):.2e}")
            if causal_keep is not None:
                kept = autograd.kept_tiles(_lib.PHASE_PREFILL, decisions, info, 1, hq, hkv, lk, lk)
                idx = torch.arange(lk, device="cuda")
                keep = causal_keep & kept[:, :, idx // info.block_m][..., idx // info.block_n]
                want = fp64_grads(q, k, v, dout, keep)
                print(f"       sf {sf:g} vs fp64 (kept tiles): torch "
                      f"{rel_errors(g_ours, want) if with_torch else '-'}, flex {rel_errors(g_flex, want)}")
                try:
                    print(f"       sf {sf:g} vs fp64 (kept tiles): triton {rel_errors(triton_run(), want)}")
                except Exception as err:  # report and go on: the rows of the other kernels still count
                    print(f"       triton: failed ({first_line(err, 120)})")
                del want, keep
            if with_torch:
                record("blasst-torch", sf, s, time_ms(ours, 2, opts.reps))
            record("blasst-flex", sf, s, time_ms(flex, 2, opts.reps))
            # the same with FlexAttention blocks of 64 rows, one sm_90a decision group each
            flex64 = lambda: autograd.flex_backward(_lib.PHASE_PREFILL, q, k, v, dout, decisions, info,  # noqa: E731
                                                    causal=True, q_block=64)
            try:
                g_64 = flex64()
            except Exception as err:  # a torch whose FlexAttention refuses 64-row blocks
                print(f"       flex with 64-row blocks: not available ({first_line(err, 100)})")
            else:
                print(f"       flex 64-row blocks vs 128: largest relative difference "
                      f"{largest_difference(g_64, g_flex):.2e}")
                record("blasst-flex-q64", sf, s, time_ms(flex64, 2, opts.reps))
            # blasst's Triton kernels, in each block configuration asked for (BLASST_TRITON_BWD_BLOCKS)
            splits = opts.triton_split.split(",") if opts.triton_split else [None]
            runs = [(c, m, p) for c in (opts.triton_configs.split(";") if opts.triton_configs else [])
                    for m in opts.triton_dq.split(",") for p in splits]
            for config, dq_mode, parts in runs:
                os.environ["BLASST_TRITON_BWD_BLOCKS"] = config
                os.environ["BLASST_TRITON_BWD_DQ"] = dq_mode
                if parts is not None:  # (else the package's default)
                    os.environ["BLASST_TRITON_BWD_SPLIT"] = parts
                name = "blasst-triton" if config == TRITON_DEFAULT else "blasst-triton-" + config.replace(",", "-")
                name += "-atomic" if dq_mode == "atomic" else ""
                name += f"-split{parts}" if parts is not None else ""
                name += "-torchrowsum" if os.environ.get("BLASST_TRITON_BWD_ROWDOT") == "0" else ""
                name += "-torchplan" if os.environ.get("BLASST_TRITON_BWD_PLAN") == "torch" else ""
                try:
                    g_tri = triton_run()
                except Exception as err:
                    print(f"       {name}: failed ({first_line(err, 120)})")
                    continue
                print(f"       {name} vs flex: largest relative difference {largest_difference(g_tri, g_flex):.2e}")
                record(name, sf, s, time_ms(triton_run, 2, opts.reps))
                if opts.profile:
                    print_profile(name, triton_run)
            for name in ("BLASST_TRITON_BWD_BLOCKS", "BLASST_TRITON_BWD_DQ", "BLASST_TRITON_BWD_SPLIT"):
                os.environ.pop(name, None)
            # written per threshold, so that a run cut short keeps the rows it measured
            if rows:
                append_rows(opts.csv, rows)
            written += len(rows)
            rows.clear()
        torch.cuda.empty_cache()
    if rows:  # (SDPA's rows of a length whose blasst runs did not start)
        append_rows(opts.csv, rows)
    print(f"{written + len(rows)} rows appended to {opts.csv}")


if __name__ == "__main__":
    main()
