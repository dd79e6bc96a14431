"""Context lengths in calibration: the model's own limit, and where a calibrated factor can skip.

SPEC section 4: lambda = threshold_scale_factor / Lk, and lambda >= 1 turns skipping off for that
entry. A calibrated factor a * exp(b * s) grows with the target s, so a high target can give a factor
above the prompt lengths in use (a factor of 2494 leaves every prompt of up to 2494 tokens dense).
Skipping is possible exactly for Lk > factor, i.e. from floor(factor) + 1 tokens on; calibration
reports that range for every target so that nobody has to find it out from a sparsity of zero.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

import numpy as np

# Targets every calibration reports (beside the user's own): enough to read the curve off.
REPORTED_TARGETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# Config fields that hold the number of positions a model was trained for, most common first
# (max_position_embeddings: Llama and most transformers models; n_positions / n_ctx: GPT-2 style;
# seq_length: ChatGLM, Qwen-1; max_seq_len: MPT). A model with none (ALiBi) is not limited here.
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "seq_length", "max_seq_len", "max_sequence_length",
                   "n_ctx")


def model_context_length(config: Any) -> Optional[tuple[int, str]]:
    """(positions, field name) of a transformers config or config dict; None when it names none.
    Multimodal configs keep the language model's in text_config."""
    if config is None:
        return None
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    for name in _CONTEXT_FIELDS:
        value = get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, name
    text = get("text_config")
    if text is not None and text is not config:
        found = model_context_length(text)
        if found is not None:
            return found[0], f"text_config.{found[1]}"
    return None


def check_lengths(lengths: Iterable[int], context: Optional[tuple[int, str]], decode_tokens: int = 0,
                  what: str = "calibration lengths") -> None:
    """Raises ValueError when a sample (plus its decode steps) would run past the model's positions:
    such a run measures a model outside what it was trained for, and at long lengths takes hours."""
    if context is None:
        return
    limit, field = context
    lengths = sorted(set(int(x) for x in lengths))
    too_long = [x for x in lengths if x + decode_tokens > limit]
    if too_long:
        extra = f" plus {decode_tokens} decode tokens" if decode_tokens else ""
        raise ValueError(
            f"{what} {', '.join(map(str, too_long))}{extra} exceed the model's context of {limit} tokens "
            f"({field} in its config); give lengths of at most {limit - decode_tokens}")


def min_sparse_context(factor: float) -> Optional[int]:
    """The shortest KV length at which lambda = factor / Lk < 1 (skipping possible); None when no
    length is: a factor of 0 (exact dense attention) or one past float32's range."""
    # the C ABI takes the factor as a float32, and that is the value the guard compares
    f32 = float(np.float32(factor)) if math.isfinite(factor) and abs(factor) < 3.4e38 else math.inf
    if not (f32 > 0 and math.isfinite(f32)):
        return None
    return math.floor(f32) + 1


def max_target_at(fit, context_length: int) -> Optional[float]:
    """The target sparsity whose factor equals context_length: targets at or above it run that length
    dense. None when the formula cannot say (b <= 0)."""
    if fit.b <= 0 or fit.a <= 0:
        return None
    return math.log(context_length / fit.a) / fit.b


def sparse_context(fit, targets: Sequence[float], max_context: Optional[int],
                   lengths: Sequence[int] = (), per_head_fits: Sequence = ()) -> dict:
    """The report's view of one phase: for each target, its factor and the context range where it
    skips; for each calibration length (and the model's context), the target above which that
    length runs dense."""
    rows = []
    for t in sorted(set(float(x) for x in targets)):
        factor = fit.factor(t)
        lo = min_sparse_context(factor)
        # min_context_length None: no length skips (the factor is 0 or past float32's range)
        row = {"target_sparsity": t, "threshold_scale_factor": factor, "min_context_length": lo,
               "max_context_length": max_context,
               "skips_within_model_context": lo is not None and (max_context is None or lo <= max_context)}
        heads = [min_sparse_context(max(0.0, f.factor(t))) for f in per_head_fits if f is not None]
        heads = [h for h in heads if h is not None]
        if heads:
            row["per_head_min_context_length"] = [min(heads), max(heads)]
        rows.append(row)
    by_length = []
    for n in sorted(set(int(x) for x in lengths) | ({max_context} if max_context else set())):
        by_length.append({"context_length": n, "max_target_sparsity": max_target_at(fit, n)})
    return {"rule": "lambda = threshold_scale_factor / context_length; skipping needs lambda < 1, "
                    "i.e. context_length >= min_context_length",
            "targets": rows, "lengths": by_length}


def dense_range_warnings(phase: str, fit, target: Optional[float], lengths: Sequence[int],
                         context: Optional[tuple[int, str]]) -> list[str]:
    """Messages for a target whose factor leaves calibration lengths, or the whole model context,
    in the lambda >= 1 range (no skipping)."""
    if target is None or target == 0:
        return []
    factor = fit.factor(target)
    if not factor > 0:
        return []
    lo = min_sparse_context(factor)
    if lo is None:
        return [f"{phase}: target sparsity {target:g} gives threshold_scale_factor {factor:.6g}, beyond any context "
                "length: lambda = factor / context_length >= 1 everywhere and this target never skips. Choose a "
                "lower target."]
    head = (f"{phase}: target sparsity {target:g} gives threshold_scale_factor {factor:.6g}, so lambda = factor / "
            f"context_length >= 1 and skipping is off (attention runs dense) for every context of up to {lo - 1} "
            "tokens")
    if context is not None and lo > context[0]:
        return [f"{head}: that is every context the model supports ({context[1]} {context[0]}); this target "
                "never skips. Choose a lower target."]
    dense = sorted(n for n in set(lengths) if n < lo)
    if dense:
        return [f"{head}; the calibration lengths {', '.join(map(str, dense))} lie in that range and get "
                f"sparsity 0 there, not {target:g} (the fit at this target rests on longer samples only)."]
    return []


def config_extension(formulas: dict, targets: dict, context: Optional[tuple[int, str]]) -> Optional[dict]:
    """The SPARSE_CONTEXT_KEY entry of a written config.json: for each phase that has both a formula
    and a default target, where that default skips. None when no phase has both."""
    out = {}
    for phase, formula in formulas.items():
        target = targets.get(phase)
        if target is None:
            continue
        factor = max(0.0, formula.factor(target))
        out[phase] = {"target_sparsity": target, "threshold_scale_factor": factor,
                      "min_context_length": min_sparse_context(factor),
                      "max_context_length": context[0] if context else None}
    return out or None
