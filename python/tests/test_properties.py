"""Property test: blasst.attention at threshold 0 is exact attention, for any layout it accepts.

Hypothesis draws the layout (dense, padded with seqlens, ragged with cu_seqlens, paged with a
shuffled block table), how the tensors are viewed (contiguous, transposed from [B, H, L, D],
slices of longer buffers whose unused elements are NaN), GQA ratio, lengths 0-300, head dims
(Dqk != Dv included), dtype, causality, scale and phase. The reference is torch's SDPA in fp64 on
the same (rounded) inputs per batch entry, with a bottom-right causal mask; rows that see no key
are O = 0, LSE = -inf (SPEC section 5). A NaN read from outside a view shows as a mismatch.
"""

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import blasst  # noqa: E402

TOL = {torch.float32: 3e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def reference(q, k, v, causal, scale):
    """q [Lq, Hq, D], k [Lk, Hkv, D], v [Lk, Hkv, Dv] -> out [Lq, Hq, Dv] from torch's SDPA in fp64
    (rows that see no key: 0, where SDPA gives NaN), lse [Lq, Hq] in fp64 (-inf for those rows)."""
    lq, hq, _ = q.shape
    lk, hkv, dv = v.shape
    if lq == 0:
        return torch.zeros(0, hq, dv, dtype=torch.float64), torch.zeros(0, hq, dtype=torch.float64)
    g = hq // hkv
    qd = q.double().transpose(0, 1)                                   # [Hq, Lq, D]
    kd = k.double().transpose(0, 1).repeat_interleave(g, dim=0)       # [Hq, Lk, D]
    vd = v.double().transpose(0, 1).repeat_interleave(g, dim=0)       # [Hq, Lk, Dv]
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    if causal:  # bottom-right aligned, as the engines (SDPA's is_causal is top-left)
        allowed = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
    out = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, attn_mask=allowed, scale=scale)
    seen = allowed.any(dim=-1)                                        # [Lq]
    out = torch.where(seen[None, :, None], out, torch.zeros_like(out)) if lk else torch.zeros(hq, lq, dv,
                                                                                                 dtype=torch.float64)
    s = ((qd @ kd.transpose(-1, -2)) * scale).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                  # -inf where no key is visible
    return out.transpose(0, 1), lse.transpose(0, 1)


def place(x: torch.Tensor, how: str, seed: int) -> torch.Tensor:
    """x [N0, N1, H, D] (or [T, H, D]) as the view `how`, holding the same values."""
    if how == "contiguous":
        return x
    if how == "transposed":  # what transformers hands over: [B, H, L, D] viewed as [B, L, H, D]
        return x.transpose(-3, -2).contiguous().transpose(-3, -2)
    # a slice of a longer, wider buffer whose other elements are NaN
    g = torch.Generator().manual_seed(seed)
    pad = [int(torch.randint(1, 4, (1,), generator=g)) for _ in range(x.dim())]
    big = torch.full([n + p for n, p in zip(x.shape, pad)], float("nan"), dtype=x.dtype)
    off = [int(torch.randint(0, p + 1, (1,), generator=g)) for p in pad]
    view = big[tuple(slice(o, o + n) for o, n in zip(off, x.shape))]
    view.copy_(x)
    return view


@st.composite
def problems(draw):
    layout = draw(st.sampled_from(["dense", "padded", "ragged", "paged"]))
    batch = draw(st.integers(1, 3))
    hkv = draw(st.integers(1, 3))
    hq = hkv * draw(st.sampled_from([1, 2, 4]))
    dqk = draw(st.sampled_from([8, 16, 32, 64]))
    dv = draw(st.sampled_from([dqk, 16]))
    lq_max = draw(st.integers(0, 300))
    lk_max = draw(st.integers(0, 300))
    if layout == "dense":
        lens_q, lens_k = [lq_max] * batch, [lk_max] * batch
    else:
        lens_q = draw(st.lists(st.integers(0, lq_max), min_size=batch, max_size=batch))
        lens_k = draw(st.lists(st.integers(0, lk_max), min_size=batch, max_size=batch))
    return dict(
        layout=layout, batch=batch, hq=hq, hkv=hkv, dqk=dqk, dv=dv, lens_q=lens_q, lens_k=lens_k,
        lq_max=lq_max, lk_max=lk_max,
        dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
        causal=draw(st.booleans()),
        scale=draw(st.sampled_from([None, 0.05, 0.3])),
        phase=draw(st.sampled_from(["auto", "prefill", "decode"])),
        order=draw(st.sampled_from(["ascending", "anchored"])),
        view=draw(st.sampled_from(["contiguous", "transposed", "slice"])),
        page=draw(st.sampled_from([1, 5, 16, 32])),
        block_n=draw(st.sampled_from([0, 16, 64])),
        seed=draw(st.integers(0, 2**16)),
    )


