"""Gradients of BLASST attention (training with skipping on).

Given the forward's tile decisions, BLASST attention is block-sparse attention over the kept tiles
of each decision group; the decisions are piecewise constant in the inputs, so its gradient is the
block-sparse attention gradient over those tiles. The forward records its decision trace and
geometry; the backward recomputes each row's scores and log-sum-exp over the kept keys it sees:
  P = exp(s - lse),  dP = dO . v,  D = sum P dP - dlse,  dS = P (dP - D)
  dq = scale dS k,   dk = scale dS^T q,   dv = P^T dO   (dk, dv summed over a KV head's G heads)
Host tensors go through the C ABI's backward (the CPU engine, fp64); device tensors through blasst's
Triton kernels (blasst._triton_backward) where they apply, else PyTorch's FlexAttention with a
BlockMask of the kept tiles, else the same formulas in torch, one batch entry at a time (fp32;
BLASST_GPU_BACKWARD chooses).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Optional

import torch

from . import _core, _lib, _triton_backward
from ._env import env_choice

_TILE_KEPT = _lib.TILE_KEPT


class _BlasstAttention(torch.autograd.Function):
    """(q, k, v) -> (out, lse, stats); stats is not differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, phase: int, options: dict):
        out, lse, stats, decisions, info = _core.run(phase, q, k, v, return_decisions=True, **options)
        ctx.save_for_backward(q, k, v, out, lse, decisions)
        ctx.phase, ctx.info, ctx.options = phase, info, options
        ctx.mark_non_differentiable(stats)
        return out, lse, stats

    @staticmethod
    def backward(ctx, dout, dlse, _dstats):
        q, k, v, out, lse, decisions = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        o = ctx.options
        lengths = {name: o.get(name) for name in ("cu_seqlens_q", "cu_seqlens_k", "seqlens_q", "seqlens_k")}
        common = dict(max_seqlen_q=o.get("max_seqlen_q", 0), max_seqlen_k=o.get("max_seqlen_k", 0),
                      scale=o.get("scale", 0.0), causal=o.get("causal", True), **lengths)
        if q.device.type == "cpu":
            dq, dk, dv = _core.backward(ctx.phase, q, k, v, out, dout.to(out.dtype), dlse, decisions, ctx.info,
                                        num_threads=o.get("num_threads", 0), **common)
        else:
            dq, dk, dv = _device_grads(ctx.phase, q, k, v, out, dout, lse, dlse, decisions, ctx.info, lengths,
                                       common)
        return dq, dk, dv, None, None


# The device backward when BLASST_GPU_BACKWARD is not set: blasst's Triton kernels where they apply
# (prefill, dense, padded or ragged layouts, 16-bit), FlexAttention where it applies, the fp32 formulas
# elsewhere. On an H100 (bench/gpu_backward_bench.py, bf16, d 128, Hq 32, Hkv 8, 8K causal; e375034)
# the Triton kernels took 5.9 ms dense and 1.74 ms at sparsity 0.77, FlexAttention 7.6 and 5.2 ms (its
# forward re-run included), FA2's dense backward 5.0 ms and the formulas 161 ms (05876de). FlexAttention
# also puts NaN on gradients of (row, key) pairs that a row does not attend (a GPU test shows it).
GPU_BACKWARD_DEFAULT = "auto"


