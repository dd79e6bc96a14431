"""Sparsity per trial threshold, measured on a model's real attention inputs.

The model runs dense (factor 0) so every layer sees exactly the activations of dense inference.
In each attention call, after the dense result is computed, the same engine is run again on the
same q/k/v once per trial lambda (factor = lambda * Lk), with statistics on and the outputs
dropped. Why this and not one counting pass over the dense scores:
  * counting on the dense pass is exact in principle -- for lambda < 1 a skipped tile has every
    row's tile max below the running max, so it never raises it, and the running max of a
    skipping run equals the dense running max tile for tile -- but it needs the per-tile row
    maxima recomputed outside the engine, with the engine's tiles, decision groups (GQA voting in
    decode, padding rows that do not vote), orders, splits and fp32 rounding replicated;
  * running the engine per trial gives, by construction, the decisions the engine makes at
    inference time (SPEC sections 2-4, lambda >= 1 guard included) at its real geometry, and on
    CUDA the CUDA engine's own geometry. It costs one attention call per trial, and the trials
    with high lambda are the cheap ones (most tiles skipped).
Counts are kept per phase, layer and KV head (prefill's per-query-head counts are summed over
the G query heads of each KV head).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .. import hf as _hf

# ModelOpt's default trial thresholds (lambda values).
DEFAULT_TRIALS = (1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.3, 0.5, 0.7,
                  0.8, 0.9, 0.95, 0.99)


@dataclass
class SampleRecord:
    """Counts of one calibration sample in one phase."""

    phase: str
    length_bin: int
    seqlen_k: float  # KV length (mean over the calls of the sample, e.g. decode steps)
    # layer name -> int64 tensor [trials, Hkv, 2] of (visited, skipped)
    counts: dict = field(default_factory=dict)

    def totals(self) -> torch.Tensor:
        """[trials, 2] summed over layers and heads."""
        return sum(c.sum(dim=1) for c in self.counts.values())

    def sparsity(self) -> torch.Tensor:
        """[trials] skipped / visited over layers and heads."""
        t = self.totals().double()
        return t[:, 1] / t[:, 0].clamp_min(1)


class TrialCollector:
    """Attach to a model prepared with blasst.hf.enable(model, dense config); between
    begin_sample() and end_sample() every attention call adds its trial counts."""

    def __init__(self, trials: Sequence[float] = DEFAULT_TRIALS, phases: Sequence[str] = ("prefill", "decode")):
        self.trials = [float(t) for t in trials]
        if not self.trials or any(not (t > 0) for t in self.trials):
            raise ValueError("trial thresholds must be positive lambda values")
        self.phases = tuple(phases)
        self.records: list[SampleRecord] = []
        self._current: dict[str, SampleRecord] = {}
        self._lengths: dict[str, list[int]] = {}
        self._first_layer: dict[str, str] = {}
        self._bin = 0
        self.geometry: dict[str, dict] = {}

    def attach(self, model: torch.nn.Module) -> None:
        n = 0
        for _, m in _hf.attention_modules(model):
            state = getattr(m, "blasst_state", None)
            if state is not None:
                state.observer = self._observe
                n += 1
        if n == 0:
            raise ValueError("blasst calibrate: call blasst.hf.enable(model, ...) before attaching the collector")

    def detach(self, model: torch.nn.Module) -> None:
        for _, m in _hf.attention_modules(model):
            state = getattr(m, "blasst_state", None)
            if state is not None:
                state.observer = None

    def begin_sample(self, length_bin: int) -> None:
        self._current = {}
        self._lengths = {}
        self._first_layer = {}
        self._bin = length_bin

    def end_sample(self) -> None:
        for phase, rec in self._current.items():
            lengths = self._lengths.get(phase, [])
            rec.seqlen_k = sum(lengths) / len(lengths) if lengths else 0.0
            self.records.append(rec)
        self._current = {}

    def _observe(self, state, phase: str, run, q: torch.Tensor, k: torch.Tensor, key_valid) -> None:
        if phase not in self.phases or not state.sparse:
            return
        if q.shape[0] != 1 or key_valid is not None:
            raise ValueError("blasst calibrate: samples run one at a time without padding (batch 1)")
        lk = k.shape[1]
        num_kv = k.shape[2]
        rec = self._current.get(phase)
        if rec is None:
            rec = self._current[phase] = SampleRecord(phase=phase, length_bin=self._bin, seqlen_k=0.0)
        # one KV length per call of the sample's first layer (every layer sees the same lengths)
        first = self._first_layer.setdefault(phase, state.name)
        if state.name == first:
            self._lengths.setdefault(phase, []).append(lk)
        per_trial = []
        visited = None
        for lam in self.trials:
            if lam >= 1.0:
                # skipping is off for lambda >= 1 (SPEC 4): same visited tiles, none skipped
                per_trial.append(None)
                continue
            _, stats = run(lam * lk, None, True)
            stats = stats.to("cpu")
            if stats.shape[0] != num_kv:  # prefill: per query head -> per KV head
                stats = stats.view(num_kv, -1, 2).sum(dim=1)
            per_trial.append(stats)
            visited = stats[:, 0]
        if visited is None:
            _, stats = run(0.0, None, True)
            stats = stats.to("cpu")
            visited = (stats.view(num_kv, -1, 2).sum(dim=1) if stats.shape[0] != num_kv else stats)[:, 0]
        zeros = torch.zeros_like(visited)
        counts = torch.stack([s if s is not None else torch.stack([visited, zeros], dim=1) for s in per_trial])
        if state.name in rec.counts:
            rec.counts[state.name] = rec.counts[state.name] + counts
        else:
            rec.counts[state.name] = counts
        info = _last_geometry()
        if info is not None:
            self.geometry[phase] = info


def _last_geometry() -> Optional[dict]:
    from .._core import last_run_info

    info = last_run_info()
    if info is None:
        return None
    return {"engine": info.engine, "block_m": info.block_m, "block_n": info.block_n, "order": info.order,
            "splits": info.splits}


def _cache_argument(model) -> str:
    """The name under which the model's forward takes the KV cache: `cache` in current transformers
    (where `past_key_values` is deprecated and warns), `past_key_values` before and in remote code
    that kept it."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    if "cache" in params:
        return "cache"
    return "past_key_values"


def _cache_of(out):
    """The KV cache a forward returned, read by its field name: reading the old name through the
    output's compatibility property logs a deprecation in current transformers."""
    keys = out.keys() if hasattr(out, "keys") else ()
    for name in ("cache", "past_key_values"):
        if name in keys:
            return out[name]
    raise ValueError("blasst calibrate: the model returned no KV cache with use_cache=True; decode calibration "
                     "needs one (or calibrate --phases prefill)")


@torch.no_grad()
def run_samples(model, samples, collector: TrialCollector, *, decode_tokens: int = 0, progress=None) -> None:
    """Runs each sample (token ids [1, L] with its length bin) through the model: one prefill
    forward, then decode_tokens greedy decode steps with the KV cache."""
    device = next(model.parameters()).device
    cache_arg = _cache_argument(model)
    for ids, length_bin in samples:
        ids = ids.to(device)
        collector.begin_sample(length_bin)
        out = model(input_ids=ids, use_cache=decode_tokens > 0)
        if decode_tokens > 0:
            cache = _cache_of(out)
            token = out.logits[:, -1:].argmax(dim=-1)
            for _ in range(decode_tokens):
                out = model(input_ids=token, use_cache=True, **{cache_arg: cache})
                cache = _cache_of(out)
                token = out.logits[:, -1:].argmax(dim=-1)
        collector.end_sample()
        if progress is not None:
            progress.update(1)
