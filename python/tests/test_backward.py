"""Gradients of blasst.attention: over the kept tiles of the forward's decisions, against torch
autograd of fp64 attention with the same block mask, and with finite differences."""

import pytest
import torch

import blasst
from blasst import _lib
from conftest import plant_nan, structured_qkv


def kept_mask(decisions, info, phase, batch, lq, lk, hq, hkv, causal):
    """[B, Hq, Lq, Lk] bool: the keys each row attends, from the forward's decision trace."""
    bm, bn = info.block_m, info.block_n
    tiles = -(-lk // bn)
    decode = phase == "decode"
    g = hq // hkv
    # decode: chunks of block_m (head, row) pairs of a KV head, head-major (block_m 0: one group)
    chunks = (-(-(g * lq) // bm) if bm else 1) if decode else 0
    groups = hkv * chunks if decode else hq * -(-lq // bm)
    trace = decisions[: batch * groups * tiles].view(batch, groups, tiles)
    h = torch.arange(hq)[:, None]
    i = torch.arange(lq)[None, :]
    if decode:
        pair = (h % g) * lq + i
        group = (h // g) * chunks + (pair // bm if bm else 0 * pair)              # [Hq, Lq]
    else:
        group = h * -(-lq // bm) + i // bm
    tile = torch.arange(lk) // bn
    mask = trace[:, group][..., tile] == _lib.TILE_KEPT                          # [B, Hq, Lq, Lk]
    if causal:
        mask &= torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + lk - lq
    return mask


def reference_attention(q, k, v, mask, scale):
    """fp64 attention of q [B, Lq, Hq, D] over the masked keys; out [B, Lq, Hq, Dv], lse [B, Lq, Hq]."""
    g = q.shape[2] // k.shape[2]
    qd = q.transpose(1, 2)
    kd = k.transpose(1, 2).repeat_interleave(g, dim=1)
    vd = v.transpose(1, 2).repeat_interleave(g, dim=1)
    s = (qd @ kd.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.where(mask, torch.exp(s - lse.unsqueeze(-1)), 0.0)
    return (p @ vd).transpose(1, 2), lse.transpose(1, 2)


def grads(fn, *tensors):
    for t in tensors:
        t.grad = None
    fn().backward()
    return [t.grad.clone() for t in tensors]


CASES = [  # phase, batch, Lq, Lk, Hq, Hkv, D, causal, factor
    ("prefill", 2, 70, 70, 4, 2, 32, True, 8.0),
    ("prefill", 1, 40, 130, 6, 3, 16, False, 5.0),
    ("prefill", 2, 33, 97, 4, 4, 32, True, 0.0),
    ("decode", 3, 2, 150, 8, 2, 32, True, 6.0),
    ("decode", 2, 3, 150, 16, 1, 32, True, 6.0),  # MLA-like: 48 pairs of one KV head in 3 chunks of 16
    ("prefill", 1, 50, 90, 4, 1, 16, True, 5.0),  # MQA, one entry: the rows split across threads
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}x{c[3]}-sf{c[8]}" for c in CASES])
def test_gradients_equal_the_fp64_block_masked_backward(case):
    phase, batch, lq, lk, hq, hkv, d, causal, factor = case
    q, k, v = structured_qkv(batch, lq, lk, hq, hkv, d, spread=1.0, seed=lk)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    dout = torch.randn(batch, lq, hq, d, generator=torch.Generator().manual_seed(1))
    dlse = torch.randn(batch, lq, hq, generator=torch.Generator().manual_seed(2))
    kw = dict(phase=phase, causal=causal, threshold_scale_factor=factor, block_m=16, block_n=16)

    def loss():
        out, lse = blasst.attention(q, k, v, **kw)
        return (out * dout).sum() + (lse * dlse).sum()

    got = grads(loss, q, k, v)
    # the mask of the forward's own decisions (replayed: the same inputs decide the same tiles)
    _, _, stats, decisions, info = blasst.run_with_decisions(q.detach(), k.detach(), v.detach(), phase=phase,
                                                             causal=causal, threshold_scale_factor=factor,
                                                             block_m=16, block_n=16)
    if factor:
        assert stats[:, 1].sum() > 0, "the case must skip tiles"
    mask = kept_mask(decisions, info, phase, batch, lq, lk, hq, hkv, causal)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))

    def ref_loss():
        out, lse = reference_attention(qd, kd, vd, mask, d ** -0.5)
        return (out * dout.double()).sum() + (lse.nan_to_num(0.0, neginf=0.0) * dlse.double()).sum()

    want = grads(ref_loss, qd, kd, vd)
    for name, a, b in zip("qkv", got, want):
        # fp64 inside, rounded once to the operands' fp32
        assert (a.double() - b).abs().max() <= 2e-6 * (1 + b.abs().max()), name


def test_skipped_tiles_receive_no_gradient():
    # a dominant sink: every tile after the first is skipped by every group, so keys past it get
    # exactly zero dk and dv (they took no part in the forward)
    q, k, v = structured_qkv(1, 64, 256, 2, 1, 32, spread=0.3, sink=40.0)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, _, stats = blasst.attention(q, k, v, causal=False, threshold_scale_factor=50.0, block_m=64, block_n=64,
                                     return_stats=True)
    assert stats[:, 1].sum() == stats[:, 0].sum() - 2  # one kept tile per group (the anchor)
    out.sum().backward()
    assert k.grad[:, 64:].abs().sum() == 0 and v.grad[:, 64:].abs().sum() == 0
    assert v.grad[:, :64].abs().sum() > 0


def test_dense_gradients_match_finite_differences():
    q, k, v = structured_qkv(1, 9, 20, 2, 1, 8, spread=1.0, seed=5)
    q, k, v = (t.double().float().requires_grad_() for t in (q, k, v))
    w = torch.randn(1, 9, 2, 8, generator=torch.Generator().manual_seed(3))

    def f(q_, k_, v_):
        return (blasst.attention(q_, k_, v_, causal=True)[0] * w).sum()

    got = grads(lambda: f(q, k, v), q, k, v)
    eps = 1e-2
    g = torch.Generator().manual_seed(4)
    for t, grad in zip((q, k, v), got):
        direction = torch.randn(t.shape, generator=g)
        with torch.no_grad():
            plus = f(*[x + eps * direction if x is t else x for x in (q, k, v)])
            minus = f(*[x - eps * direction if x is t else x for x in (q, k, v)])
        numeric = (plus - minus) / (2 * eps)
        analytic = (grad * direction).sum()
        assert abs(float(numeric - analytic)) <= 2e-3 * (1 + abs(float(analytic)))


def test_ragged_and_padded_layouts_give_the_gradients_of_their_entries():
    lens = [30, 0, 45]
    qs = [structured_qkv(1, n, n, 4, 2, 16, spread=1.0, seed=i) if n else
          (torch.zeros(1, 0, 4, 16), torch.zeros(1, 0, 2, 16), torch.zeros(1, 0, 2, 16)) for i, n in enumerate(lens)]
    kw = dict(threshold_scale_factor=4.0, block_m=16, block_n=16, phase="prefill")
    # each entry on its own
    want = []
    for q, k, v in qs:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        if q.shape[1]:
            blasst.attention(q, k, v, **kw)[0].sum().backward()
            want.append((q.grad[0], k.grad[0], v.grad[0]))
        else:
            want.append(None)
    cu = torch.tensor([0, 30, 30, 75], dtype=torch.int32)
    q, k, v = (torch.cat([x[j][0].detach() for x in qs]).requires_grad_() for j in range(3))
    blasst.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, **kw)[0].sum().backward()
    for b, (lo, hi) in enumerate([(0, 30), (30, 30), (30, 75)]):
        if want[b] is None:
            continue
        for got, ref in zip((q.grad[lo:hi], k.grad[lo:hi], v.grad[lo:hi]), want[b]):
            assert torch.allclose(got, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_the_torch_backward_of_device_tensors_equals_the_engine_backward(phase):
    # the formulas device tensors go through, run here on host tensors against blasst_backward
    from blasst import _core, autograd

    lq = 40 if phase == "prefill" else 3
    q, k, v = structured_qkv(2, lq, 120, 4, 2, 16, spread=1.0, seed=9)
    seqlens_k = torch.tensor([120, 77], dtype=torch.int32)
    dout = torch.randn(2, lq, 4, 16, generator=torch.Generator().manual_seed(6))
    dlse = torch.randn(2, lq, 4, generator=torch.Generator().manual_seed(7))
    code = _lib.PHASE_PREFILL if phase == "prefill" else _lib.PHASE_DECODE
    # decode: chunks of 4 of the 6 (head, row) pairs of a KV head, so two groups per KV head
    out, _, stats, decisions, info = _core.run(code, q, k, v, seqlens_k=seqlens_k, threshold_scale_factor=6.0,
                                               block_m=16 if phase == "prefill" else 4, block_n=16,
                                               return_stats=True, return_decisions=True)
    assert stats[:, 1].sum() > 0
    engine = _core.backward(code, q, k, v, out, dout, dlse, decisions, info, seqlens_k=seqlens_k)
    torch_grads = autograd.torch_backward(code, q, k, v, dout, dlse, decisions, info, seqlens_k=seqlens_k)
    for name, a, b in zip("qkv", engine, torch_grads):
        assert (a - b).abs().max() <= 1e-4 * (1 + a.abs().max()), name


@pytest.mark.parametrize("where", ["skipped value", "query row", "key"])
def test_the_torch_backward_puts_nan_where_the_engine_backward_does(where):
    # NaN reaches the gradients of the (row, key) pairs a row attends only (causal): a NaN value in a
    # tile that every group skipped reaches nothing; a NaN query row not the dk, dv of the keys beside
    # its diagonal that it does not see; a NaN key not the dq of the rows that do not see it
    from blasst import _core, autograd

    q, k, v = structured_qkv(1, 64, 96, 2, 1, 16, spread=1.0, sink=16.0, seed=5)
    kw = dict(causal=True, threshold_scale_factor=3.0, block_m=16, block_n=32)
    # row 36 sees keys up to 68 (tile 64-95 holds keys it does not see); key 90 is seen by rows 58 on
    plant_nan(where, q, k, v, row=36, key=90, **kw)
    out, _, _, decisions, info = _core.run(_lib.PHASE_PREFILL, q, k, v, return_decisions=True, **kw)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    engine = _core.backward(_lib.PHASE_PREFILL, q, k, v, out, dout, None, decisions, info, causal=True)
    formulas = autograd.torch_backward(_lib.PHASE_PREFILL, q, k, v, dout, None, decisions, info, causal=True)
    for name, a, b in zip("qkv", engine, formulas):
        nan = torch.isnan(a)
        assert not nan.all(), name
        assert torch.equal(nan, torch.isnan(b)), name
        assert (a - b)[~nan].abs().max() <= 1e-4 * (1 + a[~nan].abs().max()), name
    assert any(torch.isnan(a).any() for a in engine) == (where != "skipped value")


@pytest.mark.parametrize("factor", [0.0, 3.0])
def test_a_nan_output_gradient_reaches_dv_of_the_keys_its_row_attends(factor):
    # dv = P^T dO: a NaN in row 36 of dO reaches dv of every key row 36 attends (the sink's tile, and
    # with factor 0 its diagonal tile, where keys past 68 share the tile but are not seen), at the
    # same element, as in the CPU engine; nowhere else
    from blasst import _core, autograd

    q, k, v = structured_qkv(1, 64, 96, 2, 1, 16, spread=1.0, sink=16.0, seed=5)
    kw = dict(causal=True, threshold_scale_factor=factor, block_m=16, block_n=32)
    out, _, _, decisions, info = _core.run(_lib.PHASE_PREFILL, q, k, v, return_decisions=True, **kw)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    dout[0, 36, 1, 3] = float("nan")
    engine = _core.backward(_lib.PHASE_PREFILL, q, k, v, out, dout, None, decisions, info, causal=True)
    formulas = autograd.torch_backward(_lib.PHASE_PREFILL, q, k, v, dout, None, decisions, info, causal=True)
    seen = kept_mask(decisions, info, "prefill", 1, 64, 96, 2, 1, True)[0, 1, 36]      # [Lk]
    assert torch.equal(torch.isnan(engine[2][0, :, 0, 3]), seen)  # the reference itself, as described
    assert int(seen.sum()) == (69 if factor == 0.0 else 32)
    for name, a, b in zip("qkv", engine, formulas):
        nan = torch.isnan(a)
        assert torch.equal(nan, torch.isnan(b)), name
        assert (a - b)[~nan].abs().max() <= 1e-4 * (1 + a[~nan].abs().max()), name


@pytest.mark.parametrize("fq", [128, 64])
@pytest.mark.parametrize("bm,bn,lq,lk,causal", [(128, 128, 256, 384, True), (64, 48, 300, 421, True),
                                                (16, 176, 130, 500, False), (1, 64, 3, 700, True),
                                                (256, 64, 200, 100, True), (64, 128, 333, 517, True)])
def test_flex_block_lists_cover_exactly_the_kept_elements(bm, bn, lq, lk, causal, fq):
    # the 128 x 128 block lists of the FlexAttention backward, built at block level, against the
    # element mask they stand for: a block is listed iff it holds a kept, visible (row, key), and
    # listed as full iff every one of its 128 x 128 pairs exists, is visible and is kept
    from blasst import autograd

    gen = torch.Generator().manual_seed(bm + bn + lq)
    kept = torch.rand(2, 3, -(-lq // bm), -(-lk // bn), generator=gen) < 0.6
    kept[0, 0] = True  # whole rows of kept tiles give full blocks
    partial, full = autograd.flex_block_lists(kept, bm, bn, lq, lk, causal, fq, 128)
    rows, keys = torch.arange(lq), torch.arange(lk)
    element = kept[:, :, rows // bm][..., keys // bn]                            # [B, H, Lq, Lk]
    if causal:
        element &= keys[None, :] <= rows[:, None] + lk - lq
    qb, kb = -(-lq // fq), -(-lk // 128)
    padded = torch.zeros(2, 3, qb * fq, kb * 128, dtype=torch.bool)
    padded[:, :, :lq, :lk] = element
    blocks = padded.view(2, 3, qb, fq, kb, 128)
    assert torch.equal(partial | full, blocks.any(dim=5).any(dim=3))
    assert not (partial & full).any()
    assert torch.equal(full, blocks.all(dim=5).all(dim=3))
    assert full.any() or lq < fq or lk < 128


@pytest.mark.parametrize("q_block", [128, 64])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("causal", [True, False])
def test_the_flex_block_mask_attends_the_kept_tiles(phase, causal, q_block):
    # the BlockMask the FlexAttention backward differentiates through, checked by FlexAttention's
    # forward on the CPU (its backward runs on GPUs only) against fp64 attention over the kept tiles:
    # tile edges off the 128 grid, odd lengths, GQA and decode's chunked groups
    pytest.importorskip("torch.nn.attention.flex_attention")
    from torch.nn.attention.flex_attention import flex_attention

    from blasst import _core, autograd

    lq = 200 if phase == "prefill" else 2
    batch, lk, hq, hkv, d = 1, 333, 4, 2, 16
    q, k, v = structured_qkv(batch, lq, lk, hq, hkv, d, spread=1.0, seed=3)
    code = _lib.PHASE_PREFILL if phase == "prefill" else _lib.PHASE_DECODE
    _, _, stats, decisions, info = _core.run(code, q, k, v, causal=causal, threshold_scale_factor=8.0,
                                             block_m=48 if phase == "prefill" else 3, block_n=80,
                                             return_stats=True, return_decisions=True)
    assert stats[:, 1].sum() > 0
    block_mask = autograd.flex_block_mask(code, decisions, info, batch, hq, hkv, lq, lk, causal, q_block)
    got = flex_attention(*(t.transpose(1, 2) for t in (q, k, v)), block_mask=block_mask, enable_gqa=True)
    mask = kept_mask(decisions, info, phase, batch, lq, lk, hq, hkv, causal)
    want, _ = reference_attention(q.double(), k.double(), v.double(), mask, d ** -0.5)
    assert (got.transpose(1, 2).double() - want).abs().max() <= 1e-5


def test_the_device_backward_is_chosen_by_blasst_gpu_backward(monkeypatch):
    # auto: the Triton kernels where they apply (prefill, dense layout, 16-bit), FlexAttention where
    # it applies (dense layout, 16-bit, Dqk = Dv in 64/128, no LSE gradient), the torch formulas
    # elsewhere; flex and triton: an error where they do not apply
    from types import SimpleNamespace

    from blasst import _triton_backward, autograd

    prefill, decode = blasst._lib.PHASE_PREFILL, blasst._lib.PHASE_DECODE
    info = SimpleNamespace(block_m=64, block_n=128)
    q = torch.zeros(1, 8, 4, 64, dtype=torch.bfloat16)
    none = dict(cu_seqlens_q=None, cu_seqlens_k=None, seqlens_q=None, seqlens_k=None)
    ragged = {**none, "seqlens_k": torch.tensor([8], dtype=torch.int32)}

    def choose(q=q, k=q, v=q, dlse=None, lengths=none, phase=prefill, info=info):
        return autograd.device_backward(phase, q, k, v, dlse, lengths, info)

    monkeypatch.setenv("BLASST_GPU_BACKWARD", "auto")
    fused = "triton" if _triton_backward.available() else "flex"
    assert choose() == fused
    assert choose(dlse=torch.ones(1, 8, 4)) == ("triton" if fused == "triton" else "torch")
    assert choose(phase=decode) == "flex"
    assert choose(info=SimpleNamespace(block_m=8, block_n=64)) == "flex"
    assert choose(lengths=ragged) == ("triton" if _triton_backward.available() else "torch")  # (no flex)
    assert choose(q.float(), q.float(), q.float()) == "torch"
    assert choose(q[..., :48], q[..., :48], q[..., :48]) == "torch"
    assert choose(info=SimpleNamespace(block_m=64, block_n=0)) == "flex"  # a forward that attended nothing
    monkeypatch.setattr(_triton_backward, "available", lambda: False)  # no Triton
    assert choose() == "flex"
    assert choose(lengths=ragged) == "torch"
    assert choose(dlse=torch.ones(1, 8, 4)) == "torch"
    assert choose(q, q[:, :0], q[:, :0]) == "torch"
    monkeypatch.setattr(autograd, "_flex_available", lambda: False)  # a torch without FlexAttention
    assert choose() == "torch"
    monkeypatch.undo()
    monkeypatch.setenv("BLASST_GPU_BACKWARD", "torch")
    assert choose() == "torch"
    monkeypatch.setenv("BLASST_GPU_BACKWARD", "flex")
    assert choose(dlse=torch.zeros(1, 8, 4)) == "flex"
    with pytest.raises(NotImplementedError, match="dense layouts"):
        choose(lengths=ragged)
    monkeypatch.setenv("BLASST_GPU_BACKWARD", "triton")
    if _triton_backward.available():
        assert choose(dlse=torch.ones(1, 8, 4)) == "triton"  # the LSE gradient enters D
        assert choose(q[..., :32], q[..., :32], q) == "triton"  # Dqk != Dv
    if _triton_backward.available():
        assert choose(lengths=ragged) == "triton"
    for bad in (dict(phase=decode), dict(q=q.float(), k=q.float(), v=q.float()),
                dict(q=q[..., :48], k=q[..., :48], v=q[..., :48]), dict(info=SimpleNamespace(block_m=8, block_n=64))):
        with pytest.raises(NotImplementedError, match="BLASST_GPU_BACKWARD=triton takes prefill"):
            choose(**bad)
    monkeypatch.setenv("BLASST_GPU_BACKWARD", "fast")
    with pytest.raises(ValueError, match="expected auto, torch, flex or triton"):
        choose()
    monkeypatch.setenv("BLASST_FLEX_Q_BLOCK", "32")
    with pytest.raises(ValueError, match="expected 64 or 128"):
        autograd.flex_q_block()
    for bad in ("32,128,64", "32,64,64,64,4,3,8"):
        monkeypatch.setenv("BLASST_TRITON_BWD_BLOCKS", bad)
        with pytest.raises(ValueError, match="expected six or eight positive ints"):
            _triton_backward.block_sizes(64, 128)
    # six: both kernels in one launch shape; eight: kernel 2's own; blocks fitted to the tiles
    monkeypatch.setenv("BLASST_TRITON_BWD_BLOCKS", "32,64,64,32,4,3")
    assert _triton_backward.block_sizes(64, 128) == (32, 64, 64, 32, 4, 3, 4, 3)
    monkeypatch.setenv("BLASST_TRITON_BWD_BLOCKS", "32,64,128,32,4,3,8,2")
    assert _triton_backward.block_sizes(64, 128) == (32, 64, 64, 32, 4, 3, 8, 2)


def test_the_backward_falls_back_when_the_triton_kernels_do_not_build(monkeypatch):
    # a Triton or GPU that cannot build the kernels: a warning, and the backward that runs without them
    from blasst import _core, _triton_backward, autograd

    if not _triton_backward.available():
        pytest.skip("Triton is not installed")
    from triton.runtime.errors import OutOfResources

    q, k, v = structured_qkv(1, 40, 90, 2, 1, 16, spread=1.0, seed=2)
    _, lse, _, decisions, info = _core.run(_lib.PHASE_PREFILL, q, k, v, threshold_scale_factor=2.0, block_m=16,
                                           block_n=16, return_decisions=True)
    out = _core.run(_lib.PHASE_PREFILL, q, k, v, threshold_scale_factor=2.0, block_m=16, block_n=16)[0]
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))

    def no_build(*args, **kwargs):
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(autograd, "device_backward", lambda *args: "triton")
    monkeypatch.setattr(autograd, "triton_backward", no_build)
    lengths = dict(cu_seqlens_q=None, cu_seqlens_k=None, seqlens_q=None, seqlens_k=None)
    common = dict(max_seqlen_q=0, max_seqlen_k=0, scale=0.0, causal=True, **lengths)
    with pytest.warns(RuntimeWarning, match="did not build"):
        got = autograd._device_grads(_lib.PHASE_PREFILL, q, k, v, out, dout, lse, None, decisions, info, lengths,
                                     common)
    want = autograd.torch_backward(_lib.PHASE_PREFILL, q, k, v, dout, None, decisions, info)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
