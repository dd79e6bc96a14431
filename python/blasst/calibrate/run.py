"""calibrate_model: measure sparsity per trial threshold on a model and fit a * exp(b * s) per phase
(and optionally per layer and KV head)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .. import __version__, hf as _hf
from ..config import BlasstConfig
from ..schema import Formula, write_sparse_attention_config, DEFAULT_FORMULA
from .collect import DEFAULT_TRIALS, TrialCollector, run_samples
from .context import REPORTED_TARGETS, check_lengths, dense_range_warnings, model_context_length, sparse_context
from .fit import FitResult, extrapolation_warning, fit_exponential


@dataclass
class CalibrationResult:
    trials: list[float]
    records: list  # SampleRecord
    fits: dict[str, FitResult] = field(default_factory=dict)  # phase -> fit
    per_head_fits: dict[str, dict[str, list[Optional[FitResult]]]] = field(default_factory=dict)
    geometry: dict[str, dict] = field(default_factory=dict)  # phase -> engine geometry used
    warnings: list[str] = field(default_factory=list)
    target_classes: list[str] = field(default_factory=list)
    # phase -> where each target can skip (lambda < 1) and, per length, the target above which it
    # runs dense (context.sparse_context)
    sparse_context: dict[str, dict] = field(default_factory=dict)
    model_context: Optional[tuple[int, str]] = None  # (positions, config field) of the model

    def points(self, phase: str) -> list[dict]:
        """Every (sample, trial) point of a phase: length bin, KV length, lambda, factor, sparsity."""
        pts = []
        for rec in self.records:
            if rec.phase != phase:
                continue
            sp = rec.sparsity().tolist()
            for lam, s in zip(self.trials, sp):
                pts.append({"length_bin": rec.length_bin, "seqlen_k": rec.seqlen_k, "lambda": lam,
                            "factor": lam * rec.seqlen_k, "sparsity": s})
        return pts

    def sparse_attention_config(self, existing: Optional[dict] = None, *, target_sparsity: Optional[dict] = None,
                                ignore: Optional[list[str]] = None) -> dict:
        formulas = {p: Formula(DEFAULT_FORMULA, {"a": f.a, "b": f.b}) for p, f in self.fits.items()}
        return write_sparse_attention_config(
            existing, formulas=formulas, target_sparsity=target_sparsity, ignore=ignore,
            targets=self.target_classes or None, producer={"name": "blasst", "version": __version__},
        )

    def per_head_json(self) -> Optional[dict]:
        """The blasst_per_kv_head_threshold extension (None without per-head fits). Heads whose own
        fit failed take the phase's fit."""
        if not self.per_head_fits:
            return None
        out: dict = {"formula": DEFAULT_FORMULA}
        for phase, layers in self.per_head_fits.items():
            fallback = self.fits.get(phase)
            out[phase] = {}
            for layer, fits in layers.items():
                fs = [f or fallback for f in fits]
                if any(f is None for f in fs):
                    continue
                out[phase][layer] = {"a": [f.a for f in fs], "b": [f.b for f in fs]}
        return out

    def report(self) -> dict:
        return {
            "trials": self.trials,
            "fits": {p: f.to_dict() for p, f in self.fits.items()},
            "geometry": self.geometry,
            "warnings": self.warnings,
            "model_context_length": self.model_context[0] if self.model_context else None,
            "sparse_context": self.sparse_context,
            "points": {p: self.points(p) for p in ("prefill", "decode")},
            "per_head_fits": {p: {layer: [f.to_dict() if f else None for f in fs] for layer, fs in layers.items()}
                              for p, layers in self.per_head_fits.items()},
        }


def _fit_points(sparsity: np.ndarray, factors: np.ndarray, **kw) -> Optional[FitResult]:
    try:
        return fit_exponential(sparsity, factors, **kw)
    except ValueError:
        return None


