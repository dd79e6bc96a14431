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
from ._guard import warn_if_dense
from ._validate import check_inputs, int32_values, output_dtype, scales_for_call, view_extent

_DTYPES = {torch.float32: _lib.DTYPE_FLOAT32, torch.float16: _lib.DTYPE_FLOAT16, torch.bfloat16: _lib.DTYPE_BFLOAT16,
           torch.float8_e4m3fn: _lib.DTYPE_FLOAT8_E4M3}
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
    dst.numel = max(view_extent(t), 1)  # the view, not its storage: no access past it


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if (t.stride(-1) == 1 or t.shape[-1] == 1) else t.contiguous()


def max_length(cu_seqlens: Optional[torch.Tensor], default: int) -> int:
    """Longest entry of a ragged side (a host sync on CUDA), or `default` without cu_seqlens."""
    if cu_seqlens is None:
        return default
    if cu_seqlens.numel() < 2:
        return 0
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())


def output_shapes(q: torch.Tensor, v: torch.Tensor, phase: int, num_kv_heads: int, return_stats: bool):
    """Shapes of (out, lse, stats) for inputs q, v (shared by the op and its fake)."""
    out_shape = tuple(q.shape[:-1]) + (v.shape[-1],)
    lse_shape = tuple(q.shape[:-1])
    heads = q.shape[-2] if phase == _lib.PHASE_PREFILL else num_kv_heads
    stats_shape = (heads, 2) if return_stats else (0, 2)
    return out_shape, lse_shape, stats_shape


def _side_tensors(layout, q, k, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table, max_seqlen_q,
                  max_seqlen_k):
    """The side tensors as contiguous int32 and the bounds of the per-entry lengths. For ragged
    layouts the bounds cannot come from shapes alone; reading cu_seqlens is a host sync on CUDA, so
    callers that care pass max_seqlen_*."""
    cu_seqlens_q = int32_values(cu_seqlens_q, "cu_seqlens_q")
    cu_seqlens_k = int32_values(cu_seqlens_k, "cu_seqlens_k")
    seqlens_q = int32_values(seqlens_q, "seqlens_q")
    seqlens_k = int32_values(seqlens_k, "seqlens_k")
    block_table = int32_values(block_table, "block_table")
    if max_seqlen_q <= 0:
        max_seqlen_q = max_length(cu_seqlens_q, q.shape[1] if not layout.ragged_q else 0)
    if max_seqlen_k <= 0:
        if layout.paged:
            max_seqlen_k = block_table.shape[1] * k.shape[1]
        else:
            max_seqlen_k = max_length(cu_seqlens_k, k.shape[1] if not layout.ragged_k else 0)
    return cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table, max_seqlen_q, max_seqlen_k