def build(p):
    """Inputs of the drawn layout plus per-entry (q, k, v) for the reference."""
    g = torch.Generator().manual_seed(p["seed"])
    dt = p["dtype"]

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    entries = [(rnd(lq, p["hq"], p["dqk"]), rnd(lk, p["hkv"], p["dqk"]), rnd(lk, p["hkv"], p["dv"]))
               for lq, lk in zip(p["lens_q"], p["lens_k"])]
    kw = {}
    layout, lq_max, lk_max = p["layout"], p["lq_max"], p["lk_max"]
    if layout in ("dense", "padded", "paged"):
        q = torch.zeros(p["batch"], lq_max, p["hq"], p["dqk"], dtype=dt)
        for b, (qe, _, _) in enumerate(entries):
            q[b, : qe.shape[0]] = qe
        if layout != "dense":
            kw["seqlens_q"] = torch.tensor(p["lens_q"], dtype=torch.int32)
    else:
        q = torch.cat([e[0] for e in entries])
        kw["cu_seqlens_q"] = torch.tensor([0] + list(torch.tensor(p["lens_q"]).cumsum(0)), dtype=torch.int32)
    if layout in ("dense", "padded"):
        k = torch.zeros(p["batch"], lk_max, p["hkv"], p["dqk"], dtype=dt)
        v = torch.zeros(p["batch"], lk_max, p["hkv"], p["dv"], dtype=dt)
        for b, (_, ke, ve) in enumerate(entries):
            k[b, : ke.shape[0]], v[b, : ve.shape[0]] = ke, ve
        if layout == "padded":
            kw["seqlens_k"] = torch.tensor(p["lens_k"], dtype=torch.int32)
    elif layout == "ragged":
        k = torch.cat([e[1] for e in entries])
        v = torch.cat([e[2] for e in entries])
        kw["cu_seqlens_k"] = torch.tensor([0] + list(torch.tensor(p["lens_k"]).cumsum(0)), dtype=torch.int32)
    else:
        page = p["page"]
        per_entry = max(1, math.ceil(lk_max / page))
        num_pages = per_entry * p["batch"] + 1
        perm = torch.randperm(num_pages, generator=g)[: per_entry * p["batch"]]
        table = perm.view(p["batch"], per_entry).to(torch.int32)
        k = torch.full((num_pages, page, p["hkv"], p["dqk"]), float("nan"), dtype=dt)
        v = torch.full((num_pages, page, p["hkv"], p["dv"]), float("nan"), dtype=dt)
        for b, (_, ke, ve) in enumerate(entries):
            for t in range(ke.shape[0]):
                k[table[b, t // page], t % page], v[table[b, t // page], t % page] = ke[t], ve[t]
        kw.update(block_table=table, seqlens_k=torch.tensor(p["lens_k"], dtype=torch.int32))
    seed = p["seed"]
    q, k, v = place(q, p["view"], seed), place(k, p["view"], seed + 1), place(v, p["view"], seed + 2)
    return q, k, v, kw, entries


@settings(max_examples=int(__import__("os").environ.get("BLASST_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(problems())
def test_threshold_zero_is_exact_attention(p):
    q, k, v, kw, entries = build(p)
    scale = p["scale"] if p["scale"] is not None else p["dqk"] ** -0.5
    out, lse = blasst.attention(q, k, v, causal=p["causal"], scale=p["scale"], threshold_scale_factor=0.0,
                                phase=p["phase"], order=p["order"], block_n=p["block_n"], **kw)
    assert out.dtype == p["dtype"] and lse.dtype == torch.float32
    tol = TOL[p["dtype"]]
    ragged = p["layout"] == "ragged"
    row = 0
    for b, (qe, ke, ve) in enumerate(entries):
        lq = qe.shape[0]
        ref_out, ref_lse = reference(qe, ke, ve, p["causal"], scale)
        got_out = out[row: row + lq] if ragged else out[b, :lq]
        got_lse = lse[row: row + lq] if ragged else lse[b, :lq]
        if lq:
            assert (got_out.double() - ref_out).abs().max().item() <= tol
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(got_lse), finite)  # -inf exactly where no key is visible
        if finite.any():
            assert (got_lse.double()[finite] - ref_lse[finite]).abs().max().item() <= 1e-4 * (1 + ref_lse.abs().max())
        if not ragged:  # padded rows past the entry's length: O = 0, LSE = -inf
            assert out[b, lq:].abs().sum() == 0 and torch.isneginf(lse[b, lq:]).all()
        row += lq


@settings(max_examples=int(__import__("os").environ.get("BLASST_HYPOTHESIS_EXAMPLES", "60")) // 2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(problems(), st.booleans(), st.integers(0, 2**16))
def test_fp8_kv_cache_is_exact_attention_of_the_dequantized_cache(p, per_head, seed):
    # K and V stored as e4m3 with their scales, in every layout: attention of the dequantized
    # cache (stored value x scale), which is what the engine must compute
    p = dict(p, dtype=torch.float32, view="contiguous" if p["view"] == "transposed" else p["view"])
    q, k, v, kw, entries = build(p)
    g = torch.Generator().manual_seed(seed)
    count = p["hkv"] if per_head else 1
    ks, vs = torch.rand(count, generator=g) + 0.25, torch.rand(count, generator=g) + 0.25
    per = (lambda s: s.view(-1, 1)) if per_head else (lambda s: s)  # broadcast over [..., Hkv, D]
    k8, v8 = (k / per(ks)).to(torch.float8_e4m3fn), (v / per(vs)).to(torch.float8_e4m3fn)
    scale = p["scale"] if p["scale"] is not None else p["dqk"] ** -0.5
    out, lse = blasst.attention(q, k8, v8, k_scale=ks, v_scale=vs, causal=p["causal"], scale=p["scale"],
                                phase=p["phase"], order=p["order"], block_n=p["block_n"], **kw)
    ragged = p["layout"] == "ragged"
    row = 0
    for b, (qe, ke, ve) in enumerate(entries):
        lq = qe.shape[0]
        kd = (ke / per(ks)).to(torch.float8_e4m3fn).float() * per(ks)
        vd = (ve / per(vs)).to(torch.float8_e4m3fn).float() * per(vs)
        ref_out, ref_lse = reference(qe, kd, vd, p["causal"], scale)
        got_out = out[row: row + lq] if ragged else out[b, :lq]
        if lq:
            assert (got_out.double() - ref_out).abs().max().item() <= TOL[torch.float32] * (1 + ref_out.abs().max())
        row += lq
