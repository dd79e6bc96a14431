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
entry, query head) walks the listed blocks of BLOCK_N2 keys. Both accumulate in fp32; dq is stored
once, and so are dk, dv unless kernel 1 split a long list over programs (split_parts: then by fp32
atomics, and deterministic only with one part). BLASST_TRITON_BWD_DQ=atomic instead has kernel 1 add
each block's dq into an fp32 buffer with atomics and skips kernel 2 (slower on an H100: 8.8 ms
against 6.8 dense at d 128, 8K causal).

NaN: a gradient takes NaN from exactly the (row, key) pairs that the row sees, as the CPU engine's:
P and dS are NaN where a seen score is, and zero (by select, not by product) elsewhere; the operand
multiplied by them has NaN read as 0, so that a NaN row of q (dO) reaches dk (dv) of the keys it saw
only, not of unseen keys of the same block (0 x NaN would be NaN), and a NaN key reaches dq of the
rows that saw it only.

Layouts: q, dO [B, Lq, Hq, D]; k, v [B, Lk, Hkv, D]; LSE (in log2 units), D [B, Lq, Hq] fp32; the
last dim of each contiguous. Padded layouts give each entry its lengths; ragged ones pack the entries
along the token axis ([T, H, D], batch stride 0) and give each its first row and key. Causal masks
are bottom-right aligned per entry: row r sees keys j <= r + Lk - Lq.
"""

from __future__ import annotations

import os

import torch

from ._env import env_choice

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


def compile_errors() -> tuple:
    """The exceptions by which Triton says it cannot build or launch a kernel here (the caller falls
    back to another backward)."""
    from triton.runtime.errors import OutOfResources, PTXASError
    return (triton.CompilationError, OutOfResources, PTXASError)


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
        do_nan = do != do
        do = tl.where(do_nan, 0.0, do)
    dv += tl.dot(p_t.to(do.dtype), do)
    if MASKED:  # dO's NaN, read as 0 above, still reaches dv of the keys its row sees, element by element
        if tl.max(tl.max(do_nan.to(tl.int32), axis=1), axis=0) > 0:
            dv = tl.where(tl.dot(seen.to(do.dtype), do_nan.to(do.dtype)) > 0, float("nan"), dv)
    dk += tl.dot(ds_t.to(q.dtype), q)
    if ATOMIC_DQ:  # dq [BLOCK_M, D] += scale dS k, as kernel 2 would compute it; relaxed: red.global.add,
        # no returned value and no fence (the default, acq_rel, is an ordered atom per element)
        dq_ptr = DQA + b * sab + h * sah + offs_m[:, None] * sal + offs_d[None, :]
        if MASKED:
            dq_part = tl.dot(tl.trans(ds_t).to(k.dtype), tl.where(k == k, k, 0.0)) * scale
            tl.atomic_add(dq_ptr, dq_part, mask=(offs_m < lq)[:, None], sem="relaxed")
        else:
            tl.atomic_add(dq_ptr, tl.dot(tl.trans(ds_t).to(k.dtype), k) * scale, sem="relaxed")
    return dk, dv


@_jit
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, COUNT_FULL, COUNT, INDEX, DK, DV, DQA, DK32, DV32,
                 sqb, sql, sqh, skb, skl, skh, svb, svl, svh, sob, sol, soh, slb, sll, slh,
                 scb, sch, sib, sih, sin, sdkb, sdkl, sdkh, sdvb, sdvl, sdvh, sab, sal, sah,
                 LQ, LK, QS, KS, hkv, group, row_blocks, scale, scale_log2, chunks, chunk,
                 CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                 DV_DIM: tl.constexpr, ATOMIC_DQ: tl.constexpr, SPLIT: tl.constexpr):
    """Program (block of BLOCK_N keys x chunk, entry x KV head): dk, dv of those keys over pairs
    [c * chunk, (c + 1) * chunk) of the list, the whole ones (COUNT_FULL) first. Entry b: LQ[b] rows
    from row QS[b], LK[b] keys from key KS[b]. A list of at most `chunk` pairs is one program's, which
    stores dk, dv; a longer one is split, and its programs add into DK32, DV32 (fp32, like DK, DV) for
    _finish_split_kernel (SPLIT: chunks > 1)."""
    kb = tl.program_id(0) // chunks
    part = tl.program_id(0) % chunks
    bh = tl.program_id(1)
    b = bh // hkv
    hk = bh % hkv
    lq = tl.load(LQ + b)
    lk = tl.load(LK + b)
    # the entry's first row and key (ragged layouts pack entries along the token axis)
    qs = tl.load(QS + b)
    ks = tl.load(KS + b)
    Q += b * sqb + qs * sql
    DO += b * sob + qs * sol
    LSE += b * slb + qs * sll
    DELTA += b * slb + qs * sll
    DQA += b * sab + qs * sal
    K += b * skb + ks * skl
    V += b * svb + ks * svl
    DK += b * sdkb + ks * sdkl
    DV += b * sdvb + ks * sdvl
    DK32 += b * sdkb + ks * sdkl
    DV32 += b * sdvb + ks * sdvl
    count_full = tl.load(COUNT_FULL + b * scb + hk * sch + kb)
    count = tl.load(COUNT + b * scb + hk * sch + kb)
    first = part * chunk
    if part > 0 and first >= count:  # nothing left of the list for this chunk
        return
    last = tl.minimum(first + chunk, count)
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_e = tl.arange(0, DV_DIM)
    key_ok = offs_n < lk
    k = tl.load(K + hk * skh + offs_n[:, None] * skl + offs_d[None, :], mask=key_ok[:, None], other=0.0)
    v = tl.load(V + hk * svh + offs_n[:, None] * svl + offs_e[None, :], mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, DV_DIM], dtype=tl.float32)
    index = INDEX + b * sib + hk * sih + kb * sin  # (query head within the KV head) * row_blocks + row block
    for i in range(first, tl.minimum(last, count_full)):
        dk, dv = _dkdv_block(dk, dv, k, v, offs_n, Q, DO, LSE, DELTA, DQA, tl.load(index + i), 0, hk, group,
                             row_blocks, lq, lk, sqb, sql, sqh, sob, sol, soh, slb, sll, slh, sab, sal, sah, scale,
                             scale_log2, offs_d, offs_e, MASKED=False, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M,
                             ATOMIC_DQ=ATOMIC_DQ)
    for i in range(tl.maximum(first, count_full), last):
        dk, dv = _dkdv_block(dk, dv, k, v, offs_n, Q, DO, LSE, DELTA, DQA, tl.load(index + i), 0, hk, group,
                             row_blocks, lq, lk, sqb, sql, sqh, sob, sol, soh, slb, sll, slh, sab, sal, sah, scale,
                             scale_log2, offs_d, offs_e, MASKED=True, CAUSAL=CAUSAL, BLOCK_M=BLOCK_M,
                             ATOMIC_DQ=ATOMIC_DQ)
    dk_off = hk * sdkh + offs_n[:, None] * sdkl + offs_d[None, :]
    dv_off = hk * sdvh + offs_n[:, None] * sdvl + offs_e[None, :]
    if SPLIT and count > chunk:  # (a constexpr first: without it the kernel has one epilogue, and fewer spills)
        tl.atomic_add(DK32 + dk_off, dk * scale, mask=key_ok[:, None], sem="relaxed")
        tl.atomic_add(DV32 + dv_off, dv, mask=key_ok[:, None], sem="relaxed")
    else:
        tl.store(DK + dk_off, (dk * scale).to(DK.dtype.element_ty), mask=key_ok[:, None])
        tl.store(DV + dv_off, dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@_jit
def _finish_split_kernel(COUNT, DK, DV, DK32, DV32, scb, sch, sdkb, sdkl, sdkh, sdvb, sdvl, sdvh, LK, KS, hkv,
                         chunk, BLOCK_N: tl.constexpr, D: tl.constexpr, DV_DIM: tl.constexpr):
    """Program (block of BLOCK_N keys, entry x KV head): where kernel 1 split the block's list, dk,
    dv in the output's type from the fp32 sums of its chunks."""
    kb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // hkv
    hk = bh % hkv
    if tl.load(COUNT + b * scb + hk * sch + kb) <= chunk:
        return
    lk = tl.load(LK + b)
    ks = tl.load(KS + b)
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = (offs_n < lk)[:, None]
    dk_off = b * sdkb + (ks + offs_n[:, None]) * sdkl + hk * sdkh + tl.arange(0, D)[None, :]
    dv_off = b * sdvb + (ks + offs_n[:, None]) * sdvl + hk * sdvh + tl.arange(0, DV_DIM)[None, :]
    tl.store(DK + dk_off, tl.load(DK32 + dk_off, mask=key_ok).to(DK.dtype.element_ty), mask=key_ok)
    tl.store(DV + dv_off, tl.load(DV32 + dv_off, mask=key_ok).to(DV.dtype.element_ty), mask=key_ok)


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
               LQ, LK, QS, KS, hq, group, scale, scale_log2,
               CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
               DV_DIM: tl.constexpr):
    """Program (block of BLOCK_M rows, entry x query head): dq of those rows over the listed blocks of
    keys, the whole ones (COUNT_FULL) first."""
    qb = tl.num_programs(0) - 1 - tl.program_id(0)  # the last rows first: under a causal mask they see the most keys
    bh = tl.program_id(1)
    b = bh // hq
    h = bh % hq
    hk = h // group
    lq = tl.load(LQ + b)
    lk = tl.load(LK + b)
    qs = tl.load(QS + b)  # as in _dkdv_kernel
    ks = tl.load(KS + b)
    Q += b * sqb + qs * sql
    DO += b * sob + qs * sol
    LSE += b * slb + qs * sll
    DELTA += b * slb + qs * sll
    DQ += b * sdqb + qs * sdql
    K += b * skb + ks * skl
    V += b * svb + ks * svl
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_e = tl.arange(0, DV_DIM)
    row_ok = offs_m < lq
    q = tl.load(Q + h * sqh + offs_m[:, None] * sql + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + h * soh + offs_m[:, None] * sol + offs_e[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + h * slh + offs_m * sll, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + h * slh + offs_m * sll, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    count_full = tl.load(COUNT_FULL + b * scb + h * sch + qb)
    count = tl.load(COUNT + b * scb + h * sch + qb)
    index = INDEX + b * sib + h * sih + qb * sim
    for i in range(0, count_full):
        dq = _dq_block(dq, q, do, lse, delta, offs_m, K, V, tl.load(index + i), 0, hk, lq, lk, skb, skl, skh,
                       svb, svl, svh, scale_log2, offs_d, offs_e, MASKED=False, CAUSAL=CAUSAL, BLOCK_N=BLOCK_N)
    for i in range(count_full, count):
        dq = _dq_block(dq, q, do, lse, delta, offs_m, K, V, tl.load(index + i), 0, hk, lq, lk, skb, skl, skh,
                       svb, svl, svh, scale_log2, offs_d, offs_e, MASKED=True, CAUSAL=CAUSAL, BLOCK_N=BLOCK_N)
    tl.store(DQ + h * sdqh + offs_m[:, None] * sdql + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


@_jit
def _row_dot_kernel(A, B, OUT, rows, D: tl.constexpr, BLOCK: tl.constexpr):
    """OUT[r] = sum_d A[r, d] B[r, d] in fp32 for BLOCK rows of contiguous [rows, D] A and B."""
    offs_r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs = offs_r[:, None] * D + tl.arange(0, D)[None, :]
    ok = (offs_r < rows)[:, None]
    a = tl.load(A + offs, mask=ok, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(OUT + offs_r, tl.sum(a * b, axis=1), mask=offs_r < rows)


def fused_row_dots() -> bool:
    """D = rowsum(O dO) by _row_dot_kernel in one pass (the default), or with BLASST_TRITON_BWD_ROWDOT=0
    by torch's fp32 copies, product and sum. With the lists by _plan_kernel it took the dense call at
    8K, d 128, Hq 32 from 6.38 to 5.90 ms on an H100 (commit e375034; rows in
    bench/results/gpu_backward.csv)."""
    return env_choice("BLASST_TRITON_BWD_ROWDOT", "1", ("0", "1")) == "1"


def row_dots(out: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
    """rowsum(out * dout) in fp32, shaped like out without its last dim (D in the kernels): one pass
    over both instead of fp32 copies, a product and a reduction."""
    dv = out.shape[-1]
    if out.numel() >= 2**31:  # (the kernel's offsets are 32-bit)
        return (out.float() * dout.float()).sum(-1)
    a, b = out.reshape(-1, dv).contiguous(), dout.reshape(-1, dv).contiguous()
    result = torch.empty(a.shape[0], dtype=torch.float32, device=out.device)
    block = max(1, min(64, 8192 // dv))
    if a.shape[0]:
        _row_dot_kernel[(triton.cdiv(a.shape[0], block),)](a, b, result, a.shape[0], D=dv, BLOCK=block, num_warps=4)
    return result.view(out.shape[:-1])


def _env_blocks() -> tuple:
    """(BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2, warps1, stages1, warps2, stages2) from
    BLASST_TRITON_BWD_BLOCKS, a comma list of six ints (both kernels in the same warps and stages) or
    eight (kernel 2's own last), for tuning on a device; default DEFAULT_BLOCKS (kernel 1 walks 32
    rows at a time under 64 keys, kernel 2 walks 64 keys at a time under 64 rows)."""
    text = os.environ.get("BLASST_TRITON_BWD_BLOCKS", DEFAULT_BLOCKS)
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (6, 8) or any(x <= 0 for x in values):
        raise ValueError(f"blasst: BLASST_TRITON_BWD_BLOCKS is {text!r}, expected six or eight positive ints "
                         "(BLOCK_M1,BLOCK_N1,BLOCK_M2,BLOCK_N2,warps,stages[,warps2,stages2])")
    return values if len(values) == 8 else values + values[4:6]


def atomic_dq() -> bool:
    """BLASST_TRITON_BWD_DQ=atomic: kernel 1 adds each block's dq into an fp32 buffer with atomics (as
    FlashAttention-2 does) and kernel 2 does not run, which saves recomputing S and dP (7 products
    become 5) but makes dq's rounding depend on the order of the additions. Slower on an H100 (bf16,
    d 128, 8K causal, 158491c: 8.8 ms dense against 6.8, even as relaxed reductions), so the default
    (=recompute) keeps the two kernels."""
    return env_choice("BLASST_TRITON_BWD_DQ", "recompute", ("recompute", "atomic")) == "atomic"


def split_parts() -> int:
    """Kernel 1 splits each block of keys' list of (query head, row block) pairs into chunks of at
    most 1/N of the longest possible list, so that one long list (a sink's keys, which every row
    keeps) is walked by up to N programs in parallel instead of one; their dk, dv meet by fp32
    atomics, so that a split list's dk, dv round in the order the additions came. N is
    BLASST_TRITON_BWD_SPLIT, else 4, or 1 (deterministic) under torch.use_deterministic_algorithms.
    On an H100 (bf16, d 128, 8K causal, sparsity 0.77; bench/results/gpu_backward.csv, 158491c):
    2.91 ms at N 4 against 3.62 at N 1, dense 6.83 against 6.81."""
    text = os.environ.get("BLASST_TRITON_BWD_SPLIT")
    if text is None:
        return 1 if torch.are_deterministic_algorithms_enabled() else 4
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"blasst: BLASST_TRITON_BWD_SPLIT is {text!r}, expected a positive int")
    return int(text)


def _fit(preferred: int, tile: int) -> int:
    """The largest power of two <= preferred that divides the decision tile's extent (0 if < 16)."""
    block = 1 << (max(preferred, 1).bit_length() - 1)
    while block >= 16 and tile % block:
        block //= 2
    return block if block >= 16 else 0


def block_sizes(dec_m: int, dec_n: int):
    """The kernels' (BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2, warps1, stages1, warps2, stages2) for
    decision tiles of dec_m rows and dec_n keys, or None where a block of 16 does not divide them
    (then the kernels cannot keep a block inside one tile)."""
    m1, n1, m2, n2, *launch = _env_blocks()
    sizes = (_fit(m1, dec_m), _fit(n1, dec_n), _fit(m2, dec_m), _fit(n2, dec_n))
    return None if 0 in sizes else sizes + tuple(launch)


def applies(q, k, v, dec_m: int, dec_n: int) -> bool:
    """Dense, padded or ragged layouts of 16-bit q, k, v (head dims powers of two, 16 to 256) of fewer
    than 2^31 elements each, and decision tiles that blocks of 16 divide."""
    def pow2(d):
        return 16 <= d <= 256 and d & (d - 1) == 0
    # (element offsets are 32-bit inside the kernels)
    return (available() and q.dim() in (3, 4) and max(q.numel(), k.numel(), v.numel()) < 2**31
            and q.dtype in (torch.bfloat16, torch.float16) and k.dtype == q.dtype
            and v.dtype == q.dtype and pow2(q.shape[-1]) and pow2(v.shape[-1])
            and block_sizes(dec_m, dec_n) is not None)


def block_lists(kept: torch.Tensor, dec_m: int, dec_n: int, bm: int, bn: int, lq, lk, causal: bool,
                max_q: int = 0, max_k: int = 0):
    """kept [B, H, RB, KT] bool (decision tiles of dec_m rows x dec_n keys; bm | dec_m, bn | dec_n) ->
    (listed, whole), each [B, H, QB, KB] bool over kernel blocks of bm rows x bn keys: *listed* when the
    block lies in a kept tile and holds some (row, key) pair that exists and is visible; *whole* when
    it is listed and every pair exists and is visible (the kernels then skip the mask). lq, lk: the
    lengths, ints or per-entry [B] tensors (then max_q, max_k size the grid)."""
    dev = kept.device
    lq_b = torch.as_tensor(lq, device=dev).reshape(-1, 1, 1, 1).long()  # [B or 1, 1, 1, 1]
    lk_b = torch.as_tensor(lk, device=dev).reshape(-1, 1, 1, 1).long()
    qb, kb = -(-(max_q or int(lq_b.max())) // bm), -(-(max_k or int(lk_b.max())) // bn)
    blocks = kept.repeat_interleave(dec_m // bm, dim=2).repeat_interleave(dec_n // bn, dim=3)[:, :, :qb, :kb]
    first_row = (torch.arange(qb, device=dev) * bm)[:, None]                 # [QB, 1]
    first_key = (torch.arange(kb, device=dev) * bn)[None, :]                 # [1, KB]
    last_row, last_key = first_row + bm - 1, first_key + bn - 1
    listed = blocks & (first_row < lq_b) & (first_key < lk_b)
    whole = (last_row < lq_b) & (last_key < lk_b)
    if causal:  # row r sees keys <= r + lk - lq: some pair when the last row sees the first key
        listed = listed & (first_key <= torch.minimum(last_row, lq_b - 1) + lk_b - lq_b)
        whole = whole & (last_key <= first_row + lk_b - lq_b)
    return listed, listed & whole


def _listed(blocks: torch.Tensor, whole: torch.Tensor):
    """[..., N] bool (listed, whole) -> (whole counts [...], listed counts [...], indices [..., N]), int32:
    the whole positions first, then the other listed ones, each ascending (then the unlisted ones).
    A stable partition by prefix sums and one scatter: a segmented sort costs far more on the device.
    The three running counts share one int64 scan, 21 bits each (N < 2^21; else three scans)."""
    partial, unlisted = blocks & ~whole, ~blocks
    n = blocks.shape[-1]
    if n < 1 << 21:
        packed = (whole.long() | (partial.long() << 21) | (unlisted.long() << 42)).cumsum(-1)
        field = (1 << 21) - 1
        whole_cs, partial_cs, unlisted_cs = packed & field, (packed >> 21) & field, packed >> 42
    else:
        whole_cs, partial_cs, unlisted_cs = (t.cumsum(-1) for t in (whole, partial, unlisted))
    n_whole = whole_cs[..., -1:] if n else whole_cs.new_zeros(whole_cs.shape[:-1] + (1,))
    n_listed = n_whole + (partial_cs[..., -1:] if n else 0)
    # each position's place in the list: a permutation of 0..N-1 along the last dim
    place = torch.where(whole, whole_cs, torch.where(partial, n_whole + partial_cs, n_listed + unlisted_cs)) - 1
    position = torch.arange(n, dtype=torch.int32, device=blocks.device).expand(blocks.shape)
    order = torch.empty_like(position).scatter_(-1, place, position)
    return n_whole[..., 0].int(), n_listed[..., 0].int(), order


@_jit
def _plan_kernel(KEPT, LQ, LK, COUNT_FULL, COUNT, INDEX, skb, skh, skr, skt, scb, sch, sib, sih, sil, n, inner,
                 group, bm, bn, dec_m, dec_n, CAUSAL: tl.constexpr, BY_KEYS: tl.constexpr, NP: tl.constexpr):
    """One list of block_lists() + _listed() in one program: program (list l, head or KV head g, entry
    b) orders the n positions of list (b, g, l) as _listed does (whole blocks, then masked ones, then
    the unlisted, each ascending) and counts them. BY_KEYS (kernel 1's lists): l is a block of keys,
    position p the (query head g * group + p // inner, row block p % inner) pair; else (kernel 2's)
    l is a row block of query head g and p a block of keys. KEPT [B, Hq, RB, KT] uint8 (0 or 1)."""
    l = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2)
    p = tl.arange(0, NP)
    exists = p < n
    if BY_KEYS:
        h = g * group + p // inner
        qb = p % inner
        kb = l
    else:
        h = g
        qb = l
        kb = p
    lq = tl.load(LQ + b)
    lk = tl.load(LK + b)
    first_row = qb * bm
    first_key = kb * bn
    last_row = first_row + bm - 1
    last_key = first_key + bn - 1
    kept = tl.load(KEPT + b * skb + h * skh + (first_row // dec_m) * skr + (first_key // dec_n) * skt,
                   mask=exists, other=0) != 0
    listed = kept & exists & (first_row < lq) & (first_key < lk)
    whole = (last_row < lq) & (last_key < lk)
    if CAUSAL:
        listed = listed & (first_key <= tl.minimum(last_row, lq - 1) + lk - lq)
        whole = whole & (last_key <= first_row + lk - lq)
    whole = whole & listed
    partial = listed & ~whole
    unlisted = exists & ~listed
    whole_cs = tl.cumsum(whole.to(tl.int32), axis=0)
    partial_cs = tl.cumsum(partial.to(tl.int32), axis=0)
    unlisted_cs = tl.cumsum(unlisted.to(tl.int32), axis=0)
    n_whole = tl.sum(whole.to(tl.int32), axis=0)
    n_listed = n_whole + tl.sum(partial.to(tl.int32), axis=0)
    place = tl.where(whole, whole_cs, tl.where(partial, n_whole + partial_cs, n_listed + unlisted_cs)) - 1
    tl.store(INDEX + b * sib + g * sih + l * sil + place, p, mask=exists)
    tl.store(COUNT_FULL + b * scb + g * sch + l, n_whole)
    tl.store(COUNT + b * scb + g * sch + l, n_listed)


PLAN_KERNEL_MAX = 8192  # the longest list one program of _plan_kernel orders (a vector of that many)


def plan_in_one_kernel() -> bool:
    """Each kernel's lists by _plan_kernel, one launch (the default, =kernel), or with
    BLASST_TRITON_BWD_PLAN=torch by some twenty torch ops. With the fused rowsum it took the call at
    sparsity 0.77 (8K, d 128, Hq 32, H100, commit e375034) from 2.70 to 1.74 ms; the torch lists stay
    for lists longer than PLAN_KERNEL_MAX, and the interpreter tests hold both equal."""
    return env_choice("BLASST_TRITON_BWD_PLAN", "kernel", ("torch", "kernel")) == "kernel"


def planned_lists(kept: torch.Tensor, dec_m: int, dec_n: int, bm: int, bn: int, lq: torch.Tensor,
                  lk: torch.Tensor, causal: bool, max_q: int, max_k: int, group: int, by_keys: bool):
    """(whole counts, listed counts, indices) of kernel 1's lists (by_keys: [B, Hkv, KB] and
    [B, Hkv, KB, G * QB]) or kernel 2's ([B, Hq, QB] and [B, Hq, QB, KB]), as _listed(block_lists(...))
    gives them (per_kv first for kernel 1). lq, lk: per-entry int32 lengths [B] on kept's device."""
    batch, heads = kept.shape[:2]
    qb, kb = -(-max_q // bm), -(-max_k // bn)
    lists, groups, n = (kb, heads // group, group * qb) if by_keys else (qb, heads, kb)
    if not plan_in_one_kernel() or n > PLAN_KERNEL_MAX:
        listed, whole = block_lists(kept, dec_m, dec_n, bm, bn, lq, lk, causal, max_q, max_k)
        if by_keys:  # [B, Hq, QB, KB] -> [B, Hkv, KB, G * QB]
            listed, whole = (t.view(batch, groups, group, qb, kb).permute(0, 1, 4, 2, 3).reshape(batch, groups, kb, n)
                             for t in (listed, whole))
        return _listed(listed, whole)
    dev = kept.device
    full = torch.empty(batch, groups, lists, dtype=torch.int32, device=dev)
    count = torch.empty_like(full)
    index = torch.empty(batch, groups, lists, n, dtype=torch.int32, device=dev)
    kept8 = kept.view(torch.uint8) if kept.dtype == torch.bool else kept
    if batch and lists and groups:
        width = max(16, triton.next_power_of_2(n))
        # 512 positions a warp at most: no spills under Triton 3.6 for sm_90a up to PLAN_KERNEL_MAX
        _plan_kernel[(lists, groups, batch)](
            kept8, lq, lk, full, count, index, *kept8.stride(), full.stride(0), full.stride(1), index.stride(0),
            index.stride(1), index.stride(2), n, qb, group, bm, bn, dec_m, dec_n, CAUSAL=causal, BY_KEYS=by_keys,
            NP=width, num_warps=min(16, max(4, width // 512)))
    return full, count, index


def _token_strides(t: torch.Tensor, ragged: bool) -> tuple:
    """A layout's (batch, token, head) strides: ragged [T, H, D] layouts pack the entries along the
    token axis (batch stride 0); dense [B, L, H, D] ones have their own."""
    return (0, t.stride(0), t.stride(1)) if ragged else tuple(t.stride()[:3])


def _entry_spans(t: torch.Tensor, cu: "torch.Tensor | None", lens: "torch.Tensor | None", batch: int):
    """Per entry (first token, length) as int32 [B] tensors, and the tensor's (batch, token, head)
    strides: ragged layouts start their entries at cu; dense ones at 0, their lengths from lens
    (padded) or L."""
    dev = t.device
    if cu is not None:
        cu = cu.to(device=dev, dtype=torch.int32)
        return cu[:-1].contiguous(), (cu[1:] - cu[:-1]).contiguous(), _token_strides(t, True)
    length = lens.to(device=dev, dtype=torch.int32) if lens is not None else torch.full((batch,), t.shape[1],
                                                                                         dtype=torch.int32, device=dev)
    return torch.zeros(batch, dtype=torch.int32, device=dev), length.contiguous(), _token_strides(t, False)


def _longest(given: int, t: torch.Tensor, cu, lens, lengths: torch.Tensor) -> int:
    """The longest entry: as the caller gave it, else a dense layout's L, else read from the device
    (a wait) from the per-entry lengths."""
    if given:
        return given
    if cu is None and lens is None:
        return t.shape[1]
    return int(lengths.max()) if lengths.numel() else 0


def backward(q, k, v, out, dout, lse, dlse, kept: torch.Tensor, dec_m: int, dec_n: int, *, scale: float = 0.0,
             causal: bool = True, cu_seqlens_q=None, cu_seqlens_k=None, seqlens_q=None, seqlens_k=None,
             max_seqlen_q: int = 0, max_seqlen_k: int = 0):
    """dq, dk, dv of BLASST prefill attention given the forward's out, lse (like q without its last
    dim) and its kept decision tiles kept [B, Hq, RB, KT] bool (dec_m x dec_n). q [B, Lq, Hq, D] or
    ragged [Tq, Hq, D] (cu_seqlens_q), k, v likewise (cu_seqlens_k); seqlens_* give padded
    layouts' lengths, max_seqlen_* their largest where the caller knows it (else it is read from the
    device, or from the shapes of dense layouts). Layouts as applies() requires."""
    ragged_q = cu_seqlens_q is not None
    batch = cu_seqlens_q.numel() - 1 if ragged_q else q.shape[0]
    hq, dqk = q.shape[-2], q.shape[-1]
    hkv, dv_dim = k.shape[-2], v.shape[-1]
    group = hq // hkv
    scale = scale or dqk ** -0.5
    m1, n1, m2, n2, warps, stages, warps2, stages2 = block_sizes(dec_m, dec_n)
    q, k, v, dout = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, dout.to(q.dtype)))
    # the kernels write every row of a dense layout; padded and ragged ones may have rows of no entry
    q_alloc = torch.empty_like if cu_seqlens_q is None and seqlens_q is None else torch.zeros_like
    k_alloc = torch.empty_like if cu_seqlens_k is None and seqlens_k is None else torch.zeros_like
    dq = q_alloc(q, memory_format=torch.contiguous_format)
    dk, dv = (k_alloc(t, memory_format=torch.contiguous_format) for t in (k, v))
    qs, lq, sq = _entry_spans(q, cu_seqlens_q, seqlens_q, batch)
    ks, lk, sk = _entry_spans(k, cu_seqlens_k, seqlens_k, batch)
    max_q = _longest(max_seqlen_q, q, cu_seqlens_q, seqlens_q, lq)
    max_k = _longest(max_seqlen_k, k, cu_seqlens_k, seqlens_k, lk)
    if max_q == 0 or max_k == 0 or batch == 0:  # nothing attended: every gradient is 0
        return dq.zero_(), dk.zero_(), dv.zero_()
    lse2 = (lse.float() * LOG2E).contiguous()  # the kernels take exp2: P = 2^(s scale log2(e) - lse log2(e))
    delta = row_dots(out, dout) if fused_row_dots() else (out.float() * dout.float()).sum(-1).contiguous()  # like lse
    if dlse is not None:
        delta = delta - dlse.float()
    sl = (0,) + lse2.stride() if ragged_q else lse2.stride()
    ragged_k = cu_seqlens_k is not None
    so, sdq = (_token_strides(t, ragged_q) for t in (dout, dq))
    sv, sdk, sdv = (_token_strides(t, ragged_k) for t in (v, dk, dv))
    scale_log2 = scale * LOG2E

    # kernel 1: per (entry, KV head, block of n1 keys) the listed (query head, block of m1 rows) pairs
    qb1, kb1 = -(-max_q // m1), -(-max_k // n1)
    full1, count1, index1 = planned_lists(kept, dec_m, dec_n, m1, n1, lq, lk, causal, max_q, max_k, group, True)
    atomic = atomic_dq()
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if atomic else delta  # (unread if not)
    sa = _token_strides(dq_acc, ragged_q) if atomic else (0, 0, 0)
    # a list longer than `chunk` pairs (one KV head's G x qb1 at most) is split over `chunks` programs
    chunks = split_parts()
    chunk = -(-group * qb1 // chunks)
    dk32, dv32 = ((torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (dk, dv)) if chunks > 1
                  else (delta, delta))  # (unread with one chunk)
    _dkdv_kernel[(kb1 * chunks, batch * hkv)](
        q, k, v, dout, lse2, delta, full1, count1, index1, dk, dv, dq_acc, dk32, dv32,
        *sq, *sk, *sv, *so, *sl,
        count1.stride(0), count1.stride(1), index1.stride(0), index1.stride(1), index1.stride(2),
        *sdk, *sdv, *sa, lq, lk, qs, ks, hkv, group, qb1, scale, scale_log2, chunks, chunk,
        CAUSAL=causal, BLOCK_M=m1, BLOCK_N=n1, D=dqk, DV_DIM=dv_dim, ATOMIC_DQ=atomic, SPLIT=chunks > 1,
        num_warps=warps, num_stages=stages)
    if chunks > 1:
        _finish_split_kernel[(kb1, batch * hkv)](
            count1, dk, dv, dk32, dv32, count1.stride(0), count1.stride(1), *sdk, *sdv, lk, ks, hkv, chunk,
            BLOCK_N=n1, D=dqk, DV_DIM=dv_dim, num_warps=8)  # (4 warps spill at 64 x 128)
    if atomic:
        return dq_acc.to(q.dtype), dk, dv

    # kernel 2: per (entry, query head, block of m2 rows) the listed blocks of n2 keys
    full2, count2, index2 = planned_lists(kept, dec_m, dec_n, m2, n2, lq, lk, causal, max_q, max_k, group, False)
    _dq_kernel[(full2.shape[2], batch * hq)](
        q, k, v, dout, lse2, delta, full2, count2, index2, dq,
        *sq, *sk, *sv, *so, *sl,
        count2.stride(0), count2.stride(1), index2.stride(0), index2.stride(1), index2.stride(2),
        *sdq, lq, lk, qs, ks, hq, group, scale, scale_log2,
        CAUSAL=causal, BLOCK_M=m2, BLOCK_N=n2, D=dqk, DV_DIM=dv_dim, num_warps=warps2, num_stages=stages2)
    return dq, dk, dv
