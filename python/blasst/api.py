"""blasst.attention: the friendly entry point over the blasst::prefill / blasst::decode ops."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _core, _guard, _lib, autograd, ops  # noqa: F401  (ops registers torch.ops.blasst.*)
from .schema import Formula

DECODE_MAX_QUERY_LEN = 8


def resolve_phase(phase: str, seqlen_q: int, seqlen_k: int, decode_max_query_len: int = DECODE_MAX_QUERY_LEN) -> str:
    """'auto' is decode for 1..decode_max_query_len query rows attending a longer KV (a cache)."""
    if phase in ("prefill", "decode"):
        return phase
    if phase != "auto":
        raise ValueError(f"blasst: phase is {phase!r}, expected 'auto', 'prefill' or 'decode'")
    return "decode" if 1 <= seqlen_q <= decode_max_query_len and seqlen_k > seqlen_q else "prefill"


def _as_tensor(values, device) -> Optional[Tensor]:
    """Factors or scales given as a number or a sequence, as a float32 tensor on q's device
    (tensors and None pass through)."""
    if values is None or isinstance(values, Tensor):
        return values
    if isinstance(values, (int, float)):
        return torch.tensor([float(values)], dtype=torch.float32, device=device)
    return torch.tensor([float(x) for x in values], dtype=torch.float32, device=device)


def _longest(cu_seqlens: Optional[Tensor]) -> Optional[int]:
    """Longest entry of a ragged side from its offsets, or None when they cannot be read here.
    The op reads them too when max_seqlen_* is not given (a host sync on a GPU); under
    torch.compile they are not readable while tracing."""
    if cu_seqlens is None or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        return None
    if torch.compiler.is_compiling():
        _guard.warn_at_call_site(
            "blasst: phase='auto' with a ragged layout under torch.compile takes the packed total as the length; "
            "pass max_seqlen_q / max_seqlen_k (or phase='decode' / 'prefill') to choose by the longest entry")
        return None
    return _core.max_length(cu_seqlens, 0)


def _phase_lengths(q, k, block_table, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """(longest query entry, longest key entry) for phase="auto": the caller's bounds, else a
    ragged side's longest entry (a ragged batch of nine one-token sequences is decode, whatever
    its total), else the (padded) shapes. Malformed layouts fall through to the op's checks."""
    seqlen_q = max_seqlen_q or _longest(cu_seqlens_q)
    if seqlen_q is None:
        seqlen_q = q.shape[1] if q.dim() == 4 else q.shape[0]
    seqlen_k = max_seqlen_k or _longest(cu_seqlens_k)
    if seqlen_k is None:
        if block_table is not None and block_table.dim() == 2 and k.dim() == 4:
            seqlen_k = block_table.shape[1] * k.shape[1]
        else:
            seqlen_k = k.shape[1] if k.dim() == 4 else k.shape[0]
    return seqlen_q, seqlen_k


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
    threshold_scale_factor: Union[float, Sequence[float], Tensor, None] = None,
    target_sparsity: Optional[float] = None,
    formula: Union[Formula, tuple, dict, None] = None,
    phase: str = "auto",
    order: str = "ascending",
    block_m: int = 0,
    block_n: int = 0,
    splits: int = 0,
    return_stats: bool = False,
    engine: str = "auto",
    num_threads: int = 0,
    cu_seqlens_q: Optional[Tensor] = None,
    cu_seqlens_k: Optional[Tensor] = None,
    seqlens_q: Optional[Tensor] = None,
    seqlens_k: Optional[Tensor] = None,
    block_table: Optional[Tensor] = None,
    max_seqlen_q: int = 0,
    max_seqlen_k: int = 0,
    per_request_factor: Union[Sequence[float], Tensor, None] = None,
    q_scale: Union[float, Sequence[float], Tensor, None] = None,
    k_scale: Union[float, Sequence[float], Tensor, None] = None,
    v_scale: Union[float, Sequence[float], Tensor, None] = None,
    out_dtype: Optional[torch.dtype] = None,
):
    """BLASST attention.

    q [B, Lq, Hq, Dqk], k [B, Lk, Hkv, Dqk], v [B, Lk, Hkv, Dv] (Hq = G * Hkv), or the ragged /
    paged layouts of blasst.ops. Returns (out [B, Lq, Hq, Dv], lse [B, Lq, Hq] fp32) and, with
    return_stats, stats [H, 2] int64 of (visited, skipped) tiles per query head (prefill) or per
    KV head (decode).

    threshold_scale_factor: lambda = factor / Lk per batch entry (0 or None = dense); a sequence
    or tensor of num_kv_heads values gives one factor per KV head. target_sparsity with formula
    ((a, b) for a * exp(b * s), a dict of coefficients, or a schema.Formula) is the alternative.
    per_request_factor: one factor per batch entry (a [B] tensor on q's device, or a sequence),
    replacing the scalar for its entry; not combined with per-KV-head factors. The engine reads
    it when it runs, so a CUDA graph that captured the call takes the values present at each
    replay. On a GPU its values are not checked: one that is not finite and > 0 makes its entry
    dense (the CPU engine refuses it).

    FP8: k and v in torch.float8_e4m3fn (an FP8 KV cache) beside a float32/16 or bfloat16 q, or
    q too; k_scale / v_scale (/ q_scale) are the dequantization scales of exactly the FP8 operands
    (real value = scale * stored), one value or one per KV head. With an FP8 q the output is
    out_dtype (default bfloat16).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"blasst: {name} is a {type(t).__name__}, expected a torch.Tensor")
    if threshold_scale_factor is not None and target_sparsity is not None:
        raise ValueError("blasst: give threshold_scale_factor or target_sparsity, not both")
    per_head = None
    factor = 0.0
    if target_sparsity is not None:
        if formula is None:
            raise ValueError("blasst: target_sparsity needs a calibrated formula (formula=(a, b) for a * exp(b * s))")
        if isinstance(formula, tuple):
            formula = Formula(coefficients={"a": float(formula[0]), "b": float(formula[1])})
        elif isinstance(formula, dict):
            formula = Formula(coefficients=formula)
        if not 0.0 <= target_sparsity < 1.0:
            raise ValueError(f"blasst: target_sparsity is {target_sparsity}, expected a value in [0, 1)")
        factor = formula.factor(target_sparsity) if target_sparsity > 0 else 0.0
    elif isinstance(threshold_scale_factor, Tensor) and threshold_scale_factor.dim() == 0:
        factor = float(threshold_scale_factor)
    elif isinstance(threshold_scale_factor, Tensor):
        per_head = threshold_scale_factor.to(device=q.device, dtype=torch.float32).reshape(-1)
    elif isinstance(threshold_scale_factor, (list, tuple)):
        per_head = _as_tensor(threshold_scale_factor, q.device)
    elif threshold_scale_factor is not None:
        factor = float(threshold_scale_factor)

    q_scale, k_scale, v_scale = (_as_tensor(s, q.device) for s in (q_scale, k_scale, v_scale))
    if isinstance(per_request_factor, (int, float)):
        raise TypeError("blasst: per_request_factor is a number, expected one factor per batch entry (a sequence "
                        "or a [B] tensor)")
    per_request_factor = _as_tensor(per_request_factor, q.device)
    if phase == "auto":
        seqlen_q, seqlen_k = _phase_lengths(q, k, block_table, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                            max_seqlen_k)
    else:
        seqlen_q = seqlen_k = 0  # not used
    resolved = resolve_phase(phase, seqlen_q, seqlen_k)
    options = dict(
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, seqlens_q=seqlens_q, seqlens_k=seqlens_k,
        block_table=block_table, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
        scale=float(scale) if scale is not None else 0.0, causal=bool(causal), threshold_scale_factor=factor,
        per_kv_head_factor=per_head, block_m=int(block_m), block_n=int(block_n), order=_core.order_code(order),
        splits=int(splits), engine=_core.engine_code(engine), num_threads=int(num_threads),
        return_stats=bool(return_stats), per_request_factor=per_request_factor, q_scale=q_scale, k_scale=k_scale,
        v_scale=v_scale, out_dtype=out_dtype,
    )
    if autograd.requires_grad(q, k, v):
        # training: the forward records its decisions; gradients flow over the kept tiles
        code = _lib.PHASE_PREFILL if resolved == "prefill" else _lib.PHASE_DECODE
        out, lse, stats = autograd.attention_with_grad(code, q, k, v, options)
    else:
        op = torch.ops.blasst.prefill if resolved == "prefill" else torch.ops.blasst.decode
        out, lse, stats = op(q, k, v, **options)
    return (out, lse, stats) if return_stats else (out, lse)


def run_with_decisions(q: Tensor, k: Tensor, v: Tensor, *, phase: str = "prefill", **kw):
    """Eager call that also returns the tile decision trace (blasst.h `decisions`) and the
    engine's run info: (out, lse, stats, decisions uint8 [batch * groups * tiles], RunInfo).
    For tests and tools; not a torch op."""
    for key in ("order", "engine"):
        if key in kw and isinstance(kw[key], str):
            kw[key] = getattr(_core, f"{key}_code")(kw[key])
    code = _lib.PHASE_PREFILL if phase == "prefill" else _lib.PHASE_DECODE
    return _core.run(code, q, k, v, return_stats=True, return_decisions=True, **kw)
