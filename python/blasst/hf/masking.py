"""The "blasst" entry of transformers' AttentionMaskInterface.

transformers builds one mask per forward pass through this function and hands the result to
every attention layer. BLASST kernels take causality as a flag and padding as sequence lengths,
so the result is None for a plain causal mask without padding, or a BlasstMask that carries
causality and a 2D key-validity mask [B, kv_length]. Any other mask pattern (sliding windows,
chunked attention, packed sequences, or/and overlays such as bidirectional image tokens) cannot
be honoured and is refused here, so it is never silently replaced by plain causal attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

try:
    from transformers import masking_utils as _mu
except ImportError as e:  # pragma: no cover - the hf subpackage needs transformers
    raise ImportError("blasst.hf needs the transformers package") from e


class UnsupportedMaskError(ValueError):
    """An attention pattern BLASST cannot run exactly."""


@dataclass
class BlasstMask:
    """causal: bottom-right aligned causal attention. key_valid: [B, kv_length] bool (None = all
    keys valid). Padding must be contiguous per row (left or right padding)."""

    causal: bool
    key_valid: Optional[torch.Tensor] = None


def _describe(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)


def blasst_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset=0,
    kv_offset: int = 0,
    mask_function=_mu.causal_mask_function,
    attention_mask: Optional[torch.Tensor] = None,
    **kwargs,
):
    if mask_function is _mu.causal_mask_function:
        causal = True
    elif mask_function is _mu.bidirectional_mask_function:
        causal = False
    else:
        raise UnsupportedMaskError(
            "blasst: this model asks for an attention mask other than plain causal or bidirectional attention "
            f"with padding (mask function {_describe(mask_function)}: sliding window, chunked attention, packed "
            "sequences or a custom overlay). BLASST cannot honour it; use another attn_implementation for this "
            "model, or unpack the sequences."
        )
    device = kwargs.get("device", None)
    key_valid = None
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise UnsupportedMaskError(
                f"blasst: attention_mask of shape {tuple(attention_mask.shape)}; only a 2D padding mask "
                "[batch, kv_length] is supported"
            )
        key_valid = attention_mask[:, kv_offset:].to(torch.bool)[:, :kv_length]
        if key_valid.shape[1] < kv_length:  # a static cache's unfilled slots
            pad = key_valid.new_zeros(key_valid.shape[0], kv_length - key_valid.shape[1])
            key_valid = torch.cat([key_valid, pad], dim=1)
        device = key_valid.device
    # With a static cache, keys past the last query position are unfilled slots: causality hides
    # them, but the bottom-right alignment of the kernels needs the real key length.
    static_tail = causal and not (isinstance(q_offset, int) and isinstance(kv_length, int)
                                  and q_offset + q_length - kv_offset == kv_length)
    if static_tail:
        end = q_offset + q_length - kv_offset
        positions = torch.arange(kv_length, device=device)
        in_range = (positions < end).unsqueeze(0).expand(batch_size, kv_length)
        key_valid = in_range if key_valid is None else (key_valid & in_range)
    if key_valid is not None and not static_tail and bool(key_valid.all()):
        key_valid = None
    if causal and key_valid is None:
        return None
    return BlasstMask(causal=causal, key_valid=key_valid)
