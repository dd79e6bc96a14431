"""Small numpy model of the BLASST skip rule (SPEC.md sections 2-5), prefill only, no splits.

It only computes the skip decisions and the statistics (visited / skipped tiles), which depend on the
per-row tile maxima alone, so it needs one [Bm, Lk] block of scores at a time and never the outputs.
Used to explore real samples and to cross-check the CLI's statistics; the CLI / C++ CPU engine is the
reference of the project.

Shapes: q [Lq, Hq, D], k [Lk, Hkv, D] (one batch entry); Hq = G * Hkv, query head h uses KV head h // G.
"""
from __future__ import annotations

import math

import numpy as np


def tile_maxima(q: np.ndarray, k: np.ndarray, bn: int, causal: bool, scale: float | None = None,
                row0: int = 0, rows: int | None = None) -> np.ndarray:
    """Per-row maxima of the scores over each KV tile, for one query head.

    q [Lq, D], k [Lk, D] -> mt [rows, n_tiles] float32, -inf where a row sees no key of the tile.
    Scores are accumulated in fp32 as the engines do.
    """
    lq, d = q.shape
    lk = k.shape[0]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    rows = lq - row0 if rows is None else rows
    n_tiles = (lk + bn - 1) // bn
    qb = q[row0:row0 + rows].astype(np.float32)
    s = (qb @ k.astype(np.float32).T) * np.float32(scale)  # [rows, Lk]
    if causal:
        # bottom-right aligned: row i sits at absolute position Lk - Lq + i
        pos = (lk - lq) + row0 + np.arange(rows)[:, None]
        s = np.where(np.arange(lk)[None, :] <= pos, s, -np.inf)
    pad = n_tiles * bn - lk
    if pad:
        s = np.concatenate([s, np.full((rows, pad), -np.inf, np.float32)], axis=1)
    return s.reshape(rows, n_tiles, bn).max(axis=2)


def group_decisions(mt: np.ndarray, ln_lambda: float, order: str) -> tuple[int, int, np.ndarray]:
    """Skip decisions of one decision group.

    mt [rows, n_tiles]: tile maxima of the group's rows. Returns (visited, skipped, skip_mask [n_tiles]).
    A tile is visited iff some row of the group sees one of its keys.
    """
    visible = np.isfinite(mt).any(axis=0)
    tiles = np.nonzero(visible)[0]
    skip = np.zeros(mt.shape[1], dtype=bool)
    if tiles.size == 0:
        return 0, 0, skip
    if order == "ascending":
        anchors = {int(tiles[0])}
        m = np.full(mt.shape[0], -np.inf, np.float32)
    elif order == "anchored":
        anchors = {0, int(tiles[-1])} & set(int(t) for t in tiles)
        m = np.max(mt[:, sorted(anchors)], axis=1)
    else:
        raise ValueError(f"unknown order {order!r}")
    if ln_lambda is None:  # dense: every visited tile kept
        return int(tiles.size), 0, skip
    with np.errstate(invalid="ignore"):
        for t in tiles:
            t = int(t)
            col = mt[:, t]
            if t not in anchors:
                diff = col - m
                # -inf - -inf is NaN: votes skip; finite - -inf is +inf: votes keep
                votes_skip = np.where(np.isnan(diff), True, diff < ln_lambda)
                if votes_skip.all():
                    skip[t] = True
                    continue
            m = np.maximum(m, col)
    return int(tiles.size), int(skip.sum()), skip


def prefill_stats(q: np.ndarray, k: np.ndarray, factors, bm: int = 128, bn: int = 128, causal: bool = True,
                  order: str = "ascending", scale: float | None = None) -> dict:
    """Sparsity of a prefill call for several threshold_scale_factors at once.

    q [Lq, Hq, D], k [Lk, Hkv, D]. Returns {factor: {"visited", "skipped", "per_head": [[v, s], ...]}}.
    Groups: Bm consecutive query rows of one query head (SPEC section 2, prefill).
    """
    lq, hq, _ = q.shape
    lk, hkv, _ = k.shape
    g = hq // hkv
    out = {}
    for f in factors:
        lam = f / lk
        ln_lam = None if (f == 0 or lam >= 1) else math.log(lam)
        out[f] = {"visited": 0, "skipped": 0, "per_head": [[0, 0] for _ in range(hq)], "ln_lambda": ln_lam}
    for h in range(hq):
        kh = k[:, h // g, :]
        for r0 in range(0, lq, bm):
            rows = min(bm, lq - r0)
            mt = tile_maxima(q[:, h, :], kh, bn, causal, scale, r0, rows)
            for f in factors:
                v, s, _ = group_decisions(mt, out[f]["ln_lambda"], order)
                out[f]["visited"] += v
                out[f]["skipped"] += s
                out[f]["per_head"][h][0] += v
                out[f]["per_head"][h][1] += s
    return out
