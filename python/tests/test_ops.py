"""The torch ops over the C ABI: layouts, dtypes, statistics, decisions, opcheck, torch.compile."""

import warnings

import pytest
import torch

import blasst
from blasst._guard import DenseThresholdWarning
from conftest import sdpa_reference, structured_qkv

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_dense_matches_reference(dtype, causal):
    q, k, v = structured_qkv(2, 37, 203, 4, 2, 64, dtype=dtype, spread=1.0)
    out, lse = blasst.attention(q, k, v, causal=causal, block_m=16, block_n=32)
    assert out.shape == (2, 37, 4, 64) and out.dtype == dtype
    assert lse.shape == (2, 37, 4) and lse.dtype == torch.float32
    ref = sdpa_reference(q, k, v, causal=causal)
    assert (out.double() - ref).abs().max() < TOL[dtype]


def test_strided_views_and_mla_dims():
    # HF hands [B, H, L, D] tensors; the op takes their [B, L, H, D] transposes without copies
    q, k, v = structured_qkv(1, 20, 50, 6, 3, 32, dv=16, spread=1.0)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not qt.is_contiguous()
    out, _ = blasst.attention(qt, kt, vt, causal=True, scale=0.3)
    assert out.shape == (1, 20, 6, 16)
    assert (out.double() - sdpa_reference(q, k, v, scale=0.3)).abs().max() < 2e-5


def test_ragged_layout():
    lens_q, lens_k = [3, 0, 17], [40, 5, 17]
    qs, ks, vs, refs = [], [], [], []
    for i, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        q, k, v = structured_qkv(1, lq, lk, 4, 1, 32, spread=1.0, seed=i)
        qs.append(q[0]), ks.append(k[0]), vs.append(v[0])
        refs.append(sdpa_reference(q, k, v)[0] if lq else None)
    cu_q = torch.tensor([0, 3, 3, 20], dtype=torch.int32)
    cu_k = torch.tensor([0, 40, 45, 62], dtype=torch.int32)
    out, lse, _ = torch.ops.blasst.prefill(torch.cat(qs), torch.cat(ks), torch.cat(vs), cu_q, cu_k)
    assert out.shape == (20, 4, 32) and lse.shape == (20, 4)
    assert (out[:3].double() - refs[0]).abs().max() < 2e-5
    assert (out[3:].double() - refs[2]).abs().max() < 2e-5


def test_paged_decode_matches_contiguous():
    q, k, v = structured_qkv(2, 1, 70, 8, 2, 64, spread=1.0)
    page = 16
    lengths = torch.tensor([70, 33], dtype=torch.int32)
    pages_per_seq = 5
    perm = torch.randperm(2 * pages_per_seq, generator=torch.Generator().manual_seed(1))
    block_table = perm.view(2, pages_per_seq).to(torch.int32)
    kp = torch.zeros(2 * pages_per_seq, page, 2, 64)
    vp = torch.zeros_like(kp)
    for b in range(2):
        for p in range(pages_per_seq):
            lo, hi = p * page, min((p + 1) * page, 70)
            kp[block_table[b, p], : hi - lo] = k[b, lo:hi]
            vp[block_table[b, p], : hi - lo] = v[b, lo:hi]
    out, _, stats = torch.ops.blasst.decode(q, kp, vp, seqlens_k=lengths, block_table=block_table,
                                            block_n=16, return_stats=True)
    assert stats.shape == (2, 2)
    ref0 = sdpa_reference(q[:1], k[:1], v[:1])
    ref1 = sdpa_reference(q[1:], k[1:, :33], v[1:, :33])
    assert (out[0].double() - ref0[0]).abs().max() < 2e-5
    assert (out[1].double() - ref1[0]).abs().max() < 2e-5