def _call_args(layout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table,
               max_seqlen_q, max_seqlen_k, scale, causal) -> _lib.BlasstArgs:
    """blasst_args describing one call's layout and operands (side tensors already int32)."""
    a = _lib.new_args()
    a.batch = layout.batch
    a.num_q_heads = layout.num_q_heads
    a.num_kv_heads = layout.num_kv_heads
    a.head_dim_qk = layout.head_dim_qk
    a.head_dim_v = layout.head_dim_v
    a.max_seqlen_q = max_seqlen_q
    a.max_seqlen_k = max_seqlen_k
    a.cu_seqlens_q = cu_seqlens_q.data_ptr() if cu_seqlens_q is not None else None
    a.cu_seqlens_k = cu_seqlens_k.data_ptr() if cu_seqlens_k is not None else None
    a.seqlens_q = seqlens_q.data_ptr() if seqlens_q is not None else None
    a.seqlens_k = seqlens_k.data_ptr() if seqlens_k is not None else None
    if layout.paged:
        a.block_table = block_table.data_ptr()
        a.block_table_stride = block_table.stride(0)
        a.page_size = k.shape[1]
        a.num_pages = k.shape[0]
    kv_ragged = layout.ragged_k and not layout.paged
    _fill_tensor(a.q, "q", q, layout.ragged_q)
    _fill_tensor(a.k, "k", k, kv_ragged)
    _fill_tensor(a.v, "v", v, kv_ragged)
    _fill_tensor(a.out, "out", out, layout.ragged_q)
    if lse is not None:
        _fill_tensor(a.lse, "lse", lse, layout.ragged_q)
    a.scale = float(scale)
    a.causal = 1 if causal else 0
    return a


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
    per_request_factor: Optional[torch.Tensor] = None,
    q_scale: Optional[torch.Tensor] = None,
    k_scale: Optional[torch.Tensor] = None,
    v_scale: Optional[torch.Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
):
    """Runs one call; returns (out, lse, stats, decisions or None, RunInfo)."""
    layout = check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table,
                          per_kv_head_factor, max_seqlen_q, max_seqlen_k, per_request_factor, q_scale, k_scale,
                          v_scale, out_dtype)
    device = q.device
    ragged_q, batch = layout.ragged_q, layout.batch
    num_q_heads, num_kv_heads = layout.num_q_heads, layout.num_kv_heads

    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table, max_seqlen_q, max_seqlen_k = _side_tensors(
        layout, q, k, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table, max_seqlen_q, max_seqlen_k)
    if per_request_factor is None:
        warn_if_dense(threshold_scale_factor, per_kv_head_factor, max_seqlen_k)

    out_shape, lse_shape, stats_shape = output_shapes(q, v, phase, num_kv_heads, return_stats)
    # Rows past an entry's length are never written by the engine: give them defined values.
    partial_rows = seqlens_q is not None or ragged_q
    out = (torch.zeros if partial_rows else torch.empty)(out_shape, dtype=output_dtype(q, out_dtype), device=device)
    lse = (torch.full(lse_shape, float("-inf"), dtype=torch.float32, device=device) if partial_rows
           else torch.empty(lse_shape, dtype=torch.float32, device=device))
    stats = torch.zeros(stats_shape, dtype=torch.int64, device=device)

    if out.numel() == 0 or k.numel() == 0:
        # nothing to attend (no query rows, or no keys): empty rows are O = 0, LSE = -inf (SPEC 5)
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse, stats, None, RunInfo("none", 0, 0, "ascending", 0, 0, 0)

    a = _call_args(layout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, block_table,
                   max_seqlen_q, max_seqlen_k, scale, causal)
    a.threshold.threshold_scale_factor = float(threshold_scale_factor)
    if per_kv_head_factor is not None:
        per_kv_head_factor = per_kv_head_factor.to(torch.float32).contiguous()
        a.threshold.per_kv_head_factor = per_kv_head_factor.data_ptr()
    q_scale, k_scale, v_scale, per_head_scales = scales_for_call(q_scale, k_scale, v_scale, num_kv_heads)
    a.scales.q = q_scale.data_ptr() if q_scale is not None else None
    a.scales.k = k_scale.data_ptr() if k_scale is not None else None
    a.scales.v = v_scale.data_ptr() if v_scale is not None else None
    a.scales.per_kv_head = 1 if per_head_scales else 0
    if per_request_factor is not None:
        # read by the engine when it runs (on a GPU: at each CUDA graph replay)
        per_request_factor = per_request_factor.to(torch.float32).contiguous()
        a.threshold.per_request_factor = per_request_factor.data_ptr()
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
        # is given; the CUDA prefill kernels pick their own tiles whatever the caller asked for (its
        # block sizes are the CPU engine's), so size for the smallest (64 x 64); CUDA decode takes
        # block_n 0 or its own. Decode groups are chunks of block_m (head, row) pairs of a KV head
        # (0: one group).
        cuda = device.type == "cuda"
        if phase == _lib.PHASE_DECODE:
            bn = block_n or (64 if cuda else 128)
            bm = block_m or (64 if cuda else 0)
            pairs = (num_q_heads // num_kv_heads) * max_seqlen_q
            groups = num_kv_heads * (-(-pairs // bm) if bm else 1)
        else:
            bm, bn = (64, 64) if cuda else (block_m or 128, block_n or 128)
            groups = num_q_heads * -(-max_seqlen_q // bm)
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


def backward(
    phase: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    dout: torch.Tensor,
    dlse: Optional[torch.Tensor],
    decisions: torch.Tensor,
    info: RunInfo,
    *,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None,
    seqlens_q: Optional[torch.Tensor] = None,
    seqlens_k: Optional[torch.Tensor] = None,
    max_seqlen_q: int = 0,
    max_seqlen_k: int = 0,
    scale: float = 0.0,
    causal: bool = True,
    num_threads: int = 0,
):
    """(dq, dk, dv) of a forward run() made with return_decisions=True (its out, decisions and
    RunInfo), through blasst_backward on the CPU engine: host tensors only."""
    layout = check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, None, None, max_seqlen_q,
                          max_seqlen_k)
    q, k, v, out, dout = (_last_dim_contiguous(t) for t in (q, k, v, out, dout))
    cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, _, max_seqlen_q, max_seqlen_k = _side_tensors(
        layout, q, k, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, None, max_seqlen_q, max_seqlen_k)
    dq, dk, dv = (torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    if out.numel() == 0 or k.numel() == 0 or info.block_n == 0:
        return dq, dk, dv  # nothing was attended
    a = _call_args(layout, q, k, v, out, None, cu_seqlens_q, cu_seqlens_k, seqlens_q, seqlens_k, None, max_seqlen_q,
                   max_seqlen_k, scale, causal)
    a.engine = _lib.ENGINE_CPU
    a.num_threads = num_threads if num_threads > 0 else torch.get_num_threads()
    g = _lib.new_backward_args()
    g.phase = phase
    g.geometry.block_m, g.geometry.block_n = info.block_m, info.block_n
    g.decisions, g.decisions_numel = decisions.data_ptr(), decisions.numel()
    _fill_tensor(g.dout, "dout", dout, layout.ragged_q)
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()
        _fill_tensor(g.dlse, "dlse", dlse, layout.ragged_q)
    _fill_tensor(g.dq, "dq", dq, layout.ragged_q)
    _fill_tensor(g.dk, "dk", dk, layout.ragged_k)  # not paged: the backward refuses pages
    _fill_tensor(g.dv, "dv", dv, layout.ragged_k)
    _lib.check(_lib.lib().blasst_backward(ctypes.byref(a), ctypes.byref(g)))
    return dq, dk, dv
