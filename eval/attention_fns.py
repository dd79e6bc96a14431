"""Attention functions plugged into transformers' AttentionInterface for the SmolLM2 evaluation.

transformers' LlamaAttention computes q, k (after RoPE) and v, then calls
`fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kw)` with
query [B, Hq, Lq, D], key/value [B, Hkv, Lk, D] (GQA heads not yet repeated), and expects
(out [B, Lq, Hq, D], weights or None). The scores are softmax(query @ key^T * scaling + mask): these
q/k are exactly what BLASST's rule sees.

Names registered here (each also gets transformers' eager 4D additive mask):
  "blasst_capture": records q/k/v of chosen layers into a Recorder, then runs eager attention.
  "blasst_torchref": a torch model of SPEC.md's prefill rule (Bm x Bn tiles, ascending or anchored,
      lambda = factor / Lk) computing softmax over the kept tiles only, which is what a skipping kernel
      returns. It is for accuracy exploration on CPU; the library's engines are the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def _eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    from transformers.models.llama.modeling_llama import eager_attention_forward
    if attention_mask is None:
        attention_mask = causal_additive_mask(query.shape[-2], key.shape[-2], query.dtype, query.device)
    return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)


def causal_additive_mask(lq: int, lk: int, dtype, device) -> torch.Tensor:
    """[1, 1, Lq, Lk], 0 where visible, dtype-min elsewhere; bottom-right aligned (row i at Lk - Lq + i)."""
    i = torch.arange(lq, device=device)[:, None] + (lk - lq)
    j = torch.arange(lk, device=device)[None, :]
    m = torch.zeros(lq, lk, dtype=dtype, device=device)
    m.masked_fill_(j > i, torch.finfo(dtype).min)
    return m[None, None]


# ---------------------------------------------------------------- capture
@dataclass
class Recorder:
    """Which layers to record and what was recorded: layer -> (q [1, Hq, L, D], k, v [1, Hkv, L, D]),
    float32 on CPU. `stop_after` ends the forward once the deepest wanted layer was recorded (the later
    layers do not change these tensors), by raising StopForward. `stats` computes per-layer attention
    statistics from the eager probabilities (costly at long L: off unless asked)."""
    layers: set[int]
    stop_after: bool = True
    stats: bool = False
    qkv: dict = field(default_factory=dict)
    layer_stats: dict = field(default_factory=dict)


class StopForward(Exception):
    pass


_RECORDER: Recorder | None = None


def set_recorder(r: Recorder | None) -> None:
    global _RECORDER
    _RECORDER = r


def _attention_stats(p: torch.Tensor, skip_rows: int = 256) -> dict:
    """p [1, Hq, L, L] probabilities (causal). Per head: mean mass on key 0 (the sink), mean mass on the
    128 most recent keys (the local window) and mean entropy normalized by ln(#visible keys), over rows
    >= skip_rows (early rows see too few keys to tell anything)."""
    p = p[0, :, skip_rows:, :].float()
    lq = p.shape[1]
    rows = torch.arange(skip_rows, skip_rows + lq)
    sink = p[:, :, 0].mean(dim=1)
    j = torch.arange(p.shape[2])
    local_mask = ((j[None, :] <= rows[:, None]) & (j[None, :] > rows[:, None] - 128)).float()
    local = (p * local_mask).sum(-1).mean(dim=1)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1) / torch.log((rows + 1).float())
    return {"sink_mass": sink.tolist(), "local128_mass": local.tolist(), "norm_entropy": ent.mean(dim=1).tolist()}


def capture_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    r = _RECORDER
    layer = module.layer_idx
    if r is not None and layer in r.layers:
        r.qkv[layer] = (query.detach().float().cpu(), key.detach().float().cpu(), value.detach().float().cpu())
    out, w = _eager(module, query, key, value, attention_mask, scaling, dropout)
    if r is not None and layer in r.layers:
        if r.stats:
            r.layer_stats[layer] = _attention_stats(w)
        if r.stop_after and len(r.qkv) == len(r.layers):
            raise StopForward()
    return out, None


# ---------------------------------------------------------------- torch model of the rule
@dataclass
class SkipConfig:
    """threshold_scale_factor (0 = dense), tile sizes, order, and the counters filled by each call:
    visited / skipped per layer (summed over heads and row blocks) for the last forward."""
    factor: float = 0.0
    bm: int = 128
    bn: int = 128
    order: str = "ascending"
    counts: dict = field(default_factory=dict)

    def sparsity(self) -> float:
        v = sum(c[0] for c in self.counts.values())
        s = sum(c[1] for c in self.counts.values())
        return s / v if v else 0.0


_SKIP = SkipConfig()


def set_skip_config(c: SkipConfig) -> None:
    global _SKIP
    _SKIP = c


def skip_tiles(scores: torch.Tensor, lk: int, lq: int, factor: float, bm: int, bn: int, order: str):
    """Decisions of SPEC section 3 for prefill groups (Bm rows of one query head), no splits.

    scores [H, Lq, Lk] fp32, already -inf where masked. Returns (skip [H, nb, nt] bool,
    visited [H, nb, nt] bool)."""
    h = scores.shape[0]
    nb, nt = -(-lq // bm), -(-lk // bn)
    s = F.pad(scores, (0, nt * bn - lk, 0, nb * bm - lq), value=float("-inf"))
    mt = s.view(h, nb, bm, nt, bn).amax(dim=-1)          # [H, nb, Bm, nt]; padded rows are all -inf
    row_exists = torch.zeros(nb * bm, dtype=torch.bool, device=scores.device)
    row_exists[:lq] = True
    row_exists = row_exists.view(1, nb, bm)                # padding rows never vote
    visited = torch.isfinite(mt).any(dim=2)                # [H, nb, nt]
    skip = torch.zeros_like(visited)
    lam = factor / lk
    if factor <= 0 or lam >= 1:
        return skip, visited
    ln_lam = math.log(lam)
    t_idx = torch.arange(nt, device=scores.device)
    first = torch.where(visited, t_idx, nt).amin(dim=-1)   # [H, nb]
    last = torch.where(visited, t_idx, -1).amax(dim=-1)
    if order == "ascending":
        anchor = t_idx[None, None, :] == first[..., None]
        m = torch.full(mt.shape[:3], float("-inf"), device=scores.device)
    elif order == "anchored":
        anchor = ((t_idx[None, None, :] == 0) | (t_idx[None, None, :] == last[..., None])) & visited
        m = torch.where(anchor[:, :, None, :], mt, float("-inf")).amax(dim=-1)  # seeded running max
    else:
        raise ValueError(order)
    for t in range(nt):
        col = mt[..., t]                                    # [H, nb, Bm]
        diff = col - m
        votes = torch.where(torch.isnan(diff), True, diff < ln_lam) | ~row_exists
        sk = votes.all(dim=-1) & visited[..., t] & ~anchor[..., t]
        skip[..., t] = sk
        m = torch.where(sk[..., None], m, torch.maximum(m, col))
    return skip, visited


def torchref_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """BLASST prefill on one batch entry: softmax over the kept tiles (skipped tiles masked out)."""
    c = _SKIP
    b, hq, lq, d = query.shape
    hkv, lk = key.shape[1], key.shape[2]
    assert b == 1, "the torch model handles one sequence at a time"
    g = hq // hkv
    k = key.repeat_interleave(g, dim=1)[0].float()
    v = value.repeat_interleave(g, dim=1)[0].float()
    s = torch.matmul(query[0].float(), k.transpose(1, 2)) * scaling     # [Hq, Lq, Lk]
    if attention_mask is None:
        vis = causal_additive_mask(lq, lk, torch.float32, s.device)[0] == 0
    elif attention_mask.dtype == torch.bool:
        vis = attention_mask[0, :, :, :lk]
    else:
        vis = attention_mask[0, :, :, :lk] > torch.finfo(attention_mask.dtype).min / 2
    s = s.masked_fill(~vis, float("-inf"))                                # [Hq, Lq, Lk]
    skip, visited = skip_tiles(s, lk, lq, c.factor, c.bm, c.bn, c.order)
    c.counts[module.layer_idx] = (int(visited.sum()), int(skip.sum()))
    if skip.any():
        nb, nt = skip.shape[1], skip.shape[2]
        full = skip[:, :, None, :, None].expand(hq, nb, c.bm, nt, c.bn).reshape(hq, nb * c.bm, nt * c.bn)
        s = s.masked_fill(full[:, :lq, :lk], float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # rows with no visible key give 0 (SPEC section 5)
    o = torch.matmul(p, v).to(query.dtype)                               # [Hq, Lq, D]
    return o.transpose(0, 1)[None].contiguous(), None


_REGISTERED = False


def register() -> None:
    """Registers the functions above (and eager masks for them) with transformers."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    for name, fn in (("blasst_capture", capture_attention), ("blasst_torchref", torchref_attention)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, eager_mask)
    _REGISTERED = True
