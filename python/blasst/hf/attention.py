"""The "blasst" entry of transformers' AttentionInterface.

transformers calls attention(module, query [B, Hq, Lq, D], key [B, Hkv, Lk, D], value [B, Hkv,
Lk, Dv], attention_mask, scaling=..., dropout=..., **kwargs) after the KV cache update and
expects (out [B, Lq, Hq, Dv], attention weights or None). Here the tensors are only re-viewed as
[B, L, H, D] (no copy) and handed to the blasst::prefill / blasst::decode ops; padding becomes
per-entry sequence lengths. Per-module state (thresholds, name, statistics) lives in
module.blasst_state, set by blasst.hf.enable() or built lazily from the model config.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .. import _core
from ..api import resolve_phase
from ..config import BlasstConfig
from .masking import BlasstMask, UnsupportedMaskError

# Global defaults for modules that were not set up by enable(): user overrides applied on top of
# each model's own config (set with blasst.hf.register(**overrides)).
DEFAULT_OVERRIDES: dict = {}

# kwargs transformers may pass that change the attention math in ways BLASST does not implement
_REFUSED_KWARGS = {
    "softcap": "logit soft-capping",
    "s_aux": "attention sinks (learned per-head logits)",
    "sinks": "attention sinks (learned per-head logits)",
    "cu_seq_lens_q": "packed sequences (flash-attention style cu_seq_lens)",
    "cu_seq_lens_k": "packed sequences (flash-attention style cu_seq_lens)",
    "position_bias": "an additive position bias",
}


@dataclass
class LayerState:
    """What one attention module does under BLASST (built once per module)."""

    name: str
    config: BlasstConfig
    sparse: bool  # False: ignored or not targeted -> exact dense through the same engine
    factors: dict = field(default_factory=dict)  # phase -> threshold_scale_factor
    head_factors: dict = field(default_factory=dict)  # phase -> list[float] per KV head
    stats: dict = field(default_factory=dict)  # phase -> int64 tensor [H, 2]
    calls: dict = field(default_factory=dict)  # phase -> number of calls
    observer: Optional[Callable] = None  # calibration hook, see blasst.calibrate.collect
    _head_tensor: dict = field(default_factory=dict)  # (phase, device) -> float32 tensor [Hkv]

    @classmethod
    def build(cls, name: str, class_name: str, config: BlasstConfig) -> "LayerState":
        sparse = config.applies_to(name, class_name)
        state = cls(name=name, config=config, sparse=sparse)
        for phase in ("prefill", "decode"):
            state.factors[phase] = config.factor(phase) if sparse else 0.0
            heads = config.head_factors(phase, name) if sparse else None
            if heads is not None:
                state.head_factors[phase] = heads
        return state

    def per_head_tensor(self, phase: str, device: torch.device) -> Optional[torch.Tensor]:
        values = self.head_factors.get(phase)
        if values is None:
            return None
        key = (phase, str(device))
        t = self._head_tensor.get(key)
        if t is None:
            t = torch.tensor(values, dtype=torch.float32, device=device)
            self._head_tensor[key] = t
        return t

    def add_stats(self, phase: str, stats: torch.Tensor) -> None:
        if phase in self.stats and self.stats[phase].shape == stats.shape:
            self.stats[phase] += stats
        else:
            self.stats[phase] = stats.clone()
        self.calls[phase] = self.calls.get(phase, 0) + 1

    def reset_stats(self) -> None:
        self.stats.clear()
        self.calls.clear()


def _lazy_state(module) -> LayerState:
    """State for a module of a model loaded with attn_implementation="blasst" without enable():
    thresholds from the model's config (sparse_attention_config) plus DEFAULT_OVERRIDES."""
    cfg = getattr(module, "config", None)
    config = BlasstConfig.from_pretrained_config(cfg if cfg is not None else {}, **DEFAULT_OVERRIDES)
    layer_idx = getattr(module, "layer_idx", None)
    name = f"model.layers.{layer_idx}.self_attn" if layer_idx is not None else type(module).__name__
    state = LayerState.build(name, type(module).__name__, config)
    module.blasst_state = state
    return state


def _check_supported(module, kwargs, dropout: float) -> None:
    for key, what in _REFUSED_KWARGS.items():
        if kwargs.get(key) is not None:
            raise UnsupportedMaskError(f"blasst: {what} ('{key}') is not supported by BLASST attention")
    window = kwargs.get("sliding_window")
    if window is None:
        window = getattr(module, "sliding_window", None)
    if window is not None:
        raise UnsupportedMaskError(
            f"blasst: layer {getattr(module, 'layer_idx', '?')} uses a sliding window ({window}); BLASST runs full "
            "(causal) attention only"
        )
    if dropout and module.training:
        raise UnsupportedMaskError("blasst: attention dropout in training mode is not supported (forward only)")
    if kwargs.get("output_attentions"):
        raise UnsupportedMaskError("blasst: output_attentions=True needs the attention weights; use 'eager'")


# Padding analysis is a host sync; every layer of a forward pass gets the same mask tensor, so
# the result is kept for the last mask seen.
_mask_cache: dict = {"ref": None, "version": None, "value": None}


