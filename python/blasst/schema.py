"""The `sparse_attention_config` block of a checkpoint's config.json (prior-art section 4).

Read: every form ModelOpt, TensorRT-LLM and the other producers write:
  * config_groups with one group {"algorithm": "skip_softmax", "threshold_scale_factor": ...,
    "target_sparsity": ..., "ignore": [...], "targets": [...]}, beside any number of groups of other
    algorithms (N:M sparse_softmax, ...), which are left to their owners: not read, not validated,
    written back untouched. Two skip_softmax groups are refused, as TensorRT-LLM refuses them;
  * ModelOpt's older export: a group {"sparse_algo": "softmax_skip", "targets": [...]} with
    "threshold_scale_factor" beside config_groups;
  * the flat user form {"algorithm": "skip_softmax", "threshold_scale_factor": ..., ...}.
threshold_scale_factor may be a number, {"prefill": x, "decode": y}, or a formula:
  {"formula": "a * exp(b * target_sparsity)", "prefill": {"a":..,"b":..}, "decode": {...}}
  {"formula": ..., "coefficients": {...}}   or   {"formula": ..., "a": .., "b": ..}  (both phases)
  {"prefill": {"formula": ..., "a": ..}, "decode": {...}}                          (per phase)
target_sparsity: a number or {"prefill": x, "decode": y}.
Write: the config_groups form TensorRT-LLM documents and reads (see write_sparse_attention_config).
"""

from __future__ import annotations

import ast
import json
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

PHASES = ("prefill", "decode")
DEFAULT_FORMULA = "a * exp(b * target_sparsity)"
ALGORITHM = "skip_softmax"
LEGACY_ALGORITHM = "softmax_skip"
# Our extension keys live outside sparse_attention_config, so no reader of that block (TensorRT-LLM
# validates its groups' fields) is disturbed:
# per (layer, KV head) formula coefficients, {"formula": ..., phase: {layer: {"a": [..], "b": [..]}}};
PER_HEAD_KEY = "blasst_per_kv_head_threshold"
# the context lengths where the checkpoint's default target can skip (written by calibration),
# {phase: {"target_sparsity", "threshold_scale_factor", "min_context_length", "max_context_length"}}.
SPARSE_CONTEXT_KEY = "blasst_sparse_context"


class SchemaError(ValueError):
    """A sparse_attention_config that cannot be honoured; the message says which field."""


# ---------------------------------------------------------------------------------------------
# Formulas: a small, safe evaluator for the numexpr subset the schema uses (names, numbers,
# + - * / **, unary minus, and exp/log/sqrt/pow/abs/min/max).

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_FUNCS = {"exp": math.exp, "log": math.log, "sqrt": math.sqrt, "pow": math.pow, "abs": abs, "min": min,
          "max": max, "log10": math.log10, "log2": math.log2}


def _eval_node(node: ast.AST, names: dict[str, float]) -> float:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body, names)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise SchemaError(f"formula uses '{node.id}', which is neither target_sparsity nor a given coefficient "
                              f"(have {sorted(names)})")
        return float(names[node.id])
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval_node(node.left, names), _eval_node(node.right, names))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        return float(_FUNCS[node.func.id](*[_eval_node(a, names) for a in node.args]))
    raise SchemaError(f"formula element {ast.dump(node)} is not supported (numbers, names, + - * / **, "
                      f"{', '.join(sorted(_FUNCS))})")


@dataclass
class Formula:
    """threshold_scale_factor = expr(target_sparsity, **coefficients)."""

    expr: str = DEFAULT_FORMULA
    coefficients: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        try:
            self._tree = ast.parse(self.expr, mode="eval")
        except SyntaxError as e:
            raise SchemaError(f"formula {self.expr!r} does not parse: {e.msg}") from None
        for name, value in self.coefficients.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise SchemaError(f"formula coefficient {name!r} is {value!r}, expected a finite number")
        self.factor(0.5)  # every name must resolve

    def factor(self, target_sparsity: float) -> float:
        names = dict(self.coefficients)
        names["target_sparsity"] = float(target_sparsity)
        try:
            value = _eval_node(self._tree, names)
        except (ArithmeticError, ValueError, TypeError) as e:
            if isinstance(e, SchemaError):
                raise
            raise SchemaError(f"formula {self.expr!r} fails at target_sparsity={target_sparsity}: {e}") from None
        return value

    def to_json(self) -> dict[str, float]:
        return dict(self.coefficients)


