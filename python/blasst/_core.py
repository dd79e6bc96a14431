"""One attention call through the C ABI: torch tensors in, blasst_args filled, outputs out.

No math here: this only describes memory (data pointers, strides in elements, numel) and picks
the stream and workspace. Layouts (SPEC section 1, blasst.h):
  dense   q [B, Lq, Hq, Dqk]   k [B, Lk, Hkv, Dqk]   v [B, Lk, Hkv, Dv]   (optional seqlens_q/k [B])
  ragged  q [Tq, Hq, Dqk] with cu_seqlens_q [B+1];  k/v [Tk, Hkv, D] with cu_seqlens_k [B+1]
  paged   k/v [num_pages, page_size, Hkv, D] with block_table [B, P] and seqlens_k [B]
Outputs: out like q with Dv as last dim, lse like q without the last dim (fp32),
stats [H, 2] int64 (visited, skipped) per query head in prefill, per KV head in decode.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Optional

import torch

from . import _lib

_DTYPES = {torch.float32: _lib.DTYPE_FLOAT32, torch.float16: _lib.DTYPE_FLOAT16, torch.bfloat16: _lib.DTYPE_BFLOAT16}
_ORDERS = {"ascending": _lib.ORDER_ASCENDING, "anchored": _lib.ORDER_ANCHORED}
_ENGINES = {"auto": _lib.ENGINE_AUTO, "cpu": _lib.ENGINE_CPU, "cuda": _lib.ENGINE_CUDA}
_ENGINE_NAMES = {v: k for k, v in _ENGINES.items()}
_ORDER_NAMES = {v: k for k, v in _ORDERS.items()}


def order_code(order) -> int:
    if isinstance(order, int):
        return order
    try:
        return _ORDERS[order]
    except KeyError:
        raise ValueError(f"blasst: order is {order!r}, expected one of {sorted(_ORDERS)}") from None


def engine_code(engine) -> int:
    if isinstance(engine, int):
        return engine
    try:
        return _ENGINES[engine]
    except KeyError:
        raise ValueError(f"blasst: engine is {engine!r}, expected one of {sorted(_ENGINES)}") from None


@dataclass
class RunInfo:
    """What the engine reported for one call (blasst_run_info)."""

    engine: str
    block_m: int
    block_n: int
    order: str
    splits: int
    visited: int  # -1 when the engine could not read its counters back (e.g. CUDA graph capture)
    skipped: int


_last = threading.local()


def last_run_info() -> Optional[RunInfo]:
    """RunInfo of this thread's last successful call (None before the first)."""
    return getattr(_last, "info", None)


def _addressable(t: torch.Tensor) -> int:
    """Elements addressable from t.data_ptr() to the end of its storage (blasst_tensor.numel)."""
    return t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()


def _fill_tensor(dst: _lib.BlasstTensor, name: str, t: torch.Tensor, ragged: bool) -> None:
    """Dense: dims 0, 1, 2 are batch, token, head ([B, L, H, D] or lse [B, L, H]).
    Ragged: dims 0, 1 are packed token, head ([T, H, D] or lse [T, H])."""
    if t.stride(-1) != 1 and t.shape[-1] != 1:
        raise ValueError(f"blasst: {name} must have a contiguous last dimension (stride {t.stride()})")
    dst.data = t.data_ptr()
    dst.dtype = _DTYPES[t.dtype]
    if ragged:
        dst.batch_stride, dst.token_stride, dst.head_stride = 0, t.stride(0), t.stride(1)
    else:
        dst.batch_stride, dst.token_stride, dst.head_stride = t.stride(0), t.stride(1), t.stride(2)
    dst.numel = max(_addressable(t), 1)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if (t.stride(-1) == 1 or t.shape[-1] == 1) else t.contiguous()


def _int32(t: Optional[torch.Tensor], name: str, device: torch.device) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.device != device:
        raise ValueError(f"blasst: {name} is on {t.device}, expected {device} (the device of q)")
    if t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"blasst: {name} has dtype {t.dtype}, expected int32")
    return t.to(torch.int32).contiguous()


def output_shapes(q: torch.Tensor, v: torch.Tensor, phase: int, num_kv_heads: int, return_stats: bool):
    """Shapes of (out, lse, stats) for inputs q, v (shared by the op and its fake)."""
    out_shape = tuple(q.shape[:-1]) + (v.shape[-1],)
    lse_shape = tuple(q.shape[:-1])
    heads = q.shape[-2] if phase == _lib.PHASE_PREFILL else num_kv_heads
    stats_shape = (heads, 2) if return_stats else (0, 2)
    return out_shape, lse_shape, stats_shape


