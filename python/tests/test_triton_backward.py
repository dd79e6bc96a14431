"""blasst's Triton backward kernels (BLASST_GPU_BACKWARD=triton), compiled on a GPU or run on the
CPU by Triton's interpreter (TRITON_INTERPRET=1, which conftest.py sets where there is no GPU; fp16:
the interpreter has no bf16), against the CPU engine's fp64 backward over the same decisions:
gradients to the error of fp16 rounding, NaN at the same places, nothing for skipped tiles."""

import pytest
import torch

from blasst import _core, _lib, autograd
from conftest import plant_nan, rounded_backward, structured_qkv

_triton_backward = pytest.importorskip("blasst._triton_backward")
if not _triton_backward.available():
    pytest.skip("Triton is not installed", allow_module_level=True)

PREFILL = _lib.PHASE_PREFILL


@pytest.fixture(autouse=True, params=["recompute", "recompute-split", "atomic-split"])
def dq_path(request, monkeypatch):
    """Every test on both dq paths: kernel 2 (recompute) and atomics from kernel 1; and with kernel
    1's lists split in three (BLASST_TRITON_BWD_SPLIT), so that the small problems here have both
    lists that one program walks and lists that several share."""
    path = request.param.split("-")[0]
    monkeypatch.setenv("BLASST_TRITON_BWD_DQ", path)
    monkeypatch.setenv("BLASST_TRITON_BWD_SPLIT", "3" if request.param.endswith("split") else "1")
    # D = rowsum(O dO) and the block lists by torch in the first, by Triton kernels in the other two
    monkeypatch.setenv("BLASST_TRITON_BWD_ROWDOT", "0" if request.param == "recompute" else "1")
    monkeypatch.setenv("BLASST_TRITON_BWD_PLAN", "torch" if request.param == "recompute" else "kernel")
    return path


if not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU, and Triton's interpreter was not chosen (conftest.py does)", allow_module_level=True)


def run_both(q, k, v, *, causal, factor, block_m=16, block_n=32, dlse=False, seed=1):
    """(triton dq, dk, dv), (CPU engine dq, dk, dv) and the forward's stats for one prefill call."""
    out, lse, stats, decisions, info = _core.run(PREFILL, q, k, v, causal=causal, threshold_scale_factor=factor,
                                                 block_m=block_m, block_n=block_n, return_stats=True,
                                                 return_decisions=True)
    gen = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=gen).to(out.dtype)
    dl = torch.randn(lse.shape, generator=gen) if dlse else None
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU, else the interpreter
    moved = [None if t is None else t.to(dev) for t in (q, k, v, out, dout, lse, dl, decisions)]
    got = [g.cpu() for g in autograd.triton_backward(PREFILL, *moved, info, causal=causal)]
    want = _core.backward(PREFILL, q, k, v, out, dout, dl, decisions, info, causal=causal, scale=0.0,
                          max_seqlen_q=0, max_seqlen_k=0)
    kept = autograd.kept_tiles(PREFILL, decisions, info, q.shape[0], q.shape[2], k.shape[2], q.shape[1], k.shape[1])
    rounded = rounded_backward(q, k, v, out, dout, lse, dl, kept, info.block_m, info.block_n, causal)
    # the kernels' own error may exceed the rounding of P and dS alone by their fp32 sums and fp16 scores
    tolerance = [1.5 * rel_error(r, w[:1]) + 1e-3 for r, w in zip(rounded, want)]
    return got, want, stats, tolerance


def rel_error(got, want):
    finite = torch.isfinite(want) & torch.isfinite(got.double())
    if not finite.any():
        return 0.0
    return float((got.double() - want.double())[finite].abs().max() / want.double()[finite].abs().max().clamp(min=1e-9))


def qkv(batch, lq, lk, hq, hkv, dqk, dv, seed=0, sink=8.0):
    """fp16 inputs with an attention sink at key 0, so that later tiles fall under the threshold."""
    return structured_qkv(batch, lq, lk, hq, hkv, dqk, dv, dtype=torch.float16, sink=sink, seed=seed)


