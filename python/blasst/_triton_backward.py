"""The device backward of BLASST prefill attention as two Triton kernels that read the forward's
decisions (the default where they apply; BLASST_GPU_BACKWARD=triton forces them).

Given the forward's output O and LSE, per row i and key j of a kept tile that the row sees:
  P = exp(s - lse),  dP = dO . v,  D = rowsum(O * dO) - dlse,  dS = P (dP - D)
  dq = scale dS k,   dk = scale dS^T q,   dv = P^T dO   (dk, dv summed over a KV head's G query heads)
Nothing is recomputed for a skipped tile: the host turns the decisions into lists of the kernel blocks
that some kept tile covers, and each program walks only its list (no branch inside the loop, so that
Triton pipelines the loads). Every listed block lies inside one decision tile (the kernel's blocks
divide the decision tile), so a listed block is kept whole; the per-element mask is the layout's
(lengths, causality) alone. The forward's LSE is used as is (no forward is re-run).

Kernel 1 (dk, dv): one program per (block of BLOCK_N1 keys, entry, KV head) walks the listed
(query head, block of BLOCK_M1 rows) pairs. Kernel 2 (dq): one program per (block of BLOCK_M2 rows,
entry, query head) walks the listed blocks of BLOCK_N2 keys. Both accumulate in fp32 and store once
(deterministic: no atomics). BLASST_TRITON_BWD_DQ=atomic (not yet measured) instead has kernel 1 add
each block's dq into an fp32 buffer with atomics and skips kernel 2.

NaN: a gradient takes NaN from exactly the (row, key) pairs that the row sees, as the CPU engine's:
P and dS are NaN where a seen score is, and zero (by select, not by product) elsewhere; the operand
multiplied by them has NaN read as 0, so that a NaN row of q (dO) reaches dk (dv) of the keys it saw
only, not of unseen keys of the same block (0 x NaN would be NaN), and a NaN key reaches dq of the
rows that saw it only.

Layouts: q, dO [B, Lq, Hq, D]; k, v [B, Lk, Hkv, D]; LSE (in log2 units), D [B, Lq, Hq] fp32; the last dim of each
contiguous. Causal masks are bottom-right aligned: row r sees keys j <= r + Lk - Lq.
"""

from __future__ import annotations

import math
import os

import torch

try:  # Triton ships with torch's CUDA wheels
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - then applies() says no
    triton = tl = None

LOG2E = 1.4426950408889634
# BLOCK_M1,BLOCK_N1,BLOCK_M2,BLOCK_N2,warps,stages when BLASST_TRITON_BWD_BLOCKS is not set: the fastest
# of three on an H100 (bf16, d 128, 8K causal, Hq 32, Hkv 8; bench/results/gpu_backward.csv, ee7be23):
# 7.2 ms dense against 7.8 (64,128,64,64,8,2) and 15.1 (32,128,64,32,4,3)
DEFAULT_BLOCKS = "32,64,64,64,4,3"


def available() -> bool:
    """Whether Triton imports."""
    return triton is not None


def _identity(fn):
    return fn


# Decorated at import: Triton reads TRITON_INTERPRET then (tests set it before Triton is imported).
_jit = triton.jit if triton is not None else _identity