def _padding_ranges(key_valid: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of valid keys per batch entry; refuses masks with holes."""
    ref = _mask_cache["ref"]
    if ref is not None and ref() is key_valid and _mask_cache["version"] == key_valid._version:
        return _mask_cache["value"]
    valid = key_valid.to(torch.bool)
    counts = valid.sum(dim=1)
    has_any = counts > 0
    first = torch.where(has_any, valid.int().argmax(dim=1), torch.zeros_like(counts))
    ends = first + counts
    # contiguous iff the run [first, first+count) holds every valid position
    positions = torch.arange(valid.shape[1], device=valid.device).unsqueeze(0)
    inside = (positions >= first.unsqueeze(1)) & (positions < ends.unsqueeze(1))
    if not bool(torch.equal(inside, valid)):
        bad = (inside != valid).any(dim=1).nonzero().flatten().tolist()
        raise UnsupportedMaskError(
            f"blasst: the attention mask of batch entries {bad} has holes; only left or right padding "
            "(one contiguous run of valid tokens per row) is supported"
        )
    value = list(zip(first.tolist(), ends.tolist()))
    _mask_cache.update(ref=weakref.ref(key_valid), version=key_valid._version, value=value)
    return value


def _op_for(phase: str):
    return torch.ops.blasst.prefill if phase == "prefill" else torch.ops.blasst.decode


def make_runner(q, k, v, *, causal: bool, scale: float, key_valid, state: LayerState, phase: str):
    """A function run(factor, per_head, return_stats) -> (out [B, Lq, Hq, Dv], stats or None)
    for one attention call, with padding turned into sequence lengths or per-entry views."""
    cfg = state.config
    geometry = (cfg.block_m, cfg.block_n, _core.order_code(cfg.order), cfg.splits,
                _core.engine_code(cfg.engine), cfg.num_threads)
    op = _op_for(phase)
    batch, lq, lk = q.shape[0], q.shape[1], k.shape[1]

    def call(qq, kk, vv, seqlens_q, seqlens_k, factor, per_head, return_stats):
        out, _, stats = op(qq, kk, vv, None, None, seqlens_q, seqlens_k, None, 0, 0, scale, causal, factor, per_head,
                           *geometry, return_stats)
        return out, (stats if return_stats else None)

    if key_valid is None:
        return lambda factor, per_head, return_stats: call(q, k, v, None, None, factor, per_head, return_stats)

    ranges = _padding_ranges(key_valid)
    shift = lk - lq  # query row i sits at key position shift + i
    if all(start == 0 for start, _ in ranges):
        # right padding: entry b has keys [0, end) and query rows [0, end - shift)
        ends = torch.tensor([e for _, e in ranges], dtype=torch.int32, device=q.device)
        seqlens_q = (ends - shift).clamp(0, lq).to(torch.int32)
        return lambda factor, per_head, return_stats: call(q, k, v, seqlens_q, ends, factor, per_head, return_stats)

    def run_entries(factor, per_head, return_stats):
        # left (or mixed) padding: one call per entry on views of its valid rows and keys
        out = q.new_zeros(q.shape[:-1] + (v.shape[-1],))
        total = None
        for b, (start, end) in enumerate(ranges):
            r0 = max(start - shift, 0)
            r1 = min(max(end - shift, 0), lq)
            if r1 <= r0 or end <= start:
                continue
            o, stats = call(q[b:b + 1, r0:r1], k[b:b + 1, start:end], v[b:b + 1, start:end], None, None, factor,
                            per_head, return_stats)
            out[b:b + 1, r0:r1] = o
            if stats is not None:
                total = stats if total is None else total + stats
        if return_stats and total is None:
            heads = q.shape[2] if phase == "prefill" else k.shape[2]
            total = torch.zeros(heads, 2, dtype=torch.int64, device=q.device)
        return out, total

    return run_entries


def blasst_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs,
):
    state = getattr(module, "blasst_state", None) or _lazy_state(module)
    _check_supported(module, kwargs, dropout)

    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", True)
    key_valid = None
    if isinstance(attention_mask, BlasstMask):
        causal = attention_mask.causal
        key_valid = attention_mask.key_valid
    elif isinstance(attention_mask, torch.Tensor):
        if attention_mask.dim() != 2:
            raise UnsupportedMaskError(
                f"blasst: got a {attention_mask.dim()}D attention mask of shape {tuple(attention_mask.shape)}; BLASST "
                "takes causal attention with padding only (let transformers build the mask from a 2D attention_mask, "
                "with the model's attn_implementation set to 'blasst')"
            )
        key_valid = attention_mask.to(torch.bool)
    elif attention_mask is not None:
        raise UnsupportedMaskError(f"blasst: attention mask of type {type(attention_mask).__name__} is not supported")

    # [B, H, L, D] -> [B, L, H, D] views; the engine takes strides, so nothing is copied
    q = query.transpose(1, 2)
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)
    if key_valid is not None and key_valid.shape != (k.shape[0], k.shape[1]):
        raise UnsupportedMaskError(
            f"blasst: padding mask of shape {tuple(key_valid.shape)} does not match keys [batch {k.shape[0]}, "
            f"length {k.shape[1]}]"
        )
    phase = resolve_phase("auto", q.shape[1], k.shape[1], state.config.decode_max_query_len)
    scale = float(scaling) if scaling is not None else 0.0
    run = make_runner(q, k, v, causal=bool(causal), scale=scale, key_valid=key_valid, state=state, phase=phase)

    collect = state.config.collect_stats
    out, stats = run(state.factors[phase], state.per_head_tensor(phase, q.device), collect)
    if collect and stats is not None:
        state.add_stats(phase, stats)
    if state.observer is not None:
        state.observer(state, phase, run, q, k, key_valid)
    return out, None
