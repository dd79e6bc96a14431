"""Fit threshold_scale_factor = a * exp(b * sparsity) to calibration points (s_i, sf_i).

Two objectives: linear space (least squares on sf, as ModelOpt's default) and log space (least
squares on ln sf, which weights small and large factors alike). Both report R^2 in both spaces.
scipy's curve_fit is used when present; otherwise a damped Gauss-Newton on (ln a, b) started from
the closed-form log-space solution.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass
class FitResult:
    a: float
    b: float
    space: str  # "linear" or "log": the objective that produced (a, b)
    r2_linear: float  # R^2 of sf against a*exp(b*s)
    r2_log: float  # R^2 of ln sf against ln a + b*s
    n_points: int
    min_sparsity: float  # range of the observed sparsities used in the fit
    max_sparsity: float

    def factor(self, sparsity: float) -> float:
        return self.a * math.exp(self.b * sparsity)

    def to_dict(self) -> dict:
        return asdict(self)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


def _fit_log(s: np.ndarray, sf: np.ndarray) -> tuple[float, float]:
    """Closed form: ln sf = ln a + b s."""
    y = np.log(sf)
    A = np.stack([np.ones_like(s), s], axis=1)
    (log_a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    return math.exp(float(log_a)), float(b)


def _fit_linear_own(s: np.ndarray, sf: np.ndarray, a0: float, b0: float, iters: int = 200) -> tuple[float, float]:
    """Levenberg-Marquardt on r(c, b) = exp(c + b s) - sf, with c = ln a (keeps a > 0)."""
    c, b = math.log(a0), b0
    lam = 1e-3
    pred = np.exp(c + b * s)
    cost = float(np.sum((pred - sf) ** 2))
    for _ in range(iters):
        J = np.stack([pred, pred * s], axis=1)  # d pred / d(c, b)
        r = pred - sf
        JtJ = J.T @ J
        g = J.T @ r
        step = np.linalg.solve(JtJ + lam * np.diag(np.diag(JtJ) + 1e-12), -g)
        c_new, b_new = c + float(step[0]), b + float(step[1])
        pred_new = np.exp(np.clip(c_new + b_new * s, -700, 700))
        cost_new = float(np.sum((pred_new - sf) ** 2))
        if cost_new < cost:
            c, b, pred = c_new, b_new, pred_new
            converged = abs(cost - cost_new) <= 1e-14 * max(cost, 1e-300)
            cost = cost_new
            lam = max(lam / 3, 1e-12)
            if converged:
                break
        else:
            lam *= 4
            if lam > 1e12:
                break
    return math.exp(c), b


def _fit_linear(s: np.ndarray, sf: np.ndarray, a0: float, b0: float) -> tuple[float, float]:
    try:
        from scipy.optimize import curve_fit
    except ImportError:
        return _fit_linear_own(s, sf, a0, b0)

    def model(x, a, b):
        return a * np.exp(b * x)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a, b), _ = curve_fit(model, s, sf, p0=[a0, b0], bounds=([0.0, -np.inf], [np.inf, np.inf]), maxfev=20000)
        return float(a), float(b)
    except (RuntimeError, ValueError):
        return _fit_linear_own(s, sf, a0, b0)


def fit_exponential(
    sparsity: Sequence[float],
    factor: Sequence[float],
    *,
    space: str = "linear",
    min_sparsity: float = 0.10,
    max_sparsity: float = 0.90,
    min_points: int = 3,
) -> FitResult:
    """Fits factor = a * exp(b * sparsity) on the points whose sparsity lies in
    [min_sparsity, max_sparsity] (outside it, sparsity saturates and the model does not hold)."""
    if space not in ("linear", "log"):
        raise ValueError(f"space is {space!r}, expected 'linear' or 'log'")
    s = np.asarray(sparsity, dtype=np.float64)
    sf = np.asarray(factor, dtype=np.float64)
    keep = (s >= min_sparsity) & (s <= max_sparsity) & np.isfinite(sf) & (sf > 0)
    s, sf = s[keep], sf[keep]
    if len(s) < min_points or np.ptp(s) <= 0:
        raise ValueError(
            f"need at least {min_points} calibration points with distinct sparsity in [{min_sparsity}, {max_sparsity}] "
            f"(got {len(s)}); widen the trial thresholds or the length bins"
        )
    a, b = _fit_log(s, sf)
    if space == "linear":
        a, b = _fit_linear(s, sf, a, b)
    return FitResult(
        a=a, b=b, space=space,
        r2_linear=_r2(sf, a * np.exp(b * s)),
        r2_log=_r2(np.log(sf), math.log(a) + b * s) if a > 0 else float("-inf"),
        n_points=int(len(s)), min_sparsity=float(s.min()), max_sparsity=float(s.max()),
    )


def extrapolation_warning(fit: FitResult, target: Optional[float], phase: str = "") -> Optional[str]:
    """A message when the target sparsity lies outside what calibration observed (None if inside)."""
    if target is None or target == 0:
        return None
    if target < fit.min_sparsity or target > fit.max_sparsity:
        where = f" ({phase})" if phase else ""
        return (f"target sparsity {target:.3f}{where} lies outside the observed range "
                f"[{fit.min_sparsity:.3f}, {fit.max_sparsity:.3f}]: the factor {fit.factor(target):.4g} is an "
                "extrapolation of the fit")
    return None