@_jit
def _dkdv_block(dk, dv, k, v, offs_n, Q, DO, LSE, DELTA, DQA, pair, b, hk, group, row_blocks, lq, lk,
                sqb, sql, sqh, sob, sol, soh, slb, sll, slh, sab, sal, sah, scale, scale_log2, offs_d, offs_e,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    """One listed (query head, block of BLOCK_M rows) into dk, dv [BLOCK_N, *] of a block of keys, and
    with ATOMIC_DQ the block's share of dq added into the fp32 DQA [B, Lq, Hq, D] (scaled).
    MASKED: the block holds pairs that do not exist or that the row does not see (else all are seen)."""
    h = hk * group + pair // row_blocks
    offs_m = (pair % row_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ptr = Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :]
    do_ptr = DO + b * sob + h * soh + offs_m[:, None] * sol + offs_e[None, :]
    l_off = b * slb + h * slh + offs_m * sll
    if MASKED:
        row_ok = offs_m < lq
        q = tl.load(q_ptr, mask=row_ok[:, None], other=0.0)
        do = tl.load(do_ptr, mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE + l_off, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + l_off, mask=row_ok, other=0.0)
    else:
        q = tl.load(q_ptr)
        do = tl.load(do_ptr)
        lse = tl.load(LSE + l_off)
        delta = tl.load(DELTA + l_off)
    s_t = tl.dot(k, tl.trans(q))                                            # [BLOCK_N, BLOCK_M] fp32
    p_t = tl.math.exp2(s_t * scale_log2 - lse[None, :])
    dp_t = tl.dot(v, tl.trans(do))                                          # [BLOCK_N, BLOCK_M]
    ds_t = p_t * (dp_t - delta[None, :])
    if MASKED:  # select, never multiply, and NaN read as 0 in the other operand: see the NaN note
        seen = (offs_n[:, None] < lk) & (offs_m[None, :] < lq)
        if CAUSAL:
            seen = seen & (offs_n[:, None] <= offs_m[None, :] + lk - lq)
        p_t = tl.where(seen, p_t, 0.0)
        ds_t = tl.where(seen, ds_t, 0.0)
        q = tl.where(q == q, q, 0.0)
        do = tl.where(do == do, do, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do)
    dk += tl.dot(ds_t.to(q.dtype), q)
    if ATOMIC_DQ:  # dq [BLOCK_M, D] += scale dS k, as kernel 2 would compute it
        dq_ptr = DQA + b * sab + h * sah + offs_m[:, None] * sal + offs_d[None, :]
        if MASKED:
            dq_part = tl.dot(tl.trans(ds_t).to(k.dtype), tl.where(k == k, k, 0.0)) * scale
            tl.atomic_add(dq_ptr, dq_part, mask=(offs_m < lq)[:, None])
        else:
            tl.atomic_add(dq_ptr, tl.dot(tl.trans(ds_t).to(k.dtype), k) * scale)
    return dk, dv


@_jit
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, COUNT_FULL, COUNT, INDEX, DK, DV, DQA,
                 sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sob, sol, soh, slb, sll, slh,
                 scb, sch, sib, sih, sin, sdkb, sdkl, sdkh, sdvb, sdvl, sdvh, sab, sal, sah,
                 lq, lk, hkv, group, row_blocks, scale, scale_log2,
                 CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                 DV_DIM: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    """Program (block of BLOCK_N keys, entry x KV head): dk, dv of those keys over the listed pairs,
    the whole ones (COUNT_FULL) first."""
    kb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // hkv
    hk = bh % hkv
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_e = tl.arange(0, DV_DIM)
    key_ok = offs_n < lk
    k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skl + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svl + offs_e[None, :], mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, DV_DIM], dtype=tl.float32)
    count_full = tl.load(COUNT_FULL + b * scb + hk * sch + kb)
    count = tl.load(COUNT + b * scb + hk * sch + kb)
    index = INDEX + b * sib + hk * sih + kb * sin  # (query head within the KV head) * row_blocks + row block
    for i in range(0, count_full):
        dk, dv = _dkdv_block(dk, dv, k, v, offs_n, Q, DO, LSE, DELTA, DQA, tl.load(index + i), b, hk, group,
                             row_blocks, lq, lk, sqb, sql, sqh, sob, sol, soh, slb, sll, slh, sab, sal, sah, scale,
                             scale_log2, offs_d, offs_e, MASKED=False, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M,
                             ATOMIC_DQ=ATOMIC_DQ)
    for i in range(count_full, count):
        dk, dv = _dkdv_block(dk, dv, k, v, offs_n, Q, DO, LSE, DELTA, DQA, tl.load(index + i), b, hk, group,
                             row_blocks, lq, lk, sqb, sql, sqh, sob, sol, soh, slb, sll, slh, sab, sal, sah, scale,
                             scale_log2, offs_d, offs_e, MASKED=True, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M,
                             ATOMIC_DQ=ATOMIC_DQ)
    tl.store(DK + b * sdkb + hk * sdkh + offs_n[:, None] * sdkl + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=key_ok[:, None])
    tl.store(DV + b * sdvb + hk * sdvh + offs_n[:, None] * sdvl + offs_e[None, :], dv.to(DV.dtype.element_ty),
             mask=key_ok[:, None])