def test_skipping_statistics_and_bounded_error():
    q, k, v = structured_qkv(1, 256, 512, 4, 2, 64, spread=1.0)
    dense, _, st0 = blasst.attention(q, k, v, block_m=32, block_n=32, return_stats=True)
    out, _, st = blasst.attention(q, k, v, threshold_scale_factor=5.0, block_m=32, block_n=32, return_stats=True)
    assert st0[:, 1].sum() == 0 and torch.equal(st0[:, 0], st[:, 0])
    sparsity = st[:, 1].sum().item() / st[:, 0].sum().item()
    assert sparsity > 0.2
    assert (out - dense).abs().max() < 0.05 * v.abs().max()
    info = blasst.last_run_info()
    assert info.engine == "cpu" and info.block_n == 32 and info.skipped == st[:, 1].sum().item()


def test_skip_output_is_exact_attention_over_kept_tiles():
    q, k, v = structured_qkv(1, 64, 192, 2, 1, 32, spread=1.0)
    bm = bn = 32
    out, _, stats, decisions, info = blasst.run_with_decisions(q, k, v, threshold_scale_factor=4.0, block_m=bm,
                                                               block_n=bn, causal=True)
    assert stats[:, 1].sum() > 0
    groups, tiles = 2 * (64 // bm), 192 // bn
    dec = decisions.view(groups, tiles)
    keep = torch.ones(1, 2, 64, 192, dtype=torch.bool)
    for h in range(2):
        for blk in range(64 // bm):
            for t in range(tiles):
                if dec[h * (64 // bm) + blk, t] == 2:  # BLASST_TILE_SKIPPED
                    keep[0, h, blk * bm:(blk + 1) * bm, t * bn:(t + 1) * bn] = False
    ref = sdpa_reference(q, k, v, key_mask=keep)
    assert (out.double() - ref).abs().max() < 2e-5


def test_per_kv_head_factors_and_lambda_guard():
    q, k, v = structured_qkv(1, 128, 256, 4, 2, 64, spread=1.0)
    _, _, st = blasst.attention(q, k, v, threshold_scale_factor=[0.0, 8.0], block_m=32, block_n=32,
                                return_stats=True)
    assert st[:2, 1].sum() == 0 and st[2:, 1].sum() > 0  # query heads 0-1 read KV head 0
    # lambda = factor / Lk >= 1 turns skipping off (SPEC 4), and the call says so
    with pytest.warns(DenseThresholdWarning, match="lambda = factor / Lk >= 1"):
        _, _, st = blasst.attention(q, k, v, threshold_scale_factor=256.0, block_m=32, block_n=32,
                                    return_stats=True)
    assert st[:, 1].sum() == 0


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_per_request_factors_equal_calls_entry_by_entry(phase):
    lq = 64 if phase == "prefill" else 2
    q, k, v = structured_qkv(3, lq, 256, 4, 2, 64, spread=1.0)
    factors = [0.0, 8.0, 300.0]  # dense, skipping, lambda >= 1
    out, _, st = blasst.attention(q, k, v, phase=phase, threshold_scale_factor=5.0, per_request_factor=factors,
                                  block_m=32, block_n=32, return_stats=True)
    total = torch.zeros_like(st)
    for b, f in enumerate(factors):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DenseThresholdWarning)
            o, _, s = blasst.attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], phase=phase, threshold_scale_factor=f,
                                       block_m=32, block_n=32, return_stats=True)
        assert torch.equal(out[b:b + 1], o)
        total += s
        if f == 8.0:
            assert s[:, 1].sum() > 0
    assert torch.equal(st, total)


def test_target_sparsity_with_formula():
    q, k, v = structured_qkv(1, 64, 128, 2, 2, 32, spread=1.0)
    a = blasst.attention(q, k, v, target_sparsity=0.5, formula=(2.0, 1.0), return_stats=True, block_n=32)
    b = blasst.attention(q, k, v, threshold_scale_factor=2.0 * 2.718281828459045 ** 0.5, return_stats=True,
                         block_n=32)
    assert torch.equal(a[2], b[2]) and torch.equal(a[0], b[0])


def test_errors_are_clear():
    q, k, v = structured_qkv(1, 8, 8, 4, 2, 32)
    with pytest.raises(ValueError, match="dtype"):
        blasst.attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="share one dtype"):
        blasst.attention(q, k.half(), v)
    with pytest.raises(blasst.BlasstInvalidArgument, match="not a multiple"):
        blasst.attention(q[:, :, :3], k, v)
    with pytest.raises(blasst.BlasstInvalidArgument, match="threshold_scale_factor"):
        blasst.attention(q, k, v, threshold_scale_factor=-1.0)
    with pytest.raises(ValueError, match="per_kv_head_factor"):
        blasst.attention(q, k, v, threshold_scale_factor=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="formula"):
        blasst.attention(q, k, v, target_sparsity=0.5)
    with pytest.raises(ValueError, match="order"):
        blasst.attention(q, k, v, order="descending")


