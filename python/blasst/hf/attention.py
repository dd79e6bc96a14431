"""The "blasst" entry of transformers' AttentionInterface.

transformers calls attention(module, query [B, Hq, Lq, D], key [B, Hkv, Lk, D], value [B, Hkv,
Lk, Dv], attention_mask, scaling=..., dropout=..., **kwargs) after the KV cache update and
expects (out [B, Lq, Hq, Dv], attention weights or None). Here the tensors are only re-viewed as
[B, L, H, D] (no copy) and handed to the blasst::prefill / blasst::decode ops; the mask (see
masking.py) becomes per-entry lengths, plus a block table of one-token pages over the same memory
when an entry's keys do not start at slot 0 (left padding). Per-module state (thresholds, name,
statistics) lives in module.blasst_state, set by blasst.hf.enable() or built lazily from the
model config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .. import _core, _lib, autograd
from ..api import resolve_phase
from ..config import BlasstConfig
from .masking import BlasstMask, UnsupportedMaskError, mask_from_valid

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


def _check_supported(module, kwargs, dropout: float, mask) -> None:
    for key, what in _REFUSED_KWARGS.items():
        if kwargs.get(key) is not None:
            raise UnsupportedMaskError(f"blasst: {what} ('{key}') is not supported by BLASST attention")
    window = kwargs.get("sliding_window")
    if window is None:
        window = getattr(module, "sliding_window", None)
    # the mask function checked that the window hides no key of this forward pass
    if window is not None and not (isinstance(mask, BlasstMask) and mask.sliding_window == window):
        raise UnsupportedMaskError(
            f"blasst: layer {getattr(module, 'layer_idx', '?')} uses a sliding window ({window}) and its mask was not "
            "built by the 'blasst' mask function, which checks that the window hides no key; BLASST runs full "
            "(causal) attention only"
        )
    if dropout and module.training:
        raise UnsupportedMaskError("blasst: attention dropout in training mode is not supported (forward only)")
    if kwargs.get("output_attentions"):
        raise UnsupportedMaskError("blasst: output_attentions=True needs the attention weights; use 'eager'")


def _as_mask(attention_mask, causal: bool, q_length: int, kv_length: int) -> Optional[BlasstMask]:
    """The BlasstMask of an attention call (None: every key, all rows)."""
    if attention_mask is None or isinstance(attention_mask, BlasstMask):
        return attention_mask
    if isinstance(attention_mask, torch.Tensor):
        if attention_mask.dim() != 2:
            raise UnsupportedMaskError(
                f"blasst: got a {attention_mask.dim()}D attention mask of shape {tuple(attention_mask.shape)}; BLASST "
                "takes causal attention with padding only (let transformers build the mask from a 2D attention_mask, "
                "with the model's attn_implementation set to 'blasst')"
            )
        if attention_mask.shape[1] != kv_length:
            raise UnsupportedMaskError(
                f"blasst: 2D padding mask of shape {tuple(attention_mask.shape)} does not match the {kv_length} keys"
            )
        # a padding mask handed straight to the layer: the queries are the last q_length keys
        return mask_from_valid(attention_mask, past=kv_length - q_length, q_length=q_length, causal=causal)
    raise UnsupportedMaskError(f"blasst: attention mask of type {type(attention_mask).__name__} is not supported")


def _op_for(phase: str):
    return torch.ops.blasst.prefill if phase == "prefill" else torch.ops.blasst.decode


def _token_pages(k: torch.Tensor, v: torch.Tensor, key_slots: torch.Tensor):
    """k, v [B, Lk, H, D] seen as a paged KV cache of one-token pages, views of the same memory,
    and the block table [B, Lk] that lists each entry's keys in key_slots order: a batch entry's
    keys may then start anywhere (left padding) and have gaps, and nothing is copied.

    Token t of entry b lives at b * stride(0) + t * stride(1); with the page stride
    g = gcd(stride(0), stride(1)) that is page (b * stride(0) + t * stride(1)) / g.
    """
    batch, lk = k.shape[0], k.shape[1]

    def unit(t):
        sb = t.stride(0) if batch > 1 else 0
        st = t.stride(1) if lk > 1 else 0
        g = math.gcd(sb, st) or 1
        return g, sb // g, st // g

    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    (gk, bk, tk), (gv, bv, tv) = unit(k), unit(v)
    if (bk, tk) != (bv, tv):  # k and v laid out differently: one page index cannot serve both
        k, v = k.contiguous(), v.contiguous()
        (gk, bk, tk), (gv, bv, tv) = unit(k), unit(v)
    num_pages = (batch - 1) * bk + (lk - 1) * tk + 1
    if num_pages >= 2**31:
        raise UnsupportedMaskError(f"blasst: {num_pages} one-token pages exceed the int32 block table")
    k_pages = k.as_strided((num_pages, 1) + tuple(k.shape[2:]), (gk, gk) + tuple(k.stride()[2:]))
    v_pages = v.as_strided((num_pages, 1) + tuple(v.shape[2:]), (gv, gv) + tuple(v.stride()[2:]))
    entries = torch.arange(batch, device=key_slots.device).unsqueeze(1)
    block_table = (entries * bk + key_slots * tk).to(torch.int32)
    return k_pages, v_pages, block_table


def make_runner(q, k, v, *, causal: bool, scale: float, mask: Optional[BlasstMask], state: LayerState, phase: str):
    """A function run(factor, per_head, return_stats) -> (out [B, Lq, Hq, Dv], stats or None)
    for one attention call, with the mask turned into per-entry lengths (and, for keys that do
    not start at slot 0, a block table of one-token pages)."""
    cfg = state.config
    op = _op_for(phase)
    seqlens_q = seqlens_k = block_table = None
    if mask is not None:
        seqlens_q, seqlens_k = mask.seqlens_q, mask.seqlens_k
        if mask.key_slots is not None:
            if autograd.requires_grad(q, k, v):
                # training: the backward takes no pages, so each entry's keys are gathered to the
                # front (differentiable: their gradients scatter back to the slots)
                idx = mask.key_slots[:, :, None, None]
                k = torch.gather(k, 1, idx.expand(-1, -1, k.shape[2], k.shape[3]))
                v = torch.gather(v, 1, idx.expand(-1, -1, v.shape[2], v.shape[3]))
            else:
                k, v, block_table = _token_pages(k, v, mask.key_slots)

    call = dict(seqlens_q=seqlens_q, seqlens_k=seqlens_k, block_table=block_table, scale=scale, causal=causal,
                block_m=cfg.block_m, block_n=cfg.block_n, order=_core.order_code(cfg.order), splits=cfg.splits,
                engine=_core.engine_code(cfg.engine), num_threads=cfg.num_threads)

    def run(factor, per_head, return_stats):
        options = dict(call, threshold_scale_factor=factor, per_kv_head_factor=per_head, return_stats=return_stats)
        if autograd.requires_grad(q, k, v):
            # training: gradients over the kept tiles (blasst.autograd)
            phase_code = _lib.PHASE_PREFILL if phase == "prefill" else _lib.PHASE_DECODE
            out, _, stats = autograd.attention_with_grad(phase_code, q, k, v, options)
        else:
            out, _, stats = op(q, k, v, **options)
        return out, (stats if return_stats else None)

    return run


def _autocast_operands(q, k, v):
    """Under autocast, attention runs in the autocast dtype, as torch's SDPA does there: Llama's rotary
    embedding hands over float32 q and k (its cos/sin follow the float32 residual stream) beside the
    bf16 v of an autocast projection, and the engines take one dtype for the three. FP8 operands (a
    quantized KV cache) are left as they are."""
    device_type = q.device.type
    if not torch.is_autocast_enabled(device_type):
        return q, k, v
    dtype = torch.get_autocast_dtype(device_type)
    wide = (torch.float32, torch.float16, torch.bfloat16)
    return tuple(t.to(dtype) if t.dtype in wide else t for t in (q, k, v))


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
    _check_supported(module, kwargs, dropout, attention_mask)

    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", True)
    # [B, H, L, D] -> [B, L, H, D] views; the engine takes strides, so nothing is copied
    q = query.transpose(1, 2)
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)
    q, k, v = _autocast_operands(q, k, v)
    lq, lk = q.shape[1], k.shape[1]
    mask = _as_mask(attention_mask, bool(causal), lq, lk)
    if mask is not None:
        causal = mask.causal
        if mask.kv_length != lk:
            raise UnsupportedMaskError(
                f"blasst: the attention mask covers {mask.kv_length} keys but the layer got {lk}"
            )
        if mask.seqlens_k is not None and mask.seqlens_k.shape[0] != k.shape[0]:
            raise UnsupportedMaskError(
                f"blasst: the attention mask has batch {mask.seqlens_k.shape[0]} but the keys have batch {k.shape[0]}"
            )
    # Decode: a few query rows that follow cached keys. A static cache hands over all its slots, so
    # the mask says whether keys precede the queries; without that (no mask, or a compiled static
    # cache, whose position is a tensor) the key count decides. resolve_phase takes lengths: any
    # key before the queries makes Lk > Lq.
    after_cache = mask.after_cache if mask is not None and mask.after_cache is not None else lk > lq
    phase = resolve_phase("auto", lq, lq + int(after_cache), state.config.decode_max_query_len)
    scale = float(scaling) if scaling is not None else 0.0
    run = make_runner(q, k, v, causal=bool(causal), scale=scale, mask=mask, state=state, phase=phase)

    collect = state.config.collect_stats
    out, stats = run(state.factors[phase], state.per_head_tensor(phase, q.device), collect)
    if collect and stats is not None:
        state.add_stats(phase, stats)
    if state.observer is not None:
        state.observer(state, phase, run, q, k, mask)
    return out, None