@dataclass
class SkipSoftmaxSpec:
    """The skip_softmax group of a sparse_attention_config, normalised per phase."""

    factors: dict[str, float] = field(default_factory=dict)  # phase -> fixed threshold_scale_factor
    formulas: dict[str, Formula] = field(default_factory=dict)  # phase -> calibrated formula
    target_sparsity: dict[str, float] = field(default_factory=dict)  # phase -> default target
    ignore: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    group_name: str = "group_0"
    extra: dict[str, Any] = field(default_factory=dict)  # keys we keep but do not use


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SchemaError(f"{where} is {value!r}, expected a finite number")
    return float(value)


def per_phase(value: Any, where: str) -> dict[str, float]:
    """A number (both phases) or {"prefill": x, "decode": y} (either may be missing)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        unknown = set(value) - set(PHASES)
        if unknown:
            raise SchemaError(f"{where} has keys {sorted(unknown)}, expected 'prefill' and/or 'decode'")
        return {p: _number(v, f"{where}.{p}") for p, v in value.items() if v is not None}
    x = _number(value, where)
    return {p: x for p in PHASES}


def _coefficients(d: dict, where: str) -> dict[str, float]:
    return {k: _number(v, f"{where}.{k}") for k, v in d.items()}


def _parse_threshold(tsf: Any, spec: SkipSoftmaxSpec, where: str) -> None:
    if tsf is None:
        return
    if not isinstance(tsf, dict):
        spec.factors.update(per_phase(tsf, where))
        return
    if "formula" in tsf:
        expr = tsf["formula"]
        if not isinstance(expr, str):
            raise SchemaError(f"{where}.formula is {expr!r}, expected a string")
        phase_keys = [p for p in PHASES if p in tsf]
        if phase_keys:
            for p in phase_keys:
                if not isinstance(tsf[p], dict):
                    raise SchemaError(f"{where}.{p} is {tsf[p]!r}, expected the coefficients of the formula")
                spec.formulas[p] = Formula(expr, _coefficients(tsf[p], f"{where}.{p}"))
        else:
            coeffs = tsf.get("coefficients")
            if coeffs is None:
                coeffs = {k: v for k, v in tsf.items() if k != "formula"}
            elif not isinstance(coeffs, dict):
                raise SchemaError(f"{where}.coefficients is {coeffs!r}, expected a dict")
            formula = Formula(expr, _coefficients(coeffs, f"{where}.coefficients"))
            for p in PHASES:
                spec.formulas[p] = formula
        return
    unknown = set(tsf) - set(PHASES)
    if unknown:
        raise SchemaError(f"{where} has keys {sorted(unknown)}, expected 'formula', 'prefill' or 'decode'")
    for p, v in tsf.items():
        if isinstance(v, dict):  # per-phase formula
            expr = v.get("formula", DEFAULT_FORMULA)
            coeffs = v.get("coefficients", {k: c for k, c in v.items() if k != "formula"})
            spec.formulas[p] = Formula(expr, _coefficients(coeffs, f"{where}.{p}"))
        elif v is not None:
            spec.factors[p] = _number(v, f"{where}.{p}")


def _is_skip_group(group: dict) -> bool:
    return group.get("algorithm") == ALGORITHM or group.get("sparse_algo") in (LEGACY_ALGORITHM, ALGORITHM)


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise SchemaError(f"{where} is {value!r}, expected a list of strings")
    return list(value)


def skip_groups(groups: dict) -> list[tuple[str, dict]]:
    """The (name, group) of config_groups' skip_softmax group, [] when it has none. Groups of other
    algorithms are not looked into. More than one skip_softmax group is refused: TensorRT-LLM
    documents them as invalid, and which one holds for a layer would be a guess."""
    skip = [(n, g) for n, g in groups.items() if isinstance(g, dict) and _is_skip_group(g)]
    if len(skip) > 1:
        others = [n for n in groups if n not in {name for name, _ in skip}]
        raise SchemaError(
            f"sparse_attention_config has {len(skip)} skip_softmax groups ({', '.join(n for n, _ in skip)}); at most "
            f"one is allowed (TensorRT-LLM's rule; groups of other algorithms"
            f"{' such as ' + ', '.join(others) if others else ''} may sit beside it). Merge them into one group "
            "whose `ignore` lists the layers to keep dense")
    return skip


def read_sparse_attention_config(sac: Any) -> Optional[SkipSoftmaxSpec]:
    """The skip_softmax part of a sparse_attention_config (None when it has none)."""
    if sac is None:
        return None
    if hasattr(sac, "to_dict"):
        sac = sac.to_dict()
    if not isinstance(sac, dict):
        raise SchemaError(f"sparse_attention_config is {type(sac).__name__}, expected a dict")
    groups = sac.get("config_groups")
    if groups is None:
        # flat user form
        if sac.get("algorithm") not in (ALGORITHM, None):
            return None
        if not any(k in sac for k in ("threshold_scale_factor", "target_sparsity")):
            return None
        group_name, group, outer = "group_0", sac, {}
    else:
        if not isinstance(groups, dict):
            raise SchemaError("sparse_attention_config.config_groups must be a dict of groups")
        skip = skip_groups(groups)
        if not skip:
            return None
        (group_name, group), outer = skip[0], sac
    spec = SkipSoftmaxSpec(group_name=group_name)
    where = f"sparse_attention_config.config_groups.{group_name}" if groups is not None else "sparse_attention_config"
    # ModelOpt's older export keeps the formula beside config_groups; a group's own value wins.
    _parse_threshold(outer.get("threshold_scale_factor"), spec, "sparse_attention_config.threshold_scale_factor")
    _parse_threshold(group.get("threshold_scale_factor"), spec, f"{where}.threshold_scale_factor")
    for src, name in ((outer, "sparse_attention_config"), (group, where)):
        ts = src.get("target_sparsity")
        if ts is not None:
            spec.target_sparsity.update(per_phase(ts, f"{name}.target_sparsity"))
    for p, t in spec.target_sparsity.items():
        if not 0.0 <= t < 1.0:
            raise SchemaError(f"{where}.target_sparsity.{p} is {t}, expected a value in [0, 1)")
    for p, f in spec.factors.items():
        if f < 0:
            raise SchemaError(f"{where}.threshold_scale_factor.{p} is {f}, expected >= 0")
    spec.ignore = _string_list(group.get("ignore"), f"{where}.ignore")
    spec.targets = _string_list(group.get("targets"), f"{where}.targets")
    known = {"algorithm", "sparse_algo", "threshold_scale_factor", "target_sparsity", "ignore", "targets"}
    spec.extra = {k: v for k, v in group.items() if k not in known}
    return spec


def _group_formulas(group: dict) -> dict[str, Formula]:
    """Per-phase formulas of an existing skip_softmax group in the layout written below (shared
    "formula" with per-phase coefficients, or a formula per phase); {} when there are none."""
    tsf = group.get("threshold_scale_factor")
    if not isinstance(tsf, dict):
        return {}
    out = {}
    for phase in PHASES:
        entry = tsf.get(phase)
        expr = entry.get("formula", tsf.get("formula")) if isinstance(entry, dict) else None
        if isinstance(expr, str):
            out[phase] = Formula(expr, {k: v for k, v in entry.items() if k != "formula"})
    return out


def write_sparse_attention_config(
    existing: Optional[dict] = None,
    *,
    formulas: Optional[dict[str, Formula]] = None,
    target_sparsity: Optional[dict[str, float]] = None,
    ignore: Optional[list[str]] = None,
    targets: Optional[list[str]] = None,
    producer: Optional[dict[str, str]] = None,
) -> dict:
    """A sparse_attention_config with one skip_softmax group, in the form TensorRT-LLM reads:

    {"config_groups": {"group_0": {"algorithm": "skip_softmax", "targets": [...], "ignore": [...],
       "threshold_scale_factor": {"formula": "a * exp(b * target_sparsity)",
                                  "prefill": {"a": .., "b": ..}, "decode": {"a": .., "b": ..}},
       "target_sparsity": {"prefill": .., "decode": ..}}},
     "producer": {"name": "blasst", "version": ..}}

    Groups of other algorithms in `existing` are kept as they are, in their place; an existing
    skip_softmax group (either form) is replaced under its own name, keeping the formula and target
    of a phase not given. `ignore` is always written, [] included, as ModelOpt writes it.
    """
    sac = json.loads(json.dumps(existing)) if existing else {}
    groups = sac.setdefault("config_groups", {})
    if not isinstance(groups, dict):
        raise SchemaError("sparse_attention_config.config_groups must be a dict of groups")
    skip = skip_groups(groups)  # two skip groups: refused rather than one of them silently kept
    name = skip[0][0] if skip else None
    if name is None:
        i = 0
        while f"group_{i}" in groups:
            i += 1
        name = f"group_{i}"
    old = dict(groups.get(name, {}))
    # The older layout keeps the skip group's formula and target beside config_groups (read_sparse_
    # attention_config applies them to the group); they move into the group, the group's own winning.
    outer_tsf = sac.pop("threshold_scale_factor", None)
    outer_target = sac.pop("target_sparsity", None)
    if skip and outer_tsf is not None and "threshold_scale_factor" not in old:
        old["threshold_scale_factor"] = outer_tsf
    group: dict[str, Any] = {"algorithm": ALGORITHM}
    group["targets"] = list(targets if targets is not None else old.get("targets", ["Attention"]))
    group["ignore"] = list(ignore if ignore is not None else old.get("ignore", []))
    for k, v in old.items():  # keep fields we do not manage (e.g. initial_disabled_steps)
        if k not in ("algorithm", "sparse_algo", "targets", "ignore", "threshold_scale_factor", "target_sparsity"):
            group[k] = v
    # A calibration of one phase keeps the other phase's formula and target from the old group.
    formulas = {**_group_formulas(old), **(formulas or {})}
    old_targets = {}
    for value in (outer_target if skip else None, old.get("target_sparsity")):
        try:
            old_targets.update(per_phase(value, "target_sparsity"))
        except SchemaError:
            pass  # an unreadable old target is replaced, not carried over
    if old_targets or target_sparsity:
        target_sparsity = {**old_targets, **(target_sparsity or {})}
    if formulas:
        exprs = {f.expr for f in formulas.values()}
        if len(exprs) == 1:
            tsf: dict[str, Any] = {"formula": exprs.pop()}
            for p in PHASES:
                if p in formulas:
                    tsf[p] = formulas[p].to_json()
        else:
            tsf = {p: {"formula": f.expr, **f.to_json()} for p, f in formulas.items()}
        group["threshold_scale_factor"] = tsf
    if target_sparsity:
        group["target_sparsity"] = {p: float(target_sparsity[p]) for p in PHASES if p in target_sparsity}
    groups[name] = group
    if producer is not None:
        sac["producer"] = dict(producer)
    return sac


def load_config_json(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)


def update_config_json(path: str | Path, sparse_attention_config: dict, per_head: Optional[dict] = None,
                       extensions: Optional[dict[str, Any]] = None) -> None:
    """Sets sparse_attention_config (and our per-head extension, if given) in a config.json, keeping
    every other key; creates the file if it does not exist. extensions: more top-level keys to set
    (a value of None removes the key)."""
    path = Path(path)
    config = load_config_json(path) if path.exists() else {}
    config["sparse_attention_config"] = sparse_attention_config
    if per_head is not None:
        config[PER_HEAD_KEY] = per_head
    for key, value in (extensions or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    tmp.replace(path)
