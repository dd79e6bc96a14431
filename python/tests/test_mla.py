"""Absorbed MLA decode through blasst.attention: q [B, Lq, Hq, 576] against one latent KV head of
576 values per token, V = its first 512 values (a view of the same memory). On the CPU engine
against fp64 attention, and decision groups of 64 head-major (head, row) pairs (block_m) against
one group of all heads; on a Hopper GPU (sm_90a MLA kernel) against the CPU engine at the
geometry the GPU reports."""

import pytest
import torch

import blasst

DQK, DV = 576, 512


def latent_inputs(b, lq, hq, lk, seed=0):
    """Queries that share a direction with an attention sink and a local window of the latent cache."""
    g = torch.Generator().manual_seed(seed)
    direction = 0.5 * torch.randn(DQK, generator=g)
    q = 0.5 * torch.randn(b, lq, hq, DQK, generator=g) + 0.6 * direction
    latent = 0.3 * torch.randn(b, lk, 1, DQK, generator=g)
    latent[:, 0] += 3.0 * direction
    latent[:, -80:] += 1.2 * direction
    return q.bfloat16(), latent.bfloat16()


def mla_reference(q, latent, causal=True):
    """fp64 dense attention; q [B, Lq, Hq, 576], latent [B, Lk, 1, 576] -> [B, Lq, Hq, 512]."""
    lq, lk = q.shape[1], latent.shape[1]
    s = torch.einsum("bqhd,bkd->bhqk", q.double(), latent[:, :, 0].double()) * DQK ** -0.5
    if causal:
        visible = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + lk - lq
        s = s.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhqk,bkd->bqhd", s.softmax(-1), latent[:, :, 0, :DV].double())


def test_dense_mla_decode_equals_fp64_attention():
    q, latent = latent_inputs(2, 2, 16, 300)
    out, lse = blasst.attention(q, latent, latent[..., :DV], phase="decode", causal=True)
    assert out.shape == (2, 2, 16, DV) and lse.shape == (2, 2, 16)
    ref = mla_reference(q, latent)
    assert (out.double() - ref).abs().max() < 8e-3 * ref.abs().max()  # bf16 output: 2^-8 relative


def test_chunked_groups_vote_alone_and_one_large_chunk_is_one_group():
    q, latent = latent_inputs(1, 2, 64, 2000, seed=1)
    v = latent[..., :DV]
    kw = dict(phase="decode", causal=True, threshold_scale_factor=40.0, block_n=64)
    _, _, whole, dec_whole, info_whole = blasst.run_with_decisions(q, latent, v, block_m=0, **kw)
    _, _, chunked, dec_chunked, info_chunked = blasst.run_with_decisions(q, latent, v, block_m=32, **kw)
    assert info_whole.block_m == 0 and info_chunked.block_m == 32
    tiles = -(-2000 // 64)
    # 128 pairs in 4 chunks of 32 pairs: four groups over the same tiles
    assert (dec_chunked[: 4 * tiles].view(4, tiles) != 0).all()
    assert chunked[0, 0] == 4 * whole[0, 0]
    assert chunked[0, 1] > 0
    # a chunk as large as all pairs is the one group
    _, _, big, dec_big, _ = blasst.run_with_decisions(q, latent, v, block_m=128, **kw)
    assert torch.equal(dec_big[:tiles], dec_whole[:tiles]) and torch.equal(big, whole)


hopper = pytest.mark.skipif(
    not (torch.cuda.is_available() and blasst.cuda_available() and torch.cuda.get_device_capability() == (9, 0)),
    reason="needs a Hopper GPU and blasst built with its CUDA engines")


@hopper
@pytest.mark.parametrize("lq,hq", [(1, 16), (2, 128)])
def test_gpu_mla_decode_matches_the_cpu_engine(lq, hq):
    q, latent = latent_inputs(3, lq, hq, 1500, seed=2)
    qc, lc = q.cuda(), latent.cuda()
    for factor in (0.0, 40.0):
        out, lse, stats, decisions, info = blasst.run_with_decisions(qc, lc, lc[..., :DV], phase="decode",
                                                                     threshold_scale_factor=factor)
        assert info.engine == "cuda" and info.block_m == 64 and info.block_n == 64
        cpu_out, cpu_lse, cpu_stats, cpu_dec, _ = blasst.run_with_decisions(
            q, latent, latent[..., :DV], phase="decode", threshold_scale_factor=factor, block_m=64, block_n=64,
            order=info.order, splits=info.splits)
        assert torch.equal(decisions.cpu()[: cpu_dec.numel()], cpu_dec)
        assert torch.equal(stats.cpu(), cpu_stats)
        assert (out.cpu().float() - cpu_out.float()).abs().max() < 1.6e-2 * cpu_out.float().abs().max()
        if factor:
            assert stats[0, 1] > 0
        else:
            ref = mla_reference(q, latent)
            assert (out.cpu().double() - ref).abs().max() < 1.6e-2 * ref.abs().max()