@pytest.mark.parametrize("shape,causal,factor,dlse", [
    ((1, 40, 70, 2, 1, 16, 16), True, 0.0, False),      # dense, Lq < Lk (bottom-right causal)
    ((2, 100, 77, 4, 2, 32, 16), False, 3.0, True),     # GQA, Dqk != Dv, odd lengths, an LSE gradient
    ((1, 90, 130, 4, 1, 32, 32), True, 3.0, False),     # MQA, skipping
    ((1, 130, 50, 2, 2, 16, 32), True, 2.0, False),     # Lq > Lk: rows that see no key
])
def test_triton_gradients_equal_the_cpu_engine_backward(shape, causal, factor, dlse):
    q, k, v = qkv(*shape)
    got, want, stats, tol = run_both(q, k, v, causal=causal, factor=factor, dlse=dlse)
    if factor:
        assert stats[:, 1].sum() > 0, "the case should skip some tiles"
    for name, g, w, t in zip(("dq", "dk", "dv"), got, want, tol):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert torch.equal(torch.isnan(g), torch.isnan(w)), name
        assert rel_error(g, w) < t, (name, rel_error(g, w), t)


def test_triton_gradients_of_a_call_that_attends_nothing_are_zero():
    # no keys: every gradient is 0 (the outputs are not left as allocated); no rows: nothing to fill
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.randn(1, 5, 2, 16, dtype=torch.float16, device=dev)
    k = v = torch.randn(1, 0, 1, 16, dtype=torch.float16, device=dev)
    out, lse = torch.zeros_like(q), torch.full((1, 5, 2), float("-inf"), device=dev)
    kept = torch.zeros(1, 2, 1, 0, dtype=torch.bool, device=dev)
    dq, dk, dv = _triton_backward.backward(q, k, v, out, torch.ones_like(q), lse, None, kept, 16, 32, causal=False)
    assert dq.shape == q.shape and not dq.any() and dk.shape == k.shape and dv.shape == v.shape