@_jit
def _dq_block(dq, q, do, lse, delta, offs_m, K, V, kb, b, hk, lq, lk, skb, skl, skh, svb, svl, svh,
              scale_log2, offs_d, offs_e, MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """One listed block of BLOCK_N keys into dq [BLOCK_M, D] of a block of rows (MASKED as above)."""
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ptr = K + b * skb + hk * skh + offs_n[:, None] * skl + offs_d[None, :]
    v_ptr = V + b * svb + hk * svh + offs_n[:, None] * svl + offs_e[None, :]
    if MASKED:
        key_ok = offs_n < lk
        k = tl.load(k_ptr, mask=key_ok[:, None], other=0.0)
        v = tl.load(v_ptr, mask=key_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptr)
        v = tl.load(v_ptr)
    s = tl.dot(q, tl.trans(k))                                              # [BLOCK_M, BLOCK_N] fp32
    p = tl.math.exp2(s * scale_log2 - lse[:, None])
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    if MASKED:  # as in _dkdv_block
        seen = (offs_m[:, None] < lq) & (offs_n[None, :] < lk)
        if CAUSAL:
            seen = seen & (offs_n[None, :] <= offs_m[:, None] + lk - lq)
        ds = tl.where(seen, ds, 0.0)
        k = tl.where(k == k, k, 0.0)
    dq += tl.dot(ds.to(k.dtype), k)
    return dq


@_jit
def _dq_kernel(Q, K, V, DO, LSE, DELTA, COUNT_FULL, COUNT, INDEX, DQ,
               sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sob, sol, soh, slb, sll, slh,
               scb, sch, sib, sih, sim, sdqb, sdql, sdqh,
               lq, lk, hq, group, scale, scale_log2,
               CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
               DV_DIM: tl.constexpr):
    """Program (block of BLOCK_M rows, entry x query head): dq of those rows over the listed blocks of
    keys, the whole ones (COUNT_FULL) first."""
    qb = tl.num_programs(0) - 1 - tl.program_id(0)  # the last rows first: under a causal mask they see the most keys
    bh = tl.program_id(1)
    b = bh // hq
    h = bh % hq
    hk = h // group
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_e = tl.arange(0, DV_DIM)
    row_ok = offs_m < lq
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * sol + offs_e[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + b * slb + h * slh + offs_m * sll, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + b * slb + h * slh + offs_m * sll, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    count_full = tl.load(COUNT_FULL + b * scb + h * sch + qb)
    count = tl.load(COUNT + b * scb + h * sch + qb)
    index = INDEX + b * sib + h * sih + qb * sim
    for i in range(0, count_full):
        dq = _dq_block(dq, q, do, lse, delta, offs_m, K, V, tl.load(index + i), b, hk, lq, lk, skb, skl, skh,
                       svb, svl, svh, scale_log2, offs_d, offs_e, MASKED=False, CAUSAL=CAUSAL, BLOCK_N=BLOCK_N)
    for i in range(count_full, count):
        dq = _dq_block(dq, q, do, lse, delta, offs_m, K, V, tl.load(index + i), b, hk, lq, lk, skb, skl, skh,
                       svb, svl, svh, scale_log2, offs_d, offs_e, MASKED=True, CAUSAL=CAUSAL, BLOCK_N=BLOCK_N)
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdql + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


def _env_blocks() -> tuple:
    """(BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2, warps, stages) from BLASST_TRITON_BWD_BLOCKS, a comma
    list of six ints, for tuning on a device; default DEFAULT_BLOCKS (kernel 1 walks 32 rows at a
    time under 64 keys, kernel 2 walks 64 keys at a time under 64 rows)."""
    text = os.environ.get("BLASST_TRITON_BWD_BLOCKS", DEFAULT_BLOCKS)
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 6 or any(x <= 0 for x in values):
        raise ValueError(f"blasst: BLASST_TRITON_BWD_BLOCKS is {text!r}, expected six positive ints "
                         "(BLOCK_M1,BLOCK_N1,BLOCK_M2,BLOCK_N2,warps,stages)")
    return values


def atomic_dq() -> bool:
    """BLASST_TRITON_BWD_DQ=atomic: kernel 1 adds each block's dq into an fp32 buffer with atomics (as
    FlashAttention-2 does) and kernel 2 does not run, which saves recomputing S and dP (7 products
    become 5) but makes dq's rounding depend on the order of the additions. Not yet measured on a
    GPU; the default (=recompute) keeps the deterministic two-kernel path."""
    value = os.environ.get("BLASST_TRITON_BWD_DQ", "recompute")
    if value not in ("recompute", "atomic"):
        raise ValueError(f"blasst: BLASST_TRITON_BWD_DQ is {value!r}, expected recompute or atomic")
    return value == "atomic"


def _fit(preferred: int, tile: int) -> int:
    """The largest power of two <= preferred that divides the decision tile's extent (0 if < 16)."""
    block = 1 << (max(preferred, 1).bit_length() - 1)
    while block >= 16 and tile % block:
        block //= 2
    return block if block >= 16 else 0


def block_sizes(dec_m: int, dec_n: int):
    """The kernels' (BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2, warps, stages) for decision tiles of dec_m
    rows and dec_n keys, or None where a block of 16 does not divide them (then the kernels cannot
    keep a block inside one tile)."""
    m1, n1, m2, n2, warps, stages = _env_blocks()
    sizes = (_fit(m1, dec_m), _fit(n1, dec_n), _fit(m2, dec_m), _fit(n2, dec_n))
    return None if 0 in sizes else sizes + (warps, stages)


def applies(q, k, v, dec_m: int, dec_n: int) -> bool:
    """Dense [B, L, H, D] layouts of 16-bit q, k, v (head dims powers of two, 16 to 256) and decision
    tiles that blocks of 16 divide."""
    def pow2(d):
        return 16 <= d <= 256 and d & (d - 1) == 0
    return (available() and q.dim() == 4 and q.dtype in (torch.bfloat16, torch.float16) and k.dtype == q.dtype
            and v.dtype == q.dtype and pow2(q.shape[-1]) and pow2(v.shape[-1])
            and block_sizes(dec_m, dec_n) is not None)


def block_lists(kept: torch.Tensor, dec_m: int, dec_n: int, bm: int, bn: int, lq: int, lk: int, causal: bool):
    """kept [B, H, RB, KT] bool (decision tiles of dec_m rows x dec_n keys; bm | dec_m, bn | dec_n) ->
    (listed, whole), each [B, H, QB, KB] bool over kernel blocks of bm rows x bn keys: *listed* when the
    block lies in a kept tile and holds some (row, key) pair that exists and is visible; *whole* when
    it is listed and every pair exists and is visible (the kernels then skip the mask)."""
    qb, kb = -(-lq // bm), -(-lk // bn)
    blocks = kept.repeat_interleave(dec_m // bm, dim=2).repeat_interleave(dec_n // bn, dim=3)[:, :, :qb, :kb]
    first_row = torch.arange(qb, device=kept.device) * bm
    first_key = torch.arange(kb, device=kept.device) * bn
    last_row, last_key = first_row + bm - 1, first_key + bn - 1
    whole = (last_row[:, None] < lq) & (last_key[None, :] < lk)
    if causal:  # row r sees keys <= r + lk - lq: some pair when the last row sees the first key
        blocks = blocks & (first_key[None, :] <= torch.clamp(last_row, max=lq - 1)[:, None] + lk - lq)
        whole = whole & (last_key[None, :] <= first_row[:, None] + lk - lq)
    return blocks, blocks & whole


def _listed(blocks: torch.Tensor, whole: torch.Tensor):
    """[..., N] bool (listed, whole) -> (whole counts [...], listed counts [...], indices [..., N]), int32:
    the whole positions first, then the other listed ones, each ascending."""
    rank = torch.where(whole, 0, torch.where(blocks, 1, 2)).to(torch.int8)
    order = torch.argsort(rank, dim=-1, stable=True).to(torch.int32)
    return whole.sum(dim=-1, dtype=torch.int32), blocks.sum(dim=-1, dtype=torch.int32), order.contiguous()


def backward(q, k, v, out, dout, lse, dlse, kept: torch.Tensor, dec_m: int, dec_n: int, *, scale: float = 0.0,
             causal: bool = True):
    """dq, dk, dv of BLASST prefill attention given the forward's out, lse [B, Lq, Hq] and its kept
    decision tiles kept [B, Hq, RB, KT] bool (dec_m x dec_n). Layouts as applies() requires."""
    batch, lq, hq, dqk = q.shape
    lk, hkv, dv_dim = k.shape[1], k.shape[2], v.shape[-1]
    group = hq // hkv
    scale = scale or dqk ** -0.5
    m1, n1, m2, n2, warps, stages = block_sizes(dec_m, dec_n)
    q, k, v, dout = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, dout.to(q.dtype)))
    dq = torch.zeros_like(q, memory_format=torch.contiguous_format)
    dk = torch.zeros_like(k, memory_format=torch.contiguous_format)
    dv = torch.zeros_like(v, memory_format=torch.contiguous_format)
    if lq == 0 or lk == 0 or batch == 0:
        return dq, dk, dv
    lse2 = (lse.float() * LOG2E).contiguous()  # the kernels take exp2: P = 2^(s scale log2(e) - lse log2(e))
    delta = (out.float() * dout.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = delta.contiguous()  # [B, Lq, Hq] like lse
    scale_log2 = scale * LOG2E

    # kernel 1: per (entry, KV head, block of n1 keys) the listed (query head, block of m1 rows) pairs
    blocks1, whole1 = block_lists(kept, dec_m, dec_n, m1, n1, lq, lk, causal)          # [B, Hq, QB1, KB1]
    qb1, kb1 = blocks1.shape[2], blocks1.shape[3]

    def per_kv(t):  # [B, Hq, QB1, KB1] -> [B, Hkv, KB1, G * QB1]
        return t.view(batch, hkv, group, qb1, kb1).permute(0, 1, 4, 2, 3).reshape(batch, hkv, kb1, group * qb1)

    full1, count1, index1 = _listed(per_kv(blocks1), per_kv(whole1))
    atomic = atomic_dq()
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if atomic else delta  # (unread if not)
    sa = dq_acc.stride() if atomic else (0, 0, 0)
    _dkdv_kernel[(kb1, batch * hkv)](
        q, k, v, dout, lse2, delta, full1, count1, index1, dk, dv, dq_acc,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
        lse2.stride(0), lse2.stride(1), lse2.stride(2),
        count1.stride(0), count1.stride(1), index1.stride(0), index1.stride(1), index1.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), sa[0], sa[1], sa[2],
        lq, lk, hkv, group, qb1, scale, scale_log2,
        CAUSAL=causal, BLOCK_M=m1, BLOCK_N=n1, D=dqk, DV_DIM=dv_dim, ATOMIC_DQ=atomic, num_warps=warps,
        num_stages=stages)
    if atomic:
        return dq_acc.to(q.dtype), dk, dv

    # kernel 2: per (entry, query head, block of m2 rows) the listed blocks of n2 keys
    blocks2, whole2 = block_lists(kept, dec_m, dec_n, m2, n2, lq, lk, causal)          # [B, Hq, QB2, KB2]
    full2, count2, index2 = _listed(blocks2, whole2)
    _dq_kernel[(blocks2.shape[2], batch * hq)](
        q, k, v, dout, lse2, delta, full2, count2, index2, dq,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
        lse2.stride(0), lse2.stride(1), lse2.stride(2),
        count2.stride(0), count2.stride(1), index2.stride(0), index2.stride(1), index2.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        lq, lk, hq, group, scale, scale_log2,
        CAUSAL=causal, BLOCK_M=m2, BLOCK_N=n2, D=dqk, DV_DIM=dv_dim, num_warps=warps, num_stages=stages)
    return dq, dk, dv
