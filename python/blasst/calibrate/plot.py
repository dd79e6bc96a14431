"""Plots of a calibration: sparsity against threshold_scale_factor per length bin, with the fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_phase(result, phase: str, path: str | Path) -> Path:
    """Writes one PNG: mean sparsity per trial for each length bin (markers and lines), every
    (sample, trial) point faintly, and the fitted curve s = ln(sf / a) / b."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result.points(phase)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = sorted({p["length_bin"] for p in pts})
    cmap = plt.get_cmap("viridis", max(len(bins), 1))
    for i, b in enumerate(bins):
        mine = [p for p in pts if p["length_bin"] == b]
        sf = np.array([p["factor"] for p in mine])
        s = np.array([p["sparsity"] for p in mine])
        ax.scatter(sf, s, s=6, alpha=0.25, color=cmap(i))
        lams = sorted({p["lambda"] for p in mine})
        mean_sf = [np.mean([p["factor"] for p in mine if p["lambda"] == lam]) for lam in lams]
        mean_s = [np.mean([p["sparsity"] for p in mine if p["lambda"] == lam]) for lam in lams]
        ax.plot(mean_sf, mean_s, "o-", ms=3, lw=1, color=cmap(i), label=f"L = {b}")
    fit = result.fits.get(phase)
    if fit is not None:
        s = np.linspace(fit.min_sparsity, fit.max_sparsity, 100)
        ax.plot(fit.a * np.exp(fit.b * s), s, "k--", lw=1.5,
                label=f"fit sf = {fit.a:.3g} exp({fit.b:.3g} s)  R2 lin {fit.r2_linear:.3f} / log {fit.r2_log:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("threshold_scale_factor (lambda * Lk)")
    ax.set_ylabel("tile sparsity (skipped / visited)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"BLASST calibration, {phase}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
