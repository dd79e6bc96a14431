"""Hugging Face transformers integration: attn_implementation="blasst".

    import blasst
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="blasst")  # uses the
        # checkpoint's sparse_attention_config, if any
    blasst.hf.enable(model, blasst.BlasstConfig(threshold_scale_factor={"prefill": 50.0, "decode": 5.0}))
    model.generate(...)
    print(blasst.hf.summary(model))

Importing this module registers "blasst" in transformers' AttentionInterface (the attention
function) and AttentionMaskInterface (so the causal/padding mask reaches it and no other mask
pattern is silently dropped). `import blasst` imports it as soon as transformers has loaded
those interfaces (blasst/_hf_autoregister.py), so the name works without importing blasst.hf.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Optional

import torch

from ..config import BlasstConfig
from . import attention as _attention
from .attention import LayerState, blasst_attention_forward
from .masking import BlasstMask, UnsupportedMaskError, blasst_mask

NAME = "blasst"

__all__ = ["register", "enable", "disable", "stats", "summary", "reset_stats", "attention_modules", "NAME",
           "BlasstMask", "UnsupportedMaskError", "blasst_attention_forward", "blasst_mask"]


def _register_interfaces() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, blasst_attention_forward)
    AttentionMaskInterface.register(NAME, blasst_mask)


def register(**overrides) -> None:
    """Registers attn_implementation "blasst" (done on import). Keyword overrides (BlasstConfig
    fields) replace the defaults for models that use "blasst" without enable(), whose thresholds
    otherwise come from their own config (sparse_attention_config)."""
    _register_interfaces()
    if overrides:
        known = {f.name for f in dataclasses.fields(BlasstConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:  # fail now rather than in the first forward pass
            raise TypeError(f"blasst.hf.register: unknown BlasstConfig fields {unknown}")
        _attention.DEFAULT_OVERRIDES.clear()
        _attention.DEFAULT_OVERRIDES.update(overrides)


def attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of the attention modules that dispatch through the AttentionInterface:
    those with a layer_idx and query projections, or whose class name ends in 'Attention'."""
    found = []
    for name, m in model.named_modules():
        cls = type(m).__name__
        has_proj = any(hasattr(m, p) for p in ("q_proj", "qkv_proj", "c_attn", "query_key_value", "q_a_proj"))
        if hasattr(m, "layer_idx") and (has_proj or cls.endswith("Attention")):
            found.append((name, m))
    return found


def _set_implementation(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = name


def enable(model: torch.nn.Module, config: Optional[BlasstConfig] = None, **overrides) -> BlasstConfig:
    """Switches a transformers model to BLASST attention.

    config: a BlasstConfig; None builds one from the model config's sparse_attention_config and
    the keyword overrides (BlasstConfig fields, e.g. target_sparsity=0.5, ignore=[...]).
    Per-layer `ignore` patterns are fnmatch patterns on module names (model.named_modules()).
    Returns the config in use.
    """
    _register_interfaces()
    if config is None:
        model_config = getattr(model, "config", None)
        config = BlasstConfig.from_pretrained_config(model_config if model_config is not None else {}, **overrides)
    elif overrides:
        config = config.with_overrides(**overrides)
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"blasst: found no attention modules in {type(model).__name__}")
    unknown = [p for p in config.ignore if not any(fnmatch.fnmatchcase(n, p) for n, _ in modules)]
    if unknown:
        import warnings

        warnings.warn(f"blasst: ignore patterns {unknown} match no attention module "
                      f"(names look like {modules[0][0]!r})", stacklevel=2)
    for name, m in modules:
        m.blasst_state = LayerState.build(name, type(m).__name__, config)
    _set_implementation(model, NAME)
    return config


def disable(model: torch.nn.Module, attn_implementation: str = "sdpa") -> None:
    """Restores another attention implementation and removes BLASST state from the modules."""
    for _, m in attention_modules(model):
        if hasattr(m, "blasst_state"):
            del m.blasst_state
    _set_implementation(model, attn_implementation)


def _states(model):
    for name, m in attention_modules(model):
        state = getattr(m, "blasst_state", None)
        if state is not None:
            yield name, state


def stats(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{layer name: {phase: int64 tensor [H, 2] of (visited, skipped)}}; H is query heads in
    prefill, KV heads in decode. Needs collect_stats=True in the config."""
    return {name: {p: t.detach().cpu() for p, t in s.stats.items()} for name, s in _states(model) if s.stats}


def reset_stats(model: torch.nn.Module) -> None:
    for _, s in _states(model):
        s.reset_stats()


def summary(model: torch.nn.Module) -> dict[str, dict]:
    """Per phase: visited, skipped and sparsity (skipped / visited) over all layers and heads,
    plus per-layer sparsity."""
    result: dict[str, dict] = {}
    for name, per_phase in stats(model).items():
        for phase, t in per_phase.items():
            entry = result.setdefault(phase, {"visited": 0, "skipped": 0, "layers": {}})
            visited, skipped = int(t[:, 0].sum()), int(t[:, 1].sum())
            entry["visited"] += visited
            entry["skipped"] += skipped
            entry["layers"][name] = skipped / visited if visited else 0.0
    for entry in result.values():
        entry["sparsity"] = entry["skipped"] / entry["visited"] if entry["visited"] else 0.0
    return result


_register_interfaces()