def calibrate_model(
    model: torch.nn.Module,
    samples: Sequence[tuple[torch.Tensor, int]],
    *,
    trials: Sequence[float] = DEFAULT_TRIALS,
    phases: Sequence[str] = ("prefill", "decode"),
    decode_tokens: int = 8,
    fit_space: str = "linear",
    min_sparsity: float = 0.10,
    max_sparsity: float = 0.90,
    per_head: bool = False,
    target_sparsity: Optional[dict] = None,
    ignore: Sequence[str] = (),
    order: str = "ascending",
    block_m: int = 0,
    block_n: int = 0,
    splits: int = 0,
    engine: str = "auto",
    progress: bool = True,
) -> CalibrationResult:
    """samples: [(token ids [1, L], length bin)]. Returns the fits; nothing is written."""
    phases = tuple(phases)
    for p in phases:
        if p not in ("prefill", "decode"):
            raise ValueError(f"phase {p!r}: expected 'prefill' or 'decode'")
    if "decode" in phases and decode_tokens < 1:
        raise ValueError("decode calibration needs decode_tokens >= 1")
    # refused before the first sample: a run past the model's positions is meaningless and long
    context = model_context_length(getattr(model, "config", None))
    lengths = sorted({int(ids.shape[-1]) for ids, _ in samples})
    check_lengths(lengths, context, decode_tokens if "decode" in phases else 0, what="sample lengths")
    config = BlasstConfig(threshold_scale_factor=0.0, ignore=list(ignore), order=order, block_m=block_m,
                          block_n=block_n, splits=splits, engine=engine)
    previous = getattr(model.config, "_attn_implementation", None)
    _hf.enable(model, config)
    collector = TrialCollector(trials, phases)
    collector.attach(model)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(samples), desc="blasst calibrate", unit="sample")
        except ImportError:
            bar = None
    was_training = model.training
    model.eval()
    try:
        run_samples(model, samples, collector, decode_tokens=decode_tokens if "decode" in phases else 0, progress=bar)
    finally:
        if bar is not None:
            bar.close()
        collector.detach(model)
        model.train(was_training)
        if previous and previous != "blasst":
            _hf.disable(model, previous)

    result = CalibrationResult(trials=list(collector.trials), records=collector.records, geometry=collector.geometry,
                               model_context=context)
    result.target_classes = sorted({type(m).__name__ for _, m in _hf.attention_modules(model)})
    lam = np.asarray(collector.trials)
    for phase in phases:
        recs = [r for r in collector.records if r.phase == phase]
        if not recs:
            result.warnings.append(f"{phase}: no attention calls were observed")
            continue
        s = np.concatenate([r.sparsity().numpy() for r in recs])
        sf = np.concatenate([lam * r.seqlen_k for r in recs])
        fit = _fit_points(s, sf, space=fit_space, min_sparsity=min_sparsity, max_sparsity=max_sparsity)
        if fit is None:
            result.warnings.append(
                f"{phase}: too few points with sparsity in [{min_sparsity}, {max_sparsity}] "
                f"(observed {s.min():.3f}..{s.max():.3f}); no fit")
            continue
        result.fits[phase] = fit
        target = (target_sparsity or {}).get(phase)
        msg = extrapolation_warning(fit, target, phase)
        if msg:
            result.warnings.append(msg)
        bins = sorted({r.length_bin for r in recs})
        result.warnings.extend(dense_range_warnings(phase, fit, target, bins, context))
        if per_head:
            layers = sorted({name for r in recs for name in r.counts})
            result.per_head_fits[phase] = {}
            for layer in layers:
                counts = torch.stack([r.counts[layer] for r in recs if layer in r.counts])  # [N, T, H, 2]
                lengths = np.asarray([r.seqlen_k for r in recs if layer in r.counts])
                c = counts.double()
                sp = (c[..., 1] / c[..., 0].clamp_min(1)).numpy()  # [N, T, H]
                fits = []
                for h in range(sp.shape[2]):
                    pts_s = sp[:, :, h].reshape(-1)
                    pts_sf = (lengths[:, None] * lam[None, :]).reshape(-1)
                    fits.append(_fit_points(pts_s, pts_sf, space=fit_space, min_sparsity=min_sparsity,
                                            max_sparsity=max_sparsity))
                result.per_head_fits[phase][layer] = fits
            missing = sum(f is None for fs in result.per_head_fits[phase].values() for f in fs)
            if missing:
                result.warnings.append(f"{phase}: {missing} (layer, KV head) pairs had too few points for their own "
                                       "fit and use the phase's fit")
        targets = list(REPORTED_TARGETS) + ([target] if target else [])
        head_fits = [f for fs in result.per_head_fits.get(phase, {}).values() for f in fs]
        result.sparse_context[phase] = sparse_context(fit, targets, context[0] if context else None, bins, head_fits)
    for w in result.warnings:
        warnings.warn("blasst calibrate: " + w, stacklevel=2)
    return result
