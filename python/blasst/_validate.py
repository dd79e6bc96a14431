"""Checks of the tensors of one attention call, before anything runs.

Everything here reads shapes, strides, dtypes and devices only (never data), so the same checks
run in the ops' real kernels, in their fake implementations (torch.compile and meta tensors see
the error at trace time) and in blasst.attention. What can only be read from data (the values of
seqlens, cu_seqlens and block tables) is checked by the C ABI for host memory; on a GPU those
values are device memory and are trusted (reading them would synchronize the host).

Layouts (SPEC section 1, blasst.h):
  dense   q [B, Lq, Hq, Dqk]   k [B, Lk, Hkv, Dqk]   v [B, Lk, Hkv, Dv]   seqlens_q/k [B]
  ragged  q [Tq, Hq, Dqk] with cu_seqlens_q [B+1];  k/v [Tk, Hkv, D] with cu_seqlens_k [B+1]
  paged   k/v [num_pages, page_size, Hkv, D] with block_table [B, P] and seqlens_k [B]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ._lib import ERROR_INVALID_ARGUMENT, BlasstInvalidArgument

# blasst_args holds batch, heads, head dims, lengths and page counts as int32, and the side
# tensors (seqlens, cu_seqlens, block_table) are int32 arrays.
INT32_MAX = 2**31 - 1
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8 = torch.float8_e4m3fn
INDEX_DTYPES = (torch.int32, torch.int64)


def _fail(message: str):
    """Bad input is BlasstInvalidArgument (a ValueError), as when the C ABI refuses it."""
    raise BlasstInvalidArgument(ERROR_INVALID_ARGUMENT, f"blasst: {message}")


@dataclass(frozen=True)
class Layout:
    """What the shapes say about one call (all plain ints or SymInts)."""

    ragged_q: bool
    ragged_k: bool
    paged: bool
    batch: int
    num_q_heads: int
    num_kv_heads: int
    head_dim_qk: int
    head_dim_v: int


def view_extent(t: torch.Tensor) -> int:
    """Elements from t.data_ptr() to the last element of the view, plus one (0 when empty):
    the bound every access through this view must respect (not the storage's size)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def _int32_size(value, what: str) -> None:
    if value > INT32_MAX:
        _fail(f"{what} is {value}, larger than the engines' limit of 2^31 - 1")


def _check_devices(q, named: dict) -> None:
    for name, t in named.items():
        if t is not None and t.device != q.device:
            _fail(f"{name} is on {t.device}, expected {q.device} (the device of q)")


def _side_tensor(name: str, t: Optional[torch.Tensor], length, what: str) -> None:
    """seqlens / cu_seqlens: 1-D int32 or int64 of exactly `length` entries."""
    if t is None:
        return
    if t.dtype not in INDEX_DTYPES:
        _fail(f"{name} has dtype {t.dtype}, expected int32 (or int64)")
    if t.dim() != 1 or t.shape[0] != length:
        _fail(f"{name} has shape {tuple(t.shape)}, expected [{length}] ({what})")


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None,
    seqlens_q: Optional[torch.Tensor] = None,
    seqlens_k: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    per_kv_head_factor: Optional[torch.Tensor] = None,
    max_seqlen_q: int = 0,
    max_seqlen_k: int = 0,
    per_request_factor: Optional[torch.Tensor] = None,
    q_scale: Optional[torch.Tensor] = None,
    k_scale: Optional[torch.Tensor] = None,
    v_scale: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Layout:
    """Raises BlasstInvalidArgument naming the argument for anything the engines could misread."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} is a {type(t).__name__}, expected a torch.Tensor")
    _check_devices(q, {"k": k, "v": v, "cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k,
                       "seqlens_q": seqlens_q, "seqlens_k": seqlens_k, "block_table": block_table,
                       "per_kv_head_factor": per_kv_head_factor, "per_request_factor": per_request_factor,
                       "q_scale": q_scale, "k_scale": k_scale, "v_scale": v_scale})
    if q.dtype not in FLOAT_DTYPES + (FP8,):
        _fail(f"q has dtype {q.dtype}, expected float32, float16, bfloat16 or float8_e4m3fn")
    fp8_cache = q.dtype != FP8 and k.dtype == FP8 and v.dtype == FP8
    if not fp8_cache and (k.dtype != q.dtype or v.dtype != q.dtype):
        _fail(f"q, k and v must share one dtype, or k and v be float8_e4m3fn together (q {q.dtype}, k {k.dtype}, "
              f"v {v.dtype})")

    ragged_q = cu_seqlens_q is not None
    ragged_k = cu_seqlens_k is not None
    paged = block_table is not None
    if paged and ragged_k:
        _fail("cu_seqlens_k cannot be combined with block_table (paged K/V takes seqlens_k)")
    if ragged_q and seqlens_q is not None:
        _fail("give cu_seqlens_q or seqlens_q, not both")
    if ragged_k and seqlens_k is not None:
        _fail("give cu_seqlens_k or seqlens_k, not both")
    if q.dim() != (3 if ragged_q else 4):
        want = "[total_q, Hq, Dqk] with cu_seqlens_q" if ragged_q else "[B, Lq, Hq, Dqk]"
        _fail(f"q has shape {tuple(q.shape)}, expected {want}")
    kv_dims = 3 if (ragged_k and not paged) else 4
    kv_want = ("[num_pages, page_size, Hkv, D] with block_table" if paged
               else "[total_k, Hkv, D] with cu_seqlens_k" if ragged_k else "[B, Lk, Hkv, D]")
    for name, t in (("k", k), ("v", v)):
        if t.dim() != kv_dims:
            _fail(f"{name} has shape {tuple(t.shape)}, expected {kv_want}")

    num_q_heads, head_dim_qk = q.shape[-2], q.shape[-1]
    num_kv_heads, head_dim_v = v.shape[-2], v.shape[-1]
    if k.shape[-1] != head_dim_qk:
        _fail(f"k has head dim {k.shape[-1]} but q has {head_dim_qk} (q and k must share Dqk)")
    if k.shape[-2] != num_kv_heads:
        _fail(f"k has {k.shape[-2]} KV heads but v has {num_kv_heads}")
    if k.shape[:-2] != v.shape[:-2]:
        what = "(num_pages, page_size)" if paged else "(total_k,)" if ragged_k else "(batch, Lk)"
        _fail(f"k and v must agree on {what}: k has {tuple(k.shape[:-2])}, v has {tuple(v.shape[:-2])}")
    for name, n in (("q heads", num_q_heads), ("KV heads", num_kv_heads), ("Dqk", head_dim_qk),
                    ("Dv", head_dim_v)):
        if n < 1:
            _fail(f"{name} is {n}, expected >= 1")
    if num_q_heads % num_kv_heads != 0:
        _fail(f"q has {num_q_heads} heads, not a multiple of the {num_kv_heads} KV heads of k and v")

    # The batch: from cu_seqlens_q, else q's first dim; every other batched tensor must agree.
    if ragged_q:
        if cu_seqlens_q.dtype not in INDEX_DTYPES:
            _fail(f"cu_seqlens_q has dtype {cu_seqlens_q.dtype}, expected int32 (or int64)")
        if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] < 1:
            _fail(f"cu_seqlens_q has shape {tuple(cu_seqlens_q.shape)}, expected [batch + 1] offsets")
        batch = cu_seqlens_q.shape[0] - 1
    else:
        batch = q.shape[0]
    _side_tensor("seqlens_q", seqlens_q, batch, f"one length per batch entry; batch is {batch}")
    _side_tensor("cu_seqlens_k", cu_seqlens_k, batch + 1, f"batch + 1 offsets; batch is {batch}")
    _side_tensor("seqlens_k", seqlens_k, batch, f"one length per batch entry; batch is {batch}")
    if paged:
        if block_table.dtype not in INDEX_DTYPES:
            _fail(f"block_table has dtype {block_table.dtype}, expected int32 (or int64)")
        if block_table.dim() != 2 or block_table.shape[0] != batch:
            _fail(f"block_table has shape {tuple(block_table.shape)}, expected [batch = {batch}, pages per entry]")
        if block_table.shape[1] < 1:
            _fail("block_table has no page columns, expected [batch, pages per entry >= 1]")
    elif not ragged_k and k.shape[0] != batch:
        source = "cu_seqlens_q gives" if ragged_q else "q has"
        _fail(f"{source} batch {batch} but k and v have batch {k.shape[0]}")
    if per_request_factor is not None:
        if per_kv_head_factor is not None:
            _fail("give per_kv_head_factor or per_request_factor, not both")
        if not per_request_factor.dtype.is_floating_point:
            _fail(f"per_request_factor has dtype {per_request_factor.dtype}, expected a floating dtype")
        if tuple(per_request_factor.shape) != (batch,):
            _fail(f"per_request_factor has shape {tuple(per_request_factor.shape)}, expected [batch = {batch}]")
    if per_kv_head_factor is not None:
        if not per_kv_head_factor.dtype.is_floating_point:
            _fail(f"per_kv_head_factor has dtype {per_kv_head_factor.dtype}, expected a floating dtype")
        if tuple(per_kv_head_factor.shape) != (num_kv_heads,):
            _fail(f"per_kv_head_factor has shape {tuple(per_kv_head_factor.shape)}, expected [num_kv_heads = "
                  f"{num_kv_heads}]")

    _check_fp8(q, k, v, q_scale, k_scale, v_scale, out_dtype, num_kv_heads)

    # Lengths. A dense side without per-entry lengths is exactly its shape: a smaller bound would
    # leave rows unwritten or keys unread; with per-entry lengths the bound may be smaller.
    if max_seqlen_q < 0 or max_seqlen_k < 0:
        _fail(f"max_seqlen_q / max_seqlen_k are {max_seqlen_q} / {max_seqlen_k}, expected >= 0 (0 = from the shapes)")
    if not ragged_q:
        if seqlens_q is None and max_seqlen_q and max_seqlen_q != q.shape[1]:
            _fail(f"max_seqlen_q is {max_seqlen_q} but q has {q.shape[1]} rows and no seqlens_q")
        if max_seqlen_q > q.shape[1]:
            _fail(f"max_seqlen_q is {max_seqlen_q} but q has only {q.shape[1]} rows")
    if paged:
        capacity = block_table.shape[1] * k.shape[1]
        if max_seqlen_k > capacity:
            _fail(f"max_seqlen_k is {max_seqlen_k} but the block table holds {block_table.shape[1]} pages of "
                  f"{k.shape[1]} tokens = {capacity}")
    elif not ragged_k:
        if seqlens_k is None and max_seqlen_k and max_seqlen_k != k.shape[1]:
            _fail(f"max_seqlen_k is {max_seqlen_k} but k has {k.shape[1]} keys and no seqlens_k")
        if max_seqlen_k > k.shape[1]:
            _fail(f"max_seqlen_k is {max_seqlen_k} but k has only {k.shape[1]} keys")

    # Sizes the C ABI holds in 32 bits.
    _int32_size(batch, "the batch")
    _int32_size(num_q_heads, "the number of query heads")
    _int32_size(max_seqlen_q, "max_seqlen_q")
    _int32_size(max_seqlen_k, "max_seqlen_k")
    _int32_size(q.shape[0] if ragged_q else q.shape[1], "the query length (q tokens)")
    if paged:
        _int32_size(k.shape[0], "the number of pages")
        _int32_size(k.shape[1], "the page size")
        _int32_size(block_table.shape[1] * k.shape[1], "the key length a block table row can hold")
    else:
        _int32_size(k.shape[0] if ragged_k else k.shape[1], "the key length (k tokens)")
    return Layout(ragged_q, ragged_k, paged, batch, num_q_heads, num_kv_heads, head_dim_qk, head_dim_v)


def output_dtype(q: torch.Tensor, out_dtype: Optional[torch.dtype]) -> torch.dtype:
    """The output's dtype: q's, or for FP8 queries out_dtype (default bfloat16)."""
    if q.dtype == FP8:
        return out_dtype or torch.bfloat16
    return q.dtype


def _check_fp8(q, k, v, q_scale, k_scale, v_scale, out_dtype, num_kv_heads) -> None:
    """A dequantization scale for, and only for, each float8_e4m3fn operand: a float tensor of
    one value ([] or [1]) or one per KV head ([Hkv]). out_dtype only with FP8 queries."""
    for name, t, scale in (("q", q, q_scale), ("k", k, k_scale), ("v", v, v_scale)):
        if t.dtype == FP8 and scale is None:
            _fail(f"{name} is float8_e4m3fn but {name}_scale is not given (its dequantization scale)")
        if t.dtype != FP8 and scale is not None:
            _fail(f"{name}_scale is given but {name} is {t.dtype}, not float8_e4m3fn")
        if scale is None:
            continue
        if not scale.dtype.is_floating_point or scale.dtype == FP8:
            _fail(f"{name}_scale has dtype {scale.dtype}, expected float32")
        if tuple(scale.shape) not in ((), (1,), (num_kv_heads,)):
            _fail(f"{name}_scale has shape {tuple(scale.shape)}, expected one value ([] or [1]) or one per KV head "
                  f"([{num_kv_heads}])")
    if out_dtype is not None:
        if q.dtype != FP8 and out_dtype != q.dtype:
            _fail(f"out_dtype {out_dtype} is only for float8_e4m3fn queries (the output takes q's dtype {q.dtype})")
        if out_dtype not in FLOAT_DTYPES:
            _fail(f"out_dtype is {out_dtype}, expected float32, float16 or bfloat16")


def scales_for_call(q_scale, k_scale, v_scale, num_kv_heads: int):
    """(q, k, v scales as contiguous float32 tensors or None, per_kv_head): one value each, or all
    expanded to [Hkv] when any is per KV head (the C ABI takes one layout for the three)."""
    given = [s for s in (q_scale, k_scale, v_scale) if s is not None]
    per_head = any(s.dim() == 1 and s.shape[0] == num_kv_heads and num_kv_heads > 1 for s in given)
    n = num_kv_heads if per_head else 1
    out = [None if s is None else s.to(torch.float32).reshape(-1).expand(n).contiguous() for s in
           (q_scale, k_scale, v_scale)]
    return out[0], out[1], out[2], per_head


def int32_values(t: Optional[torch.Tensor], name: str) -> Optional[torch.Tensor]:
    """The side tensor as contiguous int32. int64 values outside int32 are refused where they can
    be read without a host sync (CPU); on a GPU the engine trusts them, as the C ABI documents."""
    if t is None:
        return None
    if t.dtype == torch.int64 and t.device.type == "cpu" and t.numel() > 0:
        lo, hi = int(t.min()), int(t.max())
        if lo < -INT32_MAX - 1 or hi > INT32_MAX:
            _fail(f"{name} holds {hi if hi > INT32_MAX else lo}, outside int32 (the engines' index type)")
    return t.to(torch.int32).contiguous()