def test_triton_blocks_split_a_decision_tile_and_keep_it_whole():
    # decision tiles of 64 x 64 under kernel blocks of 32 x 32 (BLASST_TRITON_BWD_BLOCKS): each tile
    # is walked in four pieces, all kept or all skipped with it
    q, k, v = qkv(1, 150, 200, 2, 1, 16, 16, seed=3, sink=16.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BLASST_TRITON_BWD_BLOCKS", "32,32,32,32,4,2,8,3")  # (kernel 2 in its own launch shape)
        got, want, stats, tol = run_both(q, k, v, causal=True, factor=3.0, block_m=64, block_n=64)
    assert stats[:, 1].sum() > 0
    for g, w, t in zip(got, want, tol):
        assert rel_error(g, w) < t


@pytest.mark.parametrize("where,causal", [("skipped value", True), ("skipped value", False), ("query row", True),
                                          ("key", True)])
def test_triton_nan_follows_the_cpu_engine(where, causal):
    # NaN reaches the gradients of the (row, key) pairs a row attends only: a NaN value in a tile that
    # every group skipped reaches nothing; a NaN query row (causal) not the dk, dv of the keys beside
    # its diagonal that it does not see; a NaN key (causal) not the dq of the rows that do not see it
    q, k, v = qkv(1, 64, 96, 2, 1, 16, 16, seed=5, sink=16.0)  # the sink's tile dominates: later ones are skipped
    plant_nan(where, q, k, v, row=36, key=90, causal=causal, threshold_scale_factor=3.0, block_m=16, block_n=32)
    got, want, _, tol = run_both(q, k, v, causal=causal, factor=3.0)
    for name, g, w, t in zip(("dq", "dk", "dv"), got, want, tol):
        assert not torch.isnan(w).all(), name
        assert torch.equal(torch.isnan(g), torch.isnan(w)), name
        assert rel_error(g, w) < t, name
    assert any(torch.isnan(w).any() for w in want) == (where != "skipped value")


@pytest.mark.parametrize("factor", [0.0, 3.0])
def test_triton_nan_output_gradient_follows_the_cpu_engine(factor):
    # a NaN in row 36 of dO reaches dv of the keys row 36 attends only: with factor 0 its diagonal
    # block is kept and masked (keys past 68 are not seen), where dO's NaN is read as 0 in P^T dO
    q, k, v = qkv(1, 64, 96, 2, 1, 16, 16, seed=5, sink=16.0)
    out, lse, _, decisions, info = _core.run(PREFILL, q, k, v, causal=True, threshold_scale_factor=factor,
                                             block_m=16, block_n=32, return_stats=True, return_decisions=True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    dout[0, 36, 0, 3] = float("nan")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    moved = [t.to(dev) for t in (q, k, v, out, dout, lse, decisions)]
    got = [g.cpu() for g in autograd.triton_backward(PREFILL, *moved[:6], None, moved[6], info, causal=True)]
    want = _core.backward(PREFILL, q, k, v, out, dout, None, decisions, info, causal=True, scale=0.0,
                          max_seqlen_q=0, max_seqlen_k=0)
    assert int(torch.isnan(want[2]).sum()) == (69 if factor == 0.0 else 32)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert torch.equal(torch.isnan(g), torch.isnan(w)), name


def test_block_lists_list_the_kernel_blocks_of_kept_visible_tiles():
    # a kernel block is listed iff its decision tile is kept and it holds a visible (row, key) pair,
    # and whole iff it is listed and all its pairs exist and are visible
    gen = torch.Generator().manual_seed(0)
    kept = torch.rand(2, 3, 4, 3, generator=gen) < 0.5               # [B, H, RB, KT], tiles of 32 x 64
    lq, lk = 100, 150
    for causal in (False, True):
        blocks, whole = _triton_backward.block_lists(kept, 32, 64, 16, 32, lq, lk, causal)
        assert blocks.shape == whole.shape == (2, 3, 7, 5)
        for i in range(7):
            for j in range(5):
                rows = torch.arange(i * 16, (i + 1) * 16)
                keys = torch.arange(j * 32, (j + 1) * 32)
                pairs = (rows[:, None] < lq) & (keys[None, :] < lk)
                if causal:
                    pairs &= keys[None, :] <= rows[:, None] + lk - lq
                tile = kept[:, :, i // 2, j // 2]
                assert torch.equal(blocks[:, :, i, j], tile & bool(pairs.any()))
                assert torch.equal(whole[:, :, i, j], tile & bool(pairs.all()))
        assert whole.any() and (blocks & ~whole).any()


def test_the_lists_put_whole_blocks_first_then_the_masked_ones_each_ascending():
    # _listed's prefix-sum partition against its definition, a stable sort by (whole, masked, unlisted);
    # lists of 2^21 entries or more take three scans instead of one packed scan
    gen = torch.Generator().manual_seed(1)
    for shape in [(2, 3, 5, 7), (1, 1, 1, 1), (3, 200), (2, 0), (1, 1 << 21)]:
        blocks = torch.rand(shape, generator=gen) < 0.6
        whole = blocks & (torch.rand(shape, generator=gen) < 0.5)
        n_whole, n_listed, order = _triton_backward._listed(blocks, whole)
        rank = torch.where(whole, 0, torch.where(blocks, 1, 2))
        assert torch.equal(order.long(), torch.argsort(rank, dim=-1, stable=True))
        assert torch.equal(n_whole.long(), whole.sum(-1)) and torch.equal(n_listed.long(), blocks.sum(-1))


def test_the_plan_kernel_builds_the_lists_the_torch_ops_build(monkeypatch):
    # _plan_kernel's lists (BLASST_TRITON_BWD_PLAN=kernel) against block_lists + _listed, for both
    # kernels' lists, padded lengths, causal or not, kernel blocks that split the decision tiles
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(4)
    for causal in (False, True):
        for dec_m, dec_n, bm, bn in ((32, 64, 16, 32), (64, 64, 64, 16)):
            lq = torch.tensor([100, 37], dtype=torch.int32, device=dev)
            lk = torch.tensor([150, 90], dtype=torch.int32, device=dev)
            kept = (torch.rand(2, 6, -(-100 // dec_m), -(-150 // dec_n), generator=gen) < 0.6).to(dev)
            for by_keys in (True, False):
                got, want = [], []
                for plan, into in (("kernel", got), ("torch", want)):
                    monkeypatch.setenv("BLASST_TRITON_BWD_PLAN", plan)
                    into.extend(_triton_backward.planned_lists(kept, dec_m, dec_n, bm, bn, lq, lk, causal, 100, 150,
                                                               3, by_keys))
                for g, w in zip(got, want):
                    assert g.shape == w.shape and g.dtype == w.dtype == torch.int32
                    assert torch.equal(g.cpu(), w.cpu()), (causal, dec_m, bm, by_keys)
    monkeypatch.setenv("BLASST_TRITON_BWD_PLAN", "fast")
    with pytest.raises(ValueError, match="expected torch or kernel"):
        _triton_backward.plan_in_one_kernel()


def test_the_dq_path_switch_refuses_other_values(monkeypatch):
    monkeypatch.setenv("BLASST_TRITON_BWD_DQ", "fast")
    with pytest.raises(ValueError, match="expected recompute or atomic"):
        _triton_backward.atomic_dq()
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("BLASST_TRITON_BWD_SPLIT", bad)
        with pytest.raises(ValueError, match="expected a positive int"):
            _triton_backward.split_parts()
    monkeypatch.setenv("BLASST_TRITON_BWD_ROWDOT", "yes")
    with pytest.raises(ValueError, match="expected 0 or 1"):
        _triton_backward.fused_row_dots()
    # unset: four parts, or one (no atomics) where torch is asked for deterministic algorithms
    monkeypatch.delenv("BLASST_TRITON_BWD_SPLIT")
    assert _triton_backward.split_parts() == 4
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert _triton_backward.split_parts() == 1
    finally:
        torch.use_deterministic_algorithms(was)


def test_a_sinks_long_list_split_over_programs_equals_the_cpu_engine(dq_path, monkeypatch):
    # every row keeps the sink's tile, so the first block of keys has the longest list (G x row blocks
    # pairs); split in four it is walked by four programs whose dk, dv meet in fp32 (either dq path)
    monkeypatch.setenv("BLASST_TRITON_BWD_SPLIT", "4")
    q, k, v = qkv(1, 128, 128, 4, 2, 16, 16, seed=11, sink=16.0)
    got, want, stats, tol = run_both(q, k, v, causal=True, factor=3.0, block_m=16, block_n=16)
    assert stats[:, 1].sum() > 0
    decisions, info = _core.run(PREFILL, q, k, v, causal=True, threshold_scale_factor=3.0, block_m=16, block_n=16,
                                return_decisions=True)[-2:]
    kept = autograd.kept_tiles(PREFILL, decisions, info, 1, 4, 2, 128, 128)
    listed, _ = _triton_backward.block_lists(kept, 16, 16, 16, 16, 128, 128, True)
    # KV head 0's first block of keys: its 2 heads x 8 row blocks, longer than a chunk of 16 / 4
    assert int(listed[0, :2, :, 0].sum()) == 16
    for name, g, w, t in zip(("dq", "dk", "dv"), got, want, tol):
        assert rel_error(g, w) < t, (name, rel_error(g, w), t)


@pytest.mark.parametrize("layout", ["padded", "ragged"])
def test_triton_padded_and_ragged_layouts_equal_the_cpu_engine(layout):
    # per-entry lengths: padded [B, L, H, D] with seqlens_*, ragged [T, H, D] with cu_seqlens_*; rows
    # and keys past an entry's length get no gradient
    lens_q, lens_k = [70, 33], [130, 77]
    q, k, v = qkv(2, 70, 130, 4, 2, 32, 32, seed=7)
    if layout == "padded":
        kw = dict(seqlens_q=torch.tensor(lens_q, dtype=torch.int32), seqlens_k=torch.tensor(lens_k, dtype=torch.int32))
    else:
        q = torch.cat([q[0, :70], q[1, :33]])
        k, v = (torch.cat([t[0, :130], t[1, :77]]) for t in (k, v))
        kw = dict(cu_seqlens_q=torch.tensor([0, 70, 103], dtype=torch.int32),
                  cu_seqlens_k=torch.tensor([0, 130, 207], dtype=torch.int32))
    out, lse, stats, decisions, info = _core.run(PREFILL, q, k, v, causal=True, threshold_scale_factor=3.0,
                                                 block_m=16, block_n=32, return_stats=True, return_decisions=True,
                                                 **kw)
    assert stats[:, 1].sum() > 0
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.dtype)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    moved = [t.to(dev) for t in (q, k, v, out, dout, lse)]
    got = autograd.triton_backward(PREFILL, *moved[:5], moved[5], None, decisions.to(dev), info, causal=True,
                                   **{name: t.to(dev) for name, t in kw.items()})
    want = _core.backward(PREFILL, q, k, v, out, dout, None, decisions, info, causal=True, scale=0.0,
                          max_seqlen_q=0, max_seqlen_k=0, **kw)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.shape == w.shape, name
        assert rel_error(g.cpu(), w) < 5e-3, (name, rel_error(g.cpu(), w))
    if layout == "padded":  # nothing past the lengths
        assert not got[0].cpu()[1, 33:].any() and not got[1].cpu()[1, 77:].any() and not got[2].cpu()[1, 77:].any()


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@st.composite
def problems(draw):
    """A small prefill: lengths from 1 query and 2 keys (edges of tiles and blocks included; with one
    key every gradient but dv is 0 up to rounding, which a relative error cannot judge), GQA or not,
    Dqk != Dv, decision tiles of 16-64, causal or not, a threshold that may skip, maybe an LSE
    gradient."""
    g, hkv = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2]))
    return dict(lq=draw(st.integers(1, 90)), lk=draw(st.integers(2, 90)), hq=g * hkv, hkv=hkv,
                d=draw(st.sampled_from([16, 32])), dv=draw(st.sampled_from([16, 32])),
                causal=draw(st.booleans()), factor=draw(st.sampled_from([0.0, 1.0, 3.0, 10.0])),
                bm=draw(st.sampled_from([16, 32, 64])), bn=draw(st.sampled_from([16, 32, 64])),
                dlse=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=int(__import__("os").environ.get("BLASST_HYPOTHESIS_EXAMPLES", "60")) // 3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(problems())
def test_triton_gradients_equal_the_cpu_engine_on_random_problems(p):
    q, k, v = qkv(1, p["lq"], p["lk"], p["hq"], p["hkv"], p["d"], p["dv"], seed=p["seed"])
    got, want, _, tol = run_both(q, k, v, causal=p["causal"], factor=p["factor"], block_m=p["bm"], block_n=p["bn"],
                                 dlse=p["dlse"], seed=p["seed"] + 1)
    for name, g, w, t in zip(("dq", "dk", "dv"), got, want, tol):
        assert torch.equal(torch.isnan(g), torch.isnan(w)), name
        assert rel_error(g, w) < t, (name, rel_error(g, w), t)


@st.composite
def varlen_problems(draw):
    """2-3 entries of their own lengths (2 keys at least), padded or ragged, causal or not."""
    batch = draw(st.integers(2, 3))
    return dict(lens_q=draw(st.lists(st.integers(1, 70), min_size=batch, max_size=batch)),
                lens_k=draw(st.lists(st.integers(2, 70), min_size=batch, max_size=batch)),
                ragged=draw(st.booleans()), causal=draw(st.booleans()), factor=draw(st.sampled_from([0.0, 3.0])),
                seed=draw(st.integers(0, 2**16)))


@settings(max_examples=int(__import__("os").environ.get("BLASST_HYPOTHESIS_EXAMPLES", "60")) // 4, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(varlen_problems())
def test_triton_gradients_of_padded_and_ragged_batches_on_random_lengths(p):
    lens_q, lens_k = p["lens_q"], p["lens_k"]
    q, k, v = qkv(len(lens_q), max(lens_q), max(lens_k), 4, 2, 16, 16, seed=p["seed"])
    as_int32 = dict(dtype=torch.int32)
    if p["ragged"]:
        q = torch.cat([q[b, :n] for b, n in enumerate(lens_q)])
        k, v = (torch.cat([t[b, :n] for b, n in enumerate(lens_k)]) for t in (k, v))
        kw = dict(cu_seqlens_q=torch.tensor([0] + lens_q, **as_int32).cumsum(0, dtype=torch.int32),
                  cu_seqlens_k=torch.tensor([0] + lens_k, **as_int32).cumsum(0, dtype=torch.int32))
    else:
        kw = dict(seqlens_q=torch.tensor(lens_q, **as_int32), seqlens_k=torch.tensor(lens_k, **as_int32))
    out, lse, _, decisions, info = _core.run(PREFILL, q, k, v, causal=p["causal"], threshold_scale_factor=p["factor"],
                                             block_m=16, block_n=16, return_stats=True, return_decisions=True, **kw)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(p["seed"])).to(out.dtype)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # as run_both
    moved = [t.to(dev) for t in (q, k, v, out, dout, lse, decisions)]
    got = autograd.triton_backward(PREFILL, *moved[:6], None, moved[6], info, causal=p["causal"],
                                   **{name: t.to(dev) for name, t in kw.items()})
    got = [g.cpu() for g in got]
    want = _core.backward(PREFILL, q, k, v, out, dout, None, decisions, info, causal=p["causal"], scale=0.0,
                          max_seqlen_q=0, max_seqlen_k=0, **kw)
    kept = autograd.kept_tiles(PREFILL, decisions, info, len(lens_q), 4, 2, max(lens_q), max(lens_k))
    starts_q, starts_k = [sum(lens_q[:b]) for b in range(len(lens_q))], [sum(lens_k[:b]) for b in range(len(lens_k))]
    for b, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        # entry b as a dense batch of one, and its tolerance from the 16-bit rounding floor (as run_both)
        if p["ragged"]:
            rows, keys = slice(starts_q[b], starts_q[b] + lq), slice(starts_k[b], starts_k[b] + lk)
            one = [t[rows][None] for t in (q, out, dout, lse)] + [t[keys][None] for t in (k, v)]
            mine = [g[rows][None] for g in got[:1]] + [g[keys][None] for g in got[1:]]
            exact = [w[rows][None] for w in want[:1]] + [w[keys][None] for w in want[1:]]
        else:
            one = [t[b:b + 1, :lq] for t in (q, out, dout, lse)] + [t[b:b + 1, :lk] for t in (k, v)]
            mine = [got[0][b:b + 1, :lq]] + [g[b:b + 1, :lk] for g in got[1:]]
            exact = [want[0][b:b + 1, :lq]] + [w[b:b + 1, :lk] for w in want[1:]]
        qb, outb, doutb, lseb, kb, vb = one
        rounded = rounded_backward(qb, kb, vb, outb, doutb, lseb, None, kept[b:b + 1], info.block_m, info.block_n,
                                   p["causal"])
        for name, g, w, r in zip(("dq", "dk", "dv"), mine, exact, rounded):
            assert rel_error(g, w) < 1.5 * rel_error(r, w) + 1e-3, (b, name, rel_error(g, w), rel_error(r, w))
    if not p["ragged"]:  # nothing past an entry's lengths
        for b, (lq, lk) in enumerate(zip(lens_q, lens_k)):
            assert not got[0][b, lq:].any() and not got[1][b, lk:].any() and not got[2][b, lk:].any()
