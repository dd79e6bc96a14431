"""BlasstConfig: what a model's attention layers should do (thresholds, geometry, ignore list).

Threshold precedence per phase (as TensorRT-LLM documents it): an explicit threshold_scale_factor
wins; otherwise target_sparsity (the user's, else the checkpoint's default) goes through the
calibrated formula; otherwise the phase is dense (factor 0). Per (layer, KV head) formulas, when
present, replace the per-phase formula for their layer.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

from . import schema
from .schema import PHASES, Formula, SchemaError

PhaseValue = Union[float, dict, None]


class ConfigError(ValueError):
    """A BLASST configuration that cannot be honoured."""


def _phase_dict(value: PhaseValue, name: str) -> dict[str, float]:
    try:
        return schema.per_phase(value, name)
    except SchemaError as e:
        raise ConfigError(str(e)) from None


@dataclass
class BlasstConfig:
    """Configuration of BLASST attention for a model.

    threshold_scale_factor: a number (both phases) or {"prefill": x, "decode": y}; lambda = x / Lk.
    target_sparsity: the same forms, in [0, 1); needs formulas (from calibration or a checkpoint).
    formulas: phase -> schema.Formula (threshold_scale_factor = formula(target_sparsity)).
    per_head_formulas: phase -> {layer name: [Formula per KV head]} (from blasst calibrate).
    ignore: fnmatch patterns of attention module names that stay dense (e.g. "model.layers.0.*").
    targets: attention class names the checkpoint's group applies to ([] = every attention module);
      a target also matches every class whose name ends with it ("Attention" matches them all).
    order / block_m / block_n / splits: engine geometry (0 = engine default); SPEC section 2.
    decode_max_query_len: calls with 1..this many query rows and a KV cache run as decode.
    engine: "auto", "cpu" or "cuda".  num_threads: CPU engine threads (0 = torch's setting).
    collect_stats: keep per (layer, phase, head) visited/skipped tile counts (blasst.hf.stats()).
    """

    threshold_scale_factor: PhaseValue = None
    target_sparsity: PhaseValue = None
    formulas: dict[str, Formula] = field(default_factory=dict)
    per_head_formulas: dict[str, dict[str, list[Formula]]] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    order: str = "ascending"
    block_m: int = 0
    block_n: int = 0
    splits: int = 0
    decode_max_query_len: int = 8
    engine: str = "auto"
    num_threads: int = 0
    collect_stats: bool = False
    # the checkpoint's default target sparsity (user target_sparsity overrides it)
    default_target_sparsity: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        factors = _phase_dict(self.threshold_scale_factor, "threshold_scale_factor")
        for p, f in factors.items():
            if f < 0:
                raise ConfigError(f"threshold_scale_factor for {p} is {f}, expected >= 0 (0 = dense)")
        for name, value in (("target_sparsity", self.target_sparsity),
                            ("default_target_sparsity", self.default_target_sparsity or None)):
            for p, t in _phase_dict(value, name).items():
                if not 0.0 <= t < 1.0:
                    raise ConfigError(f"{name} for {p} is {t}, expected a value in [0, 1)")
        for p in self.formulas:
            if p not in PHASES:
                raise ConfigError(f"formulas has phase {p!r}, expected 'prefill' or 'decode'")
        if self.order not in ("ascending", "anchored"):
            raise ConfigError(f"order is {self.order!r}, expected 'ascending' or 'anchored'")
        for name in ("block_m", "block_n", "splits", "num_threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} is {v!r}, expected an int >= 0 (0 = default)")
        if not isinstance(self.decode_max_query_len, int) or self.decode_max_query_len < 0:
            raise ConfigError(f"decode_max_query_len is {self.decode_max_query_len!r}, expected an int >= 0")
        if self.engine not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"engine is {self.engine!r}, expected 'auto', 'cpu' or 'cuda'")
        if isinstance(self.ignore, str) or isinstance(self.targets, str):
            raise ConfigError("ignore and targets are lists of patterns, not a single string")
        # a target sparsity must be resolvable now rather than at the first forward pass
        for p in PHASES:
            self.factor(p)

    # ------------------------------------------------------------------ thresholds
    def target(self, phase: str) -> Optional[float]:
        user = _phase_dict(self.target_sparsity, "target_sparsity")
        if phase in user:
            return user[phase]
        return self.default_target_sparsity.get(phase)

    def factor(self, phase: str) -> float:
        """The threshold_scale_factor of a phase (0 = dense)."""
        factors = _phase_dict(self.threshold_scale_factor, "threshold_scale_factor")
        if phase in factors:
            return factors[phase]
        target = self.target(phase)
        if target is None or target == 0.0:
            return 0.0
        formula = self.formulas.get(phase)
        if formula is None:
            raise ConfigError(
                f"target_sparsity {target} for {phase} needs a calibrated formula (a checkpoint whose "
                f"sparse_attention_config has threshold_scale_factor.formula, or `blasst calibrate`); "
                f"give threshold_scale_factor instead"
            )
        value = formula.factor(target)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"the {phase} formula gives threshold_scale_factor {value} at target {target}")
        return value

    def head_factors(self, phase: str, layer: str) -> Optional[list[float]]:
        """Per KV head factors of one layer, when calibrated per head and a target is in use."""
        if phase in _phase_dict(self.threshold_scale_factor, "threshold_scale_factor"):
            return None
        per_layer = self.per_head_formulas.get(phase, {})
        if layer not in per_layer:
            return None
        target = self.target(phase)
        if target is None or target == 0.0:
            return None
        return [max(0.0, f.factor(target)) for f in per_layer[layer]]

    def applies_to(self, module_name: str, class_name: str) -> bool:
        """False when the module is ignored or not among the targets (it then runs dense)."""
        if any(fnmatch.fnmatchcase(module_name, pat) for pat in self.ignore):
            return False
        if not self.targets:
            return True
        return any(class_name == t or class_name.endswith(t) or fnmatch.fnmatchcase(class_name, t)
                   for t in self.targets)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sparse_attention_config(cls, sac: Any, per_head: Optional[dict] = None, **overrides) -> "BlasstConfig":
        """From a checkpoint's sparse_attention_config (and optional per-head extension); keyword
        overrides are BlasstConfig fields given by the user (they win over the checkpoint)."""
        try:
            spec = schema.read_sparse_attention_config(sac)
        except SchemaError as e:
            raise ConfigError(str(e)) from None
        base: dict[str, Any] = {}
        if spec is not None:
            if spec.factors:
                base["threshold_scale_factor"] = dict(spec.factors)
            base["formulas"] = dict(spec.formulas)
            base["default_target_sparsity"] = dict(spec.target_sparsity)
            base["ignore"] = list(spec.ignore)
            base["targets"] = list(spec.targets)
        if per_head:
            base["per_head_formulas"] = parse_per_head(per_head)
        if "ignore" in overrides and "ignore" in base:
            overrides = dict(overrides)
            overrides["ignore"] = list(base["ignore"]) + list(overrides["ignore"])  # checkpoint ignores always hold
        if overrides.get("threshold_scale_factor") is not None or overrides.get("target_sparsity") is not None:
            base.pop("threshold_scale_factor", None)  # a user's choice replaces the checkpoint's fixed factors
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @classmethod
    def from_pretrained_config(cls, hf_config: Any, **overrides) -> "BlasstConfig":
        """From a transformers PretrainedConfig or a config.json dict."""
        get = hf_config.get if isinstance(hf_config, dict) else (lambda k, d=None: getattr(hf_config, k, d))
        return cls.from_sparse_attention_config(get("sparse_attention_config"), get(schema.PER_HEAD_KEY), **overrides)

    def with_overrides(self, **kw) -> "BlasstConfig":
        return replace(self, **kw)


def parse_per_head(per_head: dict) -> dict[str, dict[str, list[Formula]]]:
    """The blasst_per_kv_head_threshold extension: {"formula": F, phase: {layer: {"a": [..], "b": [..]}}}."""
    if not isinstance(per_head, dict):
        raise ConfigError(f"{schema.PER_HEAD_KEY} must be a dict")
    expr = per_head.get("formula", schema.DEFAULT_FORMULA)
    result: dict[str, dict[str, list[Formula]]] = {}
    for phase in PHASES:
        layers = per_head.get(phase)
        if not layers:
            continue
        result[phase] = {}
        for layer, coeffs in layers.items():
            names = list(coeffs)
            lengths = {len(coeffs[n]) for n in names}
            if len(lengths) != 1:
                raise ConfigError(f"{schema.PER_HEAD_KEY}.{phase}.{layer}: coefficient lists differ in length")
            n = lengths.pop()
            try:
                result[phase][layer] = [Formula(expr, {c: float(coeffs[c][h]) for c in names}) for h in range(n)]
            except SchemaError as e:
                raise ConfigError(f"{schema.PER_HEAD_KEY}.{phase}.{layer}: {e}") from None
    return result