def test_opcheck():
    q, k, v = structured_qkv(2, 9, 40, 4, 2, 32, spread=2.0)
    seqlens_k = torch.tensor([40, 23], dtype=torch.int32)
    for op, args, kwargs in [
        (torch.ops.blasst.prefill.default, (q, k, v), {"threshold_scale_factor": 4.0, "return_stats": True,
                                                        "block_m": 16, "block_n": 16}),
        (torch.ops.blasst.decode.default, (q[:, :2], k, v), {"seqlens_k": seqlens_k, "threshold_scale_factor": 2.0,
                                                              "return_stats": True, "block_n": 16}),
    ]:
        torch.library.opcheck(op, args, kwargs)


def test_torch_compile_fullgraph():
    q, k, v = structured_qkv(1, 33, 33, 4, 2, 32, spread=2.0)

    def f(q, k, v):
        out, lse, stats = blasst.attention(q * 1.0, k, v, threshold_scale_factor=3.0, return_stats=True, block_n=16)
        return out * 2.0, stats

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager_out, eager_stats = f(q, k, v)
    out, stats = compiled(q, k, v)
    assert torch.equal(out, eager_out) and torch.equal(stats, eager_stats)


def test_version_and_build_info():
    assert blasst.engine_version().startswith("0.")
    assert isinstance(blasst.cuda_available(), bool)


def test_empty_queries_and_keys():
    q, k, v = structured_qkv(2, 3, 5, 4, 2, 32)
    out, lse = blasst.attention(q[:, :0], k, v)
    assert out.shape == (2, 0, 4, 32) and lse.shape == (2, 0, 4)
    out, lse = blasst.attention(q, k[:, :0], v[:, :0])
    assert out.abs().max() == 0 and torch.isneginf(lse).all()  # rows with no visible key (SPEC 5)


def test_mla_absorbed_decode_reads_v_as_a_view_of_the_latent_cache():
    # MLA absorbed decode: one latent of 576 values per token (512 + 64 rope) is K, and its first
    # 512 values are V (the same bytes, a view); 16 query heads share the one KV head and decide
    # together. The skip output is attention over the kept tiles, exactly.
    g = torch.Generator().manual_seed(11)
    u = torch.randn(576, generator=g)
    u = u / u.norm()
    q = torch.randn(2, 1, 16, 576, generator=g) * 0.3 + 3 * u
    latent = torch.randn(2, 300, 1, 576, generator=g)
    latent[:, 0, 0] = 30 * u  # a sink along the queries, so that the skip mode has tiles to skip
    v = latent[..., :512]
    scale = 576 ** -0.5
    dense, _ = blasst.attention(q, latent, v, phase="decode", scale=scale, block_n=32)
    assert (dense.double() - sdpa_reference(q, latent, v.contiguous(), scale=scale)).abs().max() < 2e-5
    out, _, stats, decisions, info = blasst.run_with_decisions(q, latent, v, phase="decode", scale=scale,
                                                               threshold_scale_factor=100.0, block_n=32)
    assert out.shape == (2, 1, 16, 512) and stats[0, 1] > 0
    tiles = -(-300 // info.block_n)
    kept = (decisions[: 2 * tiles].view(2, tiles) == 1).repeat_interleave(info.block_n, dim=1)[:, :300]
    ref = sdpa_reference(q, latent, v.contiguous(), scale=scale, key_mask=kept[:, None, None, :].expand(2, 16, 1, 300))
    assert (out.double() - ref).abs().max() < 2e-5