def run(
    phase: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None,
    seqlens_q: Optional[torch.Tensor] = None,
    seqlens_k: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    max_seqlen_q: int = 0,
    max_seqlen_k: int = 0,
    scale: float = 0.0,
    causal: bool = True,
    threshold_scale_factor: float = 0.0,
    per_kv_head_factor: Optional[torch.Tensor] = None,
    block_m: int = 0,
    block_n: int = 0,
    order: int = _lib.ORDER_ASCENDING,
    splits: int = 0,
    engine: int = _lib.ENGINE_AUTO,
    num_threads: int = 0,
    return_stats: bool = False,
    return_decisions: bool = False,
):
    """Runs one call; returns (out, lse, stats, decisions or None, RunInfo)."""
    device = q.device
    for name, t in (("k", k), ("v", v)):
        if t.device != device:
            raise ValueError(f"blasst: {name} is on {t.device}, expected {device} (the device of q)")
    if q.dtype not in _DTYPES:
        raise ValueError(f"blasst: q has dtype {q.dtype}, expected float32, float16 or bfloat16")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"blasst: q, k and v must share one dtype (q {q.dtype}, k {k.dtype}, v {v.dtype})")

    ragged_q = cu_seqlens_q is not None
    paged = block_table is not None
    ragged_k = cu_seqlens_k is not None
    if q.dim() != (3 if ragged_q else 4):
        raise ValueError(
            f"blasst: q has shape {tuple(q.shape)}, expected "
            + ("[total_q, Hq, D] with cu_seqlens_q" if ragged_q else "[B, Lq, Hq, D]")
        )
    kv_dims = 4 if (paged or not ragged_k) else 3
    for name, t in (("k", k), ("v", v)):
        if t.dim() != kv_dims:
            want = "[num_pages, page_size, Hkv, D]" if paged else ("[total_k, Hkv, D]" if ragged_k else "[B, Lk, Hkv, D]")
            raise ValueError(f"blasst: {name} has shape {tuple(t.shape)}, expected {want}")
    if paged and ragged_k:
        raise ValueError("blasst: cu_seqlens_k cannot be combined with block_table (paged K/V takes seqlens_k)")

    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    cu_seqlens_q = _int32(cu_seqlens_q, "cu_seqlens_q", device)
    cu_seqlens_k = _int32(cu_seqlens_k, "cu_seqlens_k", device)
    seqlens_q = _int32(seqlens_q, "seqlens_q", device)
    seqlens_k = _int32(seqlens_k, "seqlens_k", device)
    block_table = _int32(block_table, "block_table", device)

    num_q_heads, dqk = q.shape[-2], q.shape[-1]
    num_kv_heads, dv = v.shape[-2], v.shape[-1]
    if k.shape[-2] != num_kv_heads:
        raise ValueError(f"blasst: k has {k.shape[-2]} heads but v has {num_kv_heads}")

    if ragged_q:
        batch = cu_seqlens_q.shape[0] - 1
    elif paged:
        batch = block_table.shape[0]
    else:
        batch = q.shape[0]
    if ragged_k and cu_seqlens_k.shape[0] != batch + 1:
        raise ValueError(f"blasst: cu_seqlens_k has {cu_seqlens_k.shape[0]} entries, expected batch + 1 = {batch + 1}")
    if not ragged_q and not paged and not ragged_k and k.shape[0] != batch:
        raise ValueError(f"blasst: q has batch {batch} but k has batch {k.shape[0]}")

    # Bounds of the per-entry lengths. For ragged layouts they cannot come from shapes alone;
    # reading cu_seqlens is a host sync on CUDA, so callers that care pass max_seqlen_*.
    if max_seqlen_q <= 0:
        if ragged_q:
            max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max().item()) if batch > 0 else 0
        else:
            max_seqlen_q = q.shape[1]
    if max_seqlen_k <= 0:
        if paged:
            max_seqlen_k = block_table.shape[1] * k.shape[1]
        elif ragged_k:
            max_seqlen_k = int((cu_seqlens_k[1:] - cu_seqlens_k[:-1]).max().item()) if batch > 0 else 0
        else:
            max_seqlen_k = k.shape[1]

    out_shape, lse_shape, stats_shape = output_shapes(q, v, phase, num_kv_heads, return_stats)
    # Rows past an entry's length are never written by the engine: give them defined values.
    partial_rows = seqlens_q is not None or ragged_q
    out = (torch.zeros if partial_rows else torch.empty)(out_shape, dtype=q.dtype, device=device)
    lse = (torch.full(lse_shape, float("-inf"), dtype=torch.float32, device=device) if partial_rows
           else torch.empty(lse_shape, dtype=torch.float32, device=device))
    stats = torch.zeros(stats_shape, dtype=torch.int64, device=device)

    if out.numel() == 0 or k.numel() == 0:
        # nothing to attend (no query rows, or no keys): empty rows are O = 0, LSE = -inf (SPEC 5)
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse, stats, None, RunInfo("none", 0, 0, "ascending", 0, 0, 0)

    a = _lib.new_args()
    a.batch = batch
    a.num_q_heads = num_q_heads
    a.num_kv_heads = num_kv_heads
    a.head_dim_qk = dqk
    a.head_dim_v = dv
    a.max_seqlen_q = max_seqlen_q
    a.max_seqlen_k = max_seqlen_k
    a.cu_seqlens_q = cu_seqlens_q.data_ptr() if cu_seqlens_q is not None else None
    a.cu_seqlens_k = cu_seqlens_k.data_ptr() if cu_seqlens_k is not None else None
    a.seqlens_q = seqlens_q.data_ptr() if seqlens_q is not None else None
    a.seqlens_k = seqlens_k.data_ptr() if seqlens_k is not None else None
    if paged:
        a.block_table = block_table.data_ptr()
        a.block_table_stride = block_table.stride(0)
        a.page_size = k.shape[1]
        a.num_pages = k.shape[0]
    _fill_tensor(a.q, "q", q, ragged_q)
    _fill_tensor(a.k, "k", k, kv_dims == 3)
    _fill_tensor(a.v, "v", v, kv_dims == 3)
    _fill_tensor(a.out, "out", out, ragged_q)
    _fill_tensor(a.lse, "lse", lse, ragged_q)
    a.scale = float(scale)
    a.causal = 1 if causal else 0
    a.threshold.threshold_scale_factor = float(threshold_scale_factor)
    if per_kv_head_factor is not None:
        if per_kv_head_factor.device != device:
            raise ValueError(f"blasst: per_kv_head_factor is on {per_kv_head_factor.device}, expected {device}")
        if per_kv_head_factor.numel() != num_kv_heads:
            raise ValueError(
                f"blasst: per_kv_head_factor has {per_kv_head_factor.numel()} values, expected num_kv_heads = {num_kv_heads}"
            )
        per_kv_head_factor = per_kv_head_factor.to(torch.float32).contiguous()
        a.threshold.per_kv_head_factor = per_kv_head_factor.data_ptr()
    a.geometry.block_m = block_m
    a.geometry.block_n = block_n
    a.geometry.order = order
    a.geometry.splits = splits
    a.engine = engine
    a.num_threads = num_threads if num_threads > 0 else torch.get_num_threads()
    if return_stats:
        a.stats_per_head = stats.data_ptr()

    decisions = None
    if return_decisions:
        # Size the trace from the geometry the engine will use: ask the CPU defaults when none
        # is given; CUDA engines pick their own tiles, so size for the smallest (64 x 64).
        bm = block_m or (64 if device.type == "cuda" else 128)
        bn = block_n or (64 if device.type == "cuda" else 128)
        groups = num_kv_heads if phase == _lib.PHASE_DECODE else num_q_heads * -(-max_seqlen_q // bm)
        tiles = -(-max_seqlen_k // bn)
        decisions = torch.zeros(max(batch * groups * tiles, 1), dtype=torch.uint8, device=device)
        a.decisions = decisions.data_ptr()
        a.decisions_numel = decisions.numel()

    workspace = None
    if device.type == "cuda":
        guard = torch.cuda.device(device)
        guard.__enter__()
        try:
            a.stream = torch.cuda.current_stream(device).cuda_stream
            nbytes = ctypes.c_size_t(0)
            _lib.check(_lib.lib().blasst_workspace_size(ctypes.byref(a), phase, ctypes.byref(nbytes)))
            if nbytes.value > 0:
                # Allocated through torch so that CUDA graphs capture it from their pool.
                workspace = torch.empty(nbytes.value, dtype=torch.uint8, device=device)
                a.workspace = workspace.data_ptr()
                a.workspace_bytes = nbytes.value
            info = _call(phase, a)
        finally:
            guard.__exit__(None, None, None)
    else:
        info = _call(phase, a)
    del workspace
    return out, lse, stats, decisions, info


def _call(phase: int, a: _lib.BlasstArgs) -> RunInfo:
    lb = _lib.lib()
    ci = _lib.new_run_info()
    fn = lb.blasst_prefill if phase == _lib.PHASE_PREFILL else lb.blasst_decode
    _lib.check(fn(ctypes.byref(a), ctypes.byref(ci)))
    info = RunInfo(
        engine=_ENGINE_NAMES.get(ci.engine, str(ci.engine)),
        block_m=ci.geometry.block_m,
        block_n=ci.geometry.block_n,
        order=_ORDER_NAMES.get(ci.geometry.order, str(ci.geometry.order)),
        splits=ci.geometry.splits,
        visited=ci.visited,
        skipped=ci.skipped,
    )
    _last.info = info
    return info
