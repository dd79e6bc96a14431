"""PyTorch custom ops `blasst::prefill` and `blasst::decode`.

Both take the layouts of blasst._core (dense, ragged through cu_seqlens, paged through a block
table) and return (out, lse, stats):
  out   like q with Dv as its last dim, q's dtype (FP8 q: out_dtype, default bfloat16)
  lse   like q without its last dim, float32 (ln of the softmax denominator; -inf for empty rows)
  stats [H, 2] int64 (visited, skipped) tiles per query head (prefill) or KV head (decode), or an
        empty [0, 2] tensor when return_stats is False.
FP8: k and v in torch.float8_e4m3fn (an FP8 KV cache) beside a 16/32-bit q, or all three, with
dequantization scales q_scale / k_scale / v_scale (float tensors of one value or one per KV head;
real value = scale * stored) for exactly the FP8 operands.
The ops are opaque to torch.compile (fake implementations give the shapes), take the current
CUDA stream and allocate their workspace through torch, so CUDA graphs can capture them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _core, _lib
from ._validate import check_inputs, output_dtype


def _impl(phase, q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table, max_seqlen_q,
          max_seqlen_k, scale, causal, threshold_scale_factor, per_kv_head_factor, block_m, block_n, order,
          splits, engine, num_threads, return_stats, per_request_factor, q_scale, k_scale, v_scale, out_dtype):
    out, lse, stats, _, _ = _core.run(
        phase, q, k, v,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, seqlens_q=seqlens_q, seqlens_k=seqlens_k,
        block_table=block_table, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, scale=scale,
        causal=causal, threshold_scale_factor=threshold_scale_factor, per_kv_head_factor=per_kv_head_factor,
        block_m=block_m, block_n=block_n, order=order, splits=splits, engine=engine, num_threads=num_threads,
        return_stats=return_stats, per_request_factor=per_request_factor, q_scale=q_scale, k_scale=k_scale,
        v_scale=v_scale, out_dtype=out_dtype,
    )
    return out, lse, stats


def _fake(phase, q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table, per_kv_head_factor,
          max_seqlen_q, max_seqlen_k, return_stats, per_request_factor, q_scale, k_scale, v_scale, out_dtype):
    # The same checks as the real kernel, so that torch.compile and meta tensors refuse what the
    # engine would refuse (a k on another device than q lands here, not in the engine).
    check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table, per_kv_head_factor,
                 max_seqlen_q, max_seqlen_k, per_request_factor, q_scale, k_scale, v_scale, out_dtype)
    out_shape, lse_shape, stats_shape = _core.output_shapes(q, v, phase, v.shape[-2], return_stats)
    return (q.new_empty(out_shape, dtype=output_dtype(q, out_dtype)), q.new_empty(lse_shape, dtype=torch.float32),
            q.new_empty(stats_shape, dtype=torch.int64))


@torch.library.custom_op("blasst::prefill", mutates_args=())
def prefill(
    q: Tensor, k: Tensor, v: Tensor,
    cu_seqlens_q: Optional[Tensor] = None, cu_seqlens_k: Optional[Tensor] = None,
    seqlens_q: Optional[Tensor] = None, seqlens_k: Optional[Tensor] = None,
    block_table: Optional[Tensor] = None,
    max_seqlen_q: int = 0, max_seqlen_k: int = 0,
    scale: float = 0.0, causal: bool = True,
    threshold_scale_factor: float = 0.0, per_kv_head_factor: Optional[Tensor] = None,
    block_m: int = 0, block_n: int = 0, order: int = 0, splits: int = 0,
    engine: int = 0, num_threads: int = 0, return_stats: bool = False,
    per_request_factor: Optional[Tensor] = None,
    q_scale: Optional[Tensor] = None, k_scale: Optional[Tensor] = None, v_scale: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Prefill attention (decision group: block_m query rows of one query head)."""
    return _impl(_lib.PHASE_PREFILL, q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table,
                 max_seqlen_q, max_seqlen_k, scale, causal, threshold_scale_factor, per_kv_head_factor, block_m,
                 block_n, order, splits, engine, num_threads, return_stats, per_request_factor, q_scale, k_scale,
                 v_scale, out_dtype)


@torch.library.custom_op("blasst::decode", mutates_args=())
def decode(
    q: Tensor, k: Tensor, v: Tensor,
    cu_seqlens_q: Optional[Tensor] = None, cu_seqlens_k: Optional[Tensor] = None,
    seqlens_q: Optional[Tensor] = None, seqlens_k: Optional[Tensor] = None,
    block_table: Optional[Tensor] = None,
    max_seqlen_q: int = 0, max_seqlen_k: int = 0,
    scale: float = 0.0, causal: bool = True,
    threshold_scale_factor: float = 0.0, per_kv_head_factor: Optional[Tensor] = None,
    block_m: int = 0, block_n: int = 0, order: int = 0, splits: int = 0,
    engine: int = 0, num_threads: int = 0, return_stats: bool = False,
    per_request_factor: Optional[Tensor] = None,
    q_scale: Optional[Tensor] = None, k_scale: Optional[Tensor] = None, v_scale: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Decode attention (decision group: block_m (query head, row) pairs of one KV head, head-major;
    block_m 0: all G heads x all query rows of the KV head)."""
    return _impl(_lib.PHASE_DECODE, q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table,
                 max_seqlen_q, max_seqlen_k, scale, causal, threshold_scale_factor, per_kv_head_factor, block_m,
                 block_n, order, splits, engine, num_threads, return_stats, per_request_factor, q_scale, k_scale,
                 v_scale, out_dtype)


@prefill.register_fake
def _prefill_fake(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, seqlens_q=None, seqlens_k=None, block_table=None,
                  max_seqlen_q=0, max_seqlen_k=0, scale=0.0, causal=True, threshold_scale_factor=0.0,
                  per_kv_head_factor=None, block_m=0, block_n=0, order=0, splits=0, engine=0, num_threads=0,
                  return_stats=False, per_request_factor=None, q_scale=None, k_scale=None, v_scale=None,
                  out_dtype=None):
    return _fake(_lib.PHASE_PREFILL, q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table,
                 per_kv_head_factor, max_seqlen_q, max_seqlen_k, return_stats, per_request_factor, q_scale, k_scale,
                 v_scale, out_dtype)


@decode.register_fake
def _decode_fake(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, seqlens_q=None, seqlens_k=None, block_table=None,
                 max_seqlen_q=0, max_seqlen_k=0, scale=0.0, causal=True, threshold_scale_factor=0.0,
                 per_kv_head_factor=None, block_m=0, block_n=0, order=0, splits=0, engine=0, num_threads=0,
                 return_stats=False, per_request_factor=None, q_scale=None, k_scale=None, v_scale=None,
                 out_dtype=None):
    return _fake(_lib.PHASE_DECODE, q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table,
                 per_kv_head_factor, max_seqlen_q, max_seqlen_k, return_stats, per_request_factor, q_scale, k_scale,
                 v_scale, out_dtype)


def _no_backward(ctx, *grads):
    raise NotImplementedError(
        "blasst: the ops blasst::prefill and blasst::decode record no decisions for a backward pass; call "
        "blasst.attention(...) (or the 'blasst' transformers attention), which is differentiable, or run the ops "
        "under torch.no_grad().")


def _setup_context(ctx, inputs, output):
    pass


# A clear error at backward() instead of PyTorch's generic "no autograd formula".
for _op in (prefill, decode):
    _op.register_autograd(_no_backward, setup_context=_setup_context)
