"""The "blasst" entry of transformers' AttentionMaskInterface.

transformers builds one mask per forward pass through this function and hands the result to
every attention layer. BLASST kernels take causality as a flag and the keys of each batch entry
as a length (or as a list of key slots), so the result is None for plain causal attention over
every key handed to the layers, or a BlasstMask. Key slots that are padding or not yet filled (a
static cache hands the layers its whole preallocated length) are left out of the lengths, so the
bottom-right causal alignment of the kernels uses the real number of keys.

Any other mask pattern (chunked attention, packed sequences, or/and overlays such as
bidirectional image tokens, a sliding window that would hide keys) cannot be honoured and is
refused here, so it is never silently replaced by plain causal attention.

Nothing here reads tensor values on the host while torch.compile traces or a CUDA graph
captures: the lengths stay tensors, and the one check that needs values (padding inside the
current query tokens) becomes an assertion in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Union

import torch

try:
    from transformers import masking_utils as _mu
except ImportError as e:  # pragma: no cover - the hf subpackage needs transformers
    raise ImportError("blasst.hf needs the transformers package") from e


class UnsupportedMaskError(ValueError):
    """An attention pattern BLASST cannot run exactly."""


@dataclass
class BlasstMask:
    """What the attention layers of one forward pass need besides q, k and v.

    causal: bottom-right aligned causal attention over each entry's keys.
    kv_length: key slots the layers receive (a static cache's whole length).
    seqlens_k: int32 [B], keys each entry attends (None: all kv_length).
    seqlens_q: int32 [B], query rows computed per entry; later rows are padding and come out zero
        (None: all rows).
    key_slots: int64 [B, kv_length], per entry the slots of its keys in order, in its first
        seqlens_k[b] columns (None: the keys are slots 0 .. seqlens_k[b] - 1). Needed when keys do
        not start at slot 0 (left padding) or have gaps (padding of earlier turns).
    after_cache: whether cached keys precede the query rows (the decode phase), when known on the
        host (None while compiling a static cache, whose position is a tensor). A bool rather than
        the position, so that a compiled decode step does not specialise on it.
    sliding_window: the window of the layer this mask was checked for (it hides no key).
    """

    causal: bool
    kv_length: int
    seqlens_k: Optional[torch.Tensor] = None
    seqlens_q: Optional[torch.Tensor] = None
    key_slots: Optional[torch.Tensor] = None
    after_cache: Optional[bool] = None
    sliding_window: Optional[int] = None

    # generate() builds the mask of a compilable cache (StaticCache) ahead of the forward pass and
    # passes it as attention_mask; transformers then reads its `ndim` and hands anything that is
    # not a 2D padding mask back to this mask function, which returns it unchanged.
    ndim: ClassVar[int] = 4


# transformers' sliding_window_causal_mask_function(W) is and_masks(sliding_window_overlay(W),
# causal_mask_function); recognised by the code objects of those closures.
_AND_MASKS_CODE = _mu.and_masks(_mu.causal_mask_function).__code__
_SLIDING_OVERLAY_CODE = _mu.sliding_window_overlay(1).__code__


def _sliding_window_of(mask_function) -> Optional[int]:
    if getattr(mask_function, "__code__", None) is not _AND_MASKS_CODE:
        return None
    parts = mask_function.__closure__[0].cell_contents
    if len(parts) != 2 or parts[1] is not _mu.causal_mask_function:
        return None
    if getattr(parts[0], "__code__", None) is not _SLIDING_OVERLAY_CODE:
        return None
    return parts[0].__closure__[0].cell_contents


def _describe(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)


def host_reads_allowed(device) -> bool:
    """Whether tensor values may be read on the host now: not while torch.compile traces (a
    graph break, or an error under fullgraph) nor while a CUDA graph captures."""
    if torch.compiler.is_compiling():
        return False
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return True


def _check_window(window: int, q_offset, q_length: int, kv_offset: int) -> None:
    """A sliding window is exact as plain causal attention when it hides none of the keys handed
    to the layer from the last query row: kv_offset > last query position - window."""
    if isinstance(q_offset, torch.Tensor):
        if not host_reads_allowed(q_offset.device):
            raise UnsupportedMaskError(
                f"blasst: a sliding-window layer (window {window}) with a query position held as a tensor "
                "cannot be checked while compiling; the window must be checked to hide no key"
            )
        q_offset = int(q_offset)
    last = q_offset + q_length - 1
    if kv_offset <= last - window:
        raise UnsupportedMaskError(
            f"blasst: this layer uses a sliding window of {window} tokens and its query positions reach {last}, "
            f"so the window hides keys from position {kv_offset} on; BLASST runs full (causal) attention only. "
            f"It is exact while the window covers every key: sequences of at most {window} tokens, then one-token "
            "decode steps with a sliding-window cache (DynamicCache or StaticCache built from the model config). "
            "Use another attn_implementation for longer prompts."
        )


def _query_rows_valid(valid: torch.Tensor, past, q_length: int) -> torch.Tensor:
    """[B, q_length] validity of the current query tokens (slots past .. past + q_length - 1)."""
    if isinstance(past, int):
        return valid[:, past:past + q_length]
    rows = torch.arange(q_length, device=valid.device) + past
    index = rows.clamp(0, valid.shape[1] - 1).unsqueeze(0).expand(valid.shape[0], -1)
    return valid.gather(1, index)


def mask_from_valid(valid: torch.Tensor, *, past, q_length: int, causal: bool,
                    sliding_window: Optional[int] = None) -> Optional[BlasstMask]:
    """The mask for key validity valid [B, kv_length] (False: padding or an unfilled slot), with
    the query rows at slots past .. past + q_length - 1.

    Padding may be anywhere among earlier keys; among the current query tokens, the valid ones
    must be consecutive: the kernel's bottom-right alignment then gives every valid row exactly
    the valid keys up to its own slot.
    """
    valid = valid.to(torch.bool)
    batch, kv_length = valid.shape
    device = valid.device
    slots = torch.arange(kv_length, device=device)
    seqlens_k = valid.sum(dim=1, dtype=torch.int32)
    seqlens_q = None
    rows_ok = None
    if causal:
        q_valid = _query_rows_valid(valid, past, q_length)
        rows = torch.arange(q_length, device=device)
        # rows after the last valid query token are padding: they are not computed
        seqlens_q = (q_valid * (rows + 1)).amax(dim=1).to(torch.int32)
        first = q_valid.to(torch.int32).argmax(dim=1, keepdim=True)
        count = q_valid.sum(dim=1, keepdim=True)
        rows_ok = (((rows >= first) & (rows < first + count)) == q_valid).all(dim=1)
    keys_are_prefix = (valid == (slots < seqlens_k.unsqueeze(1))).all(dim=1)

    if host_reads_allowed(device):
        # one read of three flags; transformers builds the mask once per forward pass
        flags = torch.stack([
            rows_ok.all() if rows_ok is not None else torch.tensor(True, device=device),
            keys_are_prefix.all(),
            valid.all(),
        ]).tolist()
        if not flags[0]:
            bad = (~rows_ok).nonzero().flatten().tolist()
            raise UnsupportedMaskError(
                f"blasst: the attention mask of batch entries {bad} has holes among the current query tokens (padding "
                "between valid ones); only left or right padding of them is supported (one run of valid tokens per "
                "row; padding between earlier turns is fine)"
            )
        if flags[2] and isinstance(past, int) and past + q_length == kv_length and sliding_window is None:
            return None if causal else BlasstMask(causal=False, kv_length=kv_length)
        key_slots = None if flags[1] else _key_slots(valid)
    else:
        if rows_ok is not None:
            torch._assert_async(
                rows_ok.all(),
                "blasst: the attention mask has holes among the current query tokens (padding between valid ones); "
                "only left or right padding of them is supported",
            )
        key_slots = _key_slots(valid)
    return BlasstMask(causal=causal, kv_length=kv_length, seqlens_k=seqlens_k, seqlens_q=seqlens_q,
                      key_slots=key_slots, after_cache=_after_cache(past),
                      sliding_window=sliding_window)


def _after_cache(past) -> Optional[bool]:
    return past > 0 if isinstance(past, int) else None


def _key_slots(valid: torch.Tensor) -> torch.Tensor:
    # a stable sort puts the valid slots first, in order
    return torch.argsort((~valid).to(torch.int8), dim=1, stable=True)


def _filled_keys(past, q_length: int, kv_length: int, batch: int, device) -> Optional[torch.Tensor]:
    """[B] int32 number of filled key slots (past + q_length), or None when it is every slot."""
    end = past + q_length
    if isinstance(end, int):
        if end == kv_length:
            return None
        return torch.full((batch,), end, dtype=torch.int32, device=device)
    return end.to(device=device, dtype=torch.int32).reshape(1).expand(batch)


def blasst_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Union[int, torch.Tensor] = 0,
    kv_offset: int = 0,
    mask_function=_mu.causal_mask_function,
    attention_mask=None,
    local_size: Optional[int] = None,
    **kwargs,
):
    if isinstance(attention_mask, BlasstMask):
        return attention_mask  # built ahead by generate(), see BlasstMask.ndim
    window = None
    if mask_function is _mu.causal_mask_function:
        causal = True
    elif mask_function is _mu.bidirectional_mask_function:
        causal = False
    elif (window := _sliding_window_of(mask_function)) is not None:
        causal = True
    else:
        raise UnsupportedMaskError(
            "blasst: this model asks for an attention mask other than plain causal or bidirectional attention "
            f"with padding (mask function {_describe(mask_function)}: chunked attention, packed sequences or a "
            "custom overlay). BLASST cannot honour it; use another attn_implementation for this model, or unpack "
            "the sequences."
        )
    device = attention_mask.device if isinstance(attention_mask, torch.Tensor) else kwargs.get("device", None)
    if window is not None:
        _check_window(window, q_offset, q_length, kv_offset)
    past = q_offset - kv_offset  # key slots before the first query row
    if isinstance(past, torch.Tensor) and host_reads_allowed(past.device):
        past = int(past)  # a static cache's position; one read per forward pass

    if attention_mask is None:
        filled = _filled_keys(past, q_length, kv_length, batch_size, device)
        if filled is None and window is None:
            return None if causal else BlasstMask(causal=False, kv_length=kv_length)
        return BlasstMask(causal=causal, kv_length=kv_length, seqlens_k=filled, after_cache=_after_cache(past),
                          sliding_window=window)

    if attention_mask.dim() != 2:
        raise UnsupportedMaskError(
            f"blasst: attention_mask of shape {tuple(attention_mask.shape)}; only a 2D padding mask "
            "[batch, kv_length] is supported"
        )
    valid = attention_mask[:, kv_offset:kv_offset + kv_length].to(torch.bool)
    if valid.shape[1] < kv_length:  # a static cache's unfilled slots
        valid = torch.nn.functional.pad(valid, (0, kv_length - valid.shape[1]), value=False)
    # slots past the last query row are unfilled even when the 2D mask is longer
    valid = valid & (torch.arange(kv_length, device=valid.device) < past + q_length)
    return mask_from_valid(valid, past=past, q_length=q_length, causal=causal, sliding_window=window)