@functools.lru_cache(maxsize=None)
def _flex_available() -> bool:
    """Whether this torch has FlexAttention with BlockMask.from_kv_blocks(seq_lengths=...) (2.6 on)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return "seq_lengths" in inspect.signature(BlockMask.from_kv_blocks).parameters


def _flex_applies(q, k, v, dlse, lengths) -> bool:
    """FlexAttention's backward takes dense [B, L, H, D] layouts (no per-entry lengths, none empty), an
    LSE that carries no gradient, 16-bit inputs and the head dims it was measured at (Dqk = Dv = 64 or
    128), from a torch that has it."""
    # the LSE gradient last: reading it waits for the device
    return (_flex_available() and q.dim() == 4 and q.shape[1] > 0 and k.shape[1] > 0
            and not any(t is not None for t in lengths.values()) and q.dtype in (torch.bfloat16, torch.float16)
            and q.shape[-1] == v.shape[-1] and q.shape[-1] in (64, 128) and (dlse is None or not bool(dlse.any())))


def _device_grads(phase, q, k, v, out, dout, lse, dlse, decisions, info, lengths, common):
    """dq, dk, dv of device tensors through the backward device_backward() chooses. Where the Triton
    kernels do not build (a Triton or GPU they do not support), a warning says so and the backward
    that would run without them runs instead."""
    choice = device_backward(phase, q, k, v, dlse, lengths, info)
    if choice == "triton":
        try:
            return triton_backward(phase, q, k, v, out, dout, lse, dlse, decisions, info, **common)
        except _triton_backward.compile_errors() as err:
            warnings.warn(f"blasst: the Triton backward kernels did not build ({type(err).__name__}: "
                          f"{(str(err).splitlines() or [''])[0][:200]}); using FlexAttention or the torch "
                          "formulas instead", RuntimeWarning, stacklevel=4)
            choice = "flex" if _flex_applies(q, k, v, dlse, lengths) else "torch"
    if choice == "flex":
        return flex_backward(phase, q, k, v, dout, decisions, info, scale=common["scale"], causal=common["causal"])
    return torch_backward(phase, q, k, v, dout, dlse, decisions, info, **common)


def _triton_applies(phase, q, k, v, lengths, info) -> bool:
    """The Triton kernels (blasst._triton_backward) take prefill decisions over dense, padded or ragged
    layouts of 16-bit q, k, v, with tiles that blocks of 16 divide."""
    return (phase == _lib.PHASE_PREFILL and info.block_m > 0 and info.block_n > 0
            and _triton_backward.applies(q, k, v, info.block_m, info.block_n))


def device_backward(phase, q, k, v, dlse, lengths, info) -> str:
    """Which device backward runs, from BLASST_GPU_BACKWARD: torch (the fp32 formulas), flex (PyTorch's
    FlexAttention with a BlockMask of the kept tiles), triton (blasst's own Triton kernels over the
    kept tiles) or auto (triton where it applies, else flex where it applies, else torch). flex and
    triton are errors where they do not apply. The fused kernels keep P and dS in 16 bits, as every
    fused bf16 backward does (bench/gpu_backward_bench.py prints their errors beside cuDNN's, all
    against fp64)."""
    choice = env_choice("BLASST_GPU_BACKWARD", GPU_BACKWARD_DEFAULT, ("auto", "torch", "flex", "triton"))
    if choice == "torch":
        return "torch"
    if choice in ("auto", "triton"):
        # padded and ragged layouts too: their gradients equal the CPU engine's on an H100 (323e1a3), and
        # FlexAttention does not take them (the formulas would run)
        if _triton_applies(phase, q, k, v, lengths, info):
            return "triton"
        if choice == "triton":
            raise NotImplementedError("blasst: BLASST_GPU_BACKWARD=triton takes prefill over dense, padded or "
                                      "ragged layouts of 16-bit q, k, v (head dims powers of two, 16 to 256) "
                                      "with Triton installed")
    applies = _flex_applies(q, k, v, dlse, lengths)
    if choice == "flex" and not applies:
        raise NotImplementedError("blasst: BLASST_GPU_BACKWARD=flex takes dense layouts of 16-bit q, k, v with "
                                  "Dqk = Dv = 64 or 128, without an LSE gradient, and torch 2.6 or later")
    return "flex" if applies else "torch"


def attention_with_grad(phase: int, q, k, v, options: dict):
    """blasst attention whose outputs carry gradients to q, k and v."""
    if options.get("block_table") is not None:
        raise NotImplementedError("blasst: gradients through a paged KV cache are not supported (train on dense, "
                                  "padded or ragged layouts)")
    if any(t.dtype == torch.float8_e4m3fn for t in (q, k, v)):
        raise NotImplementedError("blasst: float8_e4m3fn operands have no backward pass")
    return _BlasstAttention.apply(q, k, v, phase, options)


def _entries(q, k, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k):
    """Per batch entry: (index, q rows, k rows) as (start, length) pairs, read on the host."""
    def spans(cu, lens, count, total):
        if cu is not None:
            offs = cu.tolist()
            return [(offs[b], offs[b + 1] - offs[b]) for b in range(count)]
        if lens is not None:
            return [(0, n) for n in lens.tolist()]
        return [(0, total)] * count

    ragged_q, ragged_k = cu_seqlens_q is not None, cu_seqlens_k is not None
    batch = cu_seqlens_q.numel() - 1 if ragged_q else q.shape[0]
    qs = spans(cu_seqlens_q, seqlens_q, batch, q.shape[0] if ragged_q else q.shape[1])
    ks = spans(cu_seqlens_k, seqlens_k, batch, k.shape[0] if ragged_k else k.shape[1])
    return batch, qs, ks


def torch_backward(phase, q, k, v, dout, dlse, decisions, info, *, cu_seqlens_q=None, cu_seqlens_k=None,
                   seqlens_q=None, seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, scale=0.0, causal=True):
    """The backward in torch (any device): fp32, one batch entry at a time."""
    ragged_q, ragged_k = cu_seqlens_q is not None, cu_seqlens_k is not None
    batch, q_spans, k_spans = _entries(q, k, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k)
    hq, dqk = q.shape[-2], q.shape[-1]
    hkv = k.shape[-2]
    g = hq // hkv
    scale = scale or dqk ** -0.5
    max_q = max_seqlen_q or max((n for _, n in q_spans), default=0)
    max_k = max_seqlen_k or max((n for _, n in k_spans), default=0)
    decode = phase == _lib.PHASE_DECODE
    dq, dk, dv = (torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    if info.block_n == 0 or max_k == 0:
        return dq, dk, dv  # the forward attended nothing
    lqs = [n for _, n in q_spans]
    tiles_kept = kept_tiles(phase, decisions, info, batch, hq, hkv, max_q, max_k, lqs)  # [B, Hq, row blocks, tiles]
    for b in range(batch):
        (q0, lq), (k0, lk) = q_spans[b], k_spans[b]
        if lq == 0 or lk == 0:
            continue
        sel_q = (slice(q0, q0 + lq),) if ragged_q else (b, slice(q0, q0 + lq))
        sel_k = (slice(k0, k0 + lk),) if ragged_k else (b, slice(k0, k0 + lk))
        qb = q[sel_q].float().transpose(0, 1)                                # [Hq, Lq, D]
        kb = k[sel_k].float().transpose(0, 1).repeat_interleave(g, dim=0)    # [Hq, Lk, D]
        vb = v[sel_k].float().transpose(0, 1).repeat_interleave(g, dim=0)    # [Hq, Lk, Dv]
        dob = dout[sel_q].float().transpose(0, 1)                            # [Hq, Lq, Dv]
        # kept keys of every row: its group's decision for the key's tile, and causality
        rows = torch.arange(lq, device=q.device)
        row_block = rows if decode else rows // info.block_m  # decode: kept_tiles gives one block per row
        tile_of_key = torch.arange(lk, device=q.device) // info.block_n
        kept = tiles_kept[b][:, row_block][:, :, tile_of_key]                                    # [Hq, Lq, Lk]
        if causal:
            visible = torch.arange(lk, device=q.device)[None, :] <= rows[:, None] + lk - lq
            kept = kept & visible[None]
        s = (qb @ kb.transpose(-1, -2)) * scale
        s = s.masked_fill(~kept, float("-inf"))
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        p = torch.where(kept, torch.exp(s - lse), 0.0)  # NaN scores stay NaN, as in the forward
        # NaN reaches a gradient through the (row, key) pairs the row attends only, as in the CPU
        # engine: P, dP and dS are zero by select where the row does not attend, and the operand
        # multiplied by them reads NaN as 0 (0 x NaN would reach unattended pairs)
        dp = torch.where(kept, dob @ vb.transpose(-1, -2), 0.0)
        big_d = (p * dp).sum(dim=-1, keepdim=True)
        if dlse is not None:
            big_d = big_d - dlse[sel_q].float().transpose(0, 1).unsqueeze(-1)
        ds = torch.where(kept, p * (dp - big_d) * scale, 0.0)
        do_nan = torch.isnan(dob)
        qb, kb, dob = (t.nan_to_num(nan=0.0, posinf=float("inf"), neginf=float("-inf")) for t in (qb, kb, dob))
        dqb = ds @ kb                                                          # [Hq, Lq, D]
        dkb = (ds.transpose(-1, -2) @ qb).unflatten(0, (hkv, g)).sum(1)        # [Hkv, Lk, D]
        dvb = p.transpose(-1, -2) @ dob                                        # [Hq, Lk, Dv]
        if do_nan.any():  # dO's NaN, read as 0 above, still reaches dv of the keys its row attends
            dvb = dvb.masked_fill((kept.transpose(-1, -2).float() @ do_nan.float()) > 0, float("nan"))
        dvb = dvb.unflatten(0, (hkv, g)).sum(1)                                # [Hkv, Lk, Dv]
        dq[sel_q] = dqb.transpose(0, 1).to(dq.dtype)
        dk[sel_k] = dkb.transpose(0, 1).to(dk.dtype)
        dv[sel_k] = dvb.transpose(0, 1).to(dv.dtype)
    return dq, dk, dv


def kept_tiles(phase, decisions, info, batch, hq, hkv, max_q, max_k, lqs=None):
    """[B, Hq, row blocks, tiles] bool: the tiles each (head, row block) kept, from the forward's
    trace. Prefill: row blocks of block_m rows. Decode: one block per row (max_q of them), each
    with its decision group's tiles: the KV head's (head, row) pairs, head-major over the entry's
    own Lq (`lqs`, default max_q each), in chunks of block_m pairs (block_m 0: one group)."""
    bm, bn = info.block_m, info.block_n
    tiles = -(-max_k // bn)
    if phase == _lib.PHASE_DECODE:
        g = hq // hkv
        chunks = -(-(g * max_q) // bm) if bm > 0 else 1
        trace = decisions[: batch * hkv * chunks * tiles].view(batch, hkv, chunks, tiles) == _TILE_KEPT
        dev = decisions.device
        heads = torch.arange(hq, device=dev)
        rows = torch.arange(max_q, device=dev)
        out = []
        for b in range(batch):
            lq = max(1, (lqs[b] if lqs is not None else max_q))
            pair = (heads % g)[:, None] * lq + rows[None, :]  # [Hq, max_q], head-major in the KV head
            chunk = (pair // bm).clamp(max=chunks - 1) if bm > 0 else torch.zeros_like(pair)
            out.append(trace[b][(heads // g)[:, None], chunk])  # [Hq, max_q, tiles]
        return torch.stack(out) if out else torch.zeros(0, hq, max_q, tiles, dtype=torch.bool, device=dev)
    row_blocks = -(-max_q // bm)
    return decisions[: batch * hq * row_blocks * tiles].view(batch, hq, row_blocks, tiles) == _TILE_KEPT


_flex = {}
_FLEX_BLOCK = 128  # FlexAttention's block of keys, and of rows unless BLASST_FLEX_Q_BLOCK says 64


def flex_q_block() -> int:
    """Rows per FlexAttention block: 128, or 64 with BLASST_FLEX_Q_BLOCK=64 (not yet measured on a GPU).
    64 matches the sm_90a kernel's decision groups, so that a block is whole wherever its one group
    kept the tile; with 128 a block is whole only where both groups under it kept it."""
    return int(env_choice("BLASST_FLEX_Q_BLOCK", str(_FLEX_BLOCK), ("64", "128")))


def flex_block_lists(kept: torch.Tensor, bm: int, bn: int, lq: int, lk: int, causal: bool, fq: int = _FLEX_BLOCK,
                     fk: int = _FLEX_BLOCK):
    """The kept tiles as FlexAttention's block lists of fq rows x fk keys, built at block level (never
    an [Lq, Lk] mask). kept [B, H, RB, KT] bool: decision tiles of bm rows and bn keys (any sizes).
    Returns (partial, full), each [B, H, QB, KB] bool: a block is *full* when every decision tile it
    overlaps is kept and all its (row, key) pairs exist and are causally visible, so that the kernel
    computes it without the mask; *partial* when it overlaps some kept tile but is not full (the
    mask_mod decides per element there); neither otherwise, and then it is never loaded."""
    batch, heads = kept.shape[:2]
    qb, kb = -(-lq // fq), -(-lk // fk)
    # kept at a resolution that both grids share: units of gcd(bm, fq) rows and gcd(bn, fk) keys
    gm, gn = math.gcd(bm, fq), math.gcd(bn, fk)
    units = kept.repeat_interleave(bm // gm, dim=2).repeat_interleave(bn // gn, dim=3)
    rows, cols = qb * (fq // gm), kb * (fk // gn)
    units = units[:, :, :rows, :cols]
    units = torch.nn.functional.pad(units, (0, cols - units.shape[3], 0, rows - units.shape[2]), value=False)
    # which (row, key) pairs of each unit exist and are visible: some of them, or all of them
    u = torch.arange(rows, device=kept.device)[:, None]
    w = torch.arange(cols, device=kept.device)[None, :]
    some = (u * gm < lq) & (w * gn < lk)
    every = ((u + 1) * gm <= lq) & ((w + 1) * gn <= lk)
    if causal:  # bottom-right aligned: row r sees keys <= r + lk - lq
        shift = lk - lq
        some = some & (w * gn <= torch.clamp((u + 1) * gm - 1, max=lq - 1) + shift)
        every = every & ((w + 1) * gn - 1 <= u * gm + shift)
    listed = (units & some).view(batch, heads, qb, fq // gm, kb, fk // gn).any(dim=5).any(dim=3)
    full = (units & every).view(batch, heads, qb, fq // gm, kb, fk // gn).all(dim=5).all(dim=3)
    partial = listed & ~full
    return partial, full


def _block_indices(blocks: torch.Tensor):
    """[B, H, QB, KB] bool -> (counts [B, H, QB] int32, indices [B, H, QB, KB] int32, the listed blocks
    first in ascending order)."""
    counts = blocks.sum(dim=-1, dtype=torch.int32)
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts, order


def flex_block_mask(phase, decisions, info, batch, hq, hkv, lq, lk, causal, q_block=None):
    """FlexAttention's BlockMask of the forward's kept tiles (flex_block_lists), for [B, Hq] heads, in
    blocks of q_block (default flex_q_block()) rows and 128 keys."""
    from torch.nn.attention.flex_attention import BlockMask

    bm, bn = (info.block_m, info.block_n) if phase == _lib.PHASE_PREFILL else (1, info.block_n)  # decode: per row
    kept = kept_tiles(phase, decisions, info, batch, hq, hkv, lq, lk)
    shift = lk - lq
    last_row, last_tile = kept.shape[2] - 1, kept.shape[3] - 1

    def mask_mod(b, h, q_idx, kv_idx):
        # indices past the lengths may reach here in the last blocks: clamp them into the grid
        keep = kept[b, h, torch.clamp(q_idx // bm, max=last_row), torch.clamp(kv_idx // bn, max=last_tile)]
        return keep & (kv_idx <= q_idx + shift) if causal else keep

    fq = q_block or flex_q_block()
    partial, full = flex_block_lists(kept, bm, bn, lq, lk, causal, fq, _FLEX_BLOCK)
    return BlockMask.from_kv_blocks(*_block_indices(partial), *_block_indices(full),
                                    BLOCK_SIZE=(fq, _FLEX_BLOCK), mask_mod=mask_mod, seq_lengths=(lq, lk))


def flex_backward(phase, q, k, v, dout, decisions, info, *, scale=0.0, causal=True, q_block=None):
    """The backward through PyTorch's FlexAttention (a fused Triton kernel on GPUs) with a BlockMask of
    the kept tiles: dense [B, L, H, D] layouts without an LSE gradient. Compiled once per process on
    a GPU. The BlockMask is built from the decision tiles (flex_block_lists): blocks that no kept
    tile overlaps are never loaded, whole kept blocks run without a mask, and the rest (the causal
    diagonal, tile edges that do not fall on 128) through a mask_mod over the kept tiles."""
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cuda":
        if "fn" not in _flex:
            _flex["fn"] = torch.compile(flex_attention, dynamic=False)
        attend = _flex["fn"]
    else:
        attend = flex_attention
    batch, lq, hq, dqk = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    block_mask = flex_block_mask(phase, decisions, info, batch, hq, hkv, lq, lk, causal, q_block)
    qf, kf, vf = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
    with torch.enable_grad():
        out = attend(qf, kf, vf, block_mask=block_mask, scale=scale or dqk ** -0.5, enable_gqa=hq != hkv)
        dq, dk, dv = torch.autograd.grad(out, (qf, kf, vf), dout.transpose(1, 2).to(out.dtype))
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def triton_backward(phase, q, k, v, out, dout, lse, dlse, decisions, info, *, scale=0.0, causal=True,
                    cu_seqlens_q=None, cu_seqlens_k=None, seqlens_q=None, seqlens_k=None, max_seqlen_q=0,
                    max_seqlen_k=0):
    """The backward through blasst's Triton kernels (blasst._triton_backward): prefill decisions over
    dense, padded or ragged layouts; the forward's out and lse are read, nothing is re-run."""
    batch, q_spans, k_spans = _entries(q, k, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k)
    max_q = max_seqlen_q or max((n for _, n in q_spans), default=0)
    max_k = max_seqlen_k or max((n for _, n in k_spans), default=0)
    kept = kept_tiles(phase, decisions, info, batch, q.shape[-2], k.shape[-2], max_q, max_k)
    return _triton_backward.backward(q, k, v, out, dout, lse, dlse, kept, info.block_m, info.block_n, scale=scale,
                                     causal=causal, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                     seqlens_q=seqlens_q, seqlens_k=seqlens_k, max_seqlen_q=max_q,
                                     max_seqlen_k=max_k)


def requires_grad(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether a call must record what its backward needs."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
