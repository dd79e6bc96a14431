"""FP8 (float8_e4m3fn) operands through blasst.attention and the ops: an FP8 KV cache beside
16/32-bit queries, all-FP8 inputs, per-tensor and per-KV-head dequantization scales."""

import pytest
import torch

import blasst
from conftest import sdpa_reference, structured_qkv

FP8 = torch.float8_e4m3fn


def per_head(scale, h):
    """A [Hkv] scale broadcast over [B, L, Hkv, D]."""
    return scale.view(1, 1, h, 1)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16])
def test_fp8_kv_cache_matches_the_reference_of_the_dequantized_cache(phase, q_dtype):
    lq = 70 if phase == "prefill" else 2
    q, k, v = structured_qkv(2, lq, 300, 4, 2, 64, spread=1.0)
    q = q.to(q_dtype)
    k_scale, v_scale = torch.tensor([0.25, 2.0]), torch.tensor([1.5])  # per KV head, and one value
    k8, v8 = (k / per_head(k_scale, 2)).to(FP8), (v / v_scale).to(FP8)
    out, lse = blasst.attention(q, k8, v8, phase=phase, k_scale=k_scale, v_scale=v_scale)
    assert out.dtype == q_dtype and lse.dtype == torch.float32
    ref = sdpa_reference(q.float(), k8.float() * per_head(k_scale, 2), v8.float() * v_scale)
    tol = 2e-5 if q_dtype == torch.float32 else 3e-2
    assert (out.double() - ref).abs().max() < tol


def test_fp8_skipping_decides_as_the_folded_fp32_call():
    # a per-tensor K scale folds into the score scale: FP8 K/V decide every tile as fp32 K/V
    # holding the same values do at scale * k_scale, and the output differs by v_scale
    q, k, v = structured_qkv(1, 128, 512, 4, 2, 64, spread=1.0)
    k8, v8 = (k / 0.5).to(FP8), (v / 4.0).to(FP8)
    kw = dict(threshold_scale_factor=6.0, block_m=32, block_n=32, return_stats=True)
    out, lse, st = blasst.attention(q, k8, v8, k_scale=0.5, v_scale=4.0, scale=0.125, **kw)
    ref_out, ref_lse, ref_st = blasst.attention(q, k8.float(), v8.float(), scale=float(torch.tensor(0.125 * 0.5)),
                                                **kw)
    assert st[:, 1].sum() > 0 and torch.equal(st, ref_st)
    assert torch.equal(lse, ref_lse)
    assert torch.allclose(out, ref_out * 4.0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("out_dtype", [None, torch.float32, torch.float16])
def test_all_fp8_inputs(out_dtype):
    q, k, v = structured_qkv(2, 50, 90, 4, 4, 32, spread=1.0)
    q8, k8, v8 = (q / 2).to(FP8), k.to(FP8), (v * 8).to(FP8)
    out, _ = blasst.attention(q8, k8, v8, q_scale=2.0, k_scale=1.0, v_scale=0.125, out_dtype=out_dtype)
    assert out.dtype == (out_dtype or torch.bfloat16)
    ref = sdpa_reference(q8.float() * 2, k8.float(), v8.float() / 8)
    tol = 2e-5 if out_dtype == torch.float32 else (4e-3 if out_dtype == torch.float16 else 3e-2)
    assert (out.double() - ref).abs().max() < tol


def test_fp8_paged_cache_through_the_op():
    q, k, v = structured_qkv(2, 1, 70, 8, 2, 64, spread=1.0)
    page, per_seq = 16, 5
    table = torch.randperm(2 * per_seq, generator=torch.Generator().manual_seed(3)).view(2, per_seq).int()
    kp = torch.zeros(2 * per_seq, page, 2, 64, dtype=FP8)
    vp = torch.zeros_like(kp)
    for b in range(2):
        for p in range(per_seq):
            lo, hi = p * page, min((p + 1) * page, 70)
            kp[table[b, p], : hi - lo] = k[b, lo:hi].to(FP8)
            vp[table[b, p], : hi - lo] = v[b, lo:hi].to(FP8)
    one = torch.ones(1)
    out, _, _ = torch.ops.blasst.decode(q, kp, vp, seqlens_k=torch.tensor([70, 70], dtype=torch.int32),
                                        block_table=table, k_scale=one, v_scale=one)
    ref = sdpa_reference(q, k.to(FP8).float(), v.to(FP8).float())
    assert (out.double() - ref).abs().max() < 2e-5


def test_fp8_under_torch_compile():
    q, k, v = structured_qkv(1, 33, 40, 4, 2, 32, spread=1.0)
    q8, k8, v8 = q.to(FP8), k.to(FP8), v.to(FP8)
    scale = torch.ones(1)

    def f(q8, k8, v8):
        out, _ = blasst.attention(q8, k8, v8, q_scale=scale, k_scale=scale, v_scale=scale, out_dtype=torch.float32)
        return out * 2

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(q8, k8, v8)
    assert out.dtype == torch.float32 and torch.equal(out, f(q8, k8, v8))


def _fp8_inputs():
    q, k, v = structured_qkv(1, 8, 16, 4, 2, 32)
    return q, k.to(FP8), v.to(FP8)


@pytest.mark.parametrize("call, match", [
    (lambda q, k8, v8: blasst.attention(q, k8, v8, v_scale=1.0), "k_scale is not given"),
    (lambda q, k8, v8: blasst.attention(q, k8, v8, k_scale=1.0), "v_scale is not given"),
    (lambda q, k8, v8: blasst.attention(q, k8, v8, k_scale=1.0, v_scale=1.0, q_scale=1.0), "q_scale is given"),
    (lambda q, k8, v8: blasst.attention(q, k8, v8.float(), k_scale=1.0), "k and v be float8_e4m3fn together"),
    (lambda q, k8, v8: blasst.attention(q, k8, v8, k_scale=[1.0, 2.0, 3.0], v_scale=1.0), "k_scale has shape"),
    (lambda q, k8, v8: blasst.attention(q, k8, v8, k_scale=torch.ones(1, dtype=torch.int32), v_scale=1.0),
     "k_scale has dtype"),
    (lambda q, k8, v8: blasst.attention(q, k8, v8, k_scale=0.0, v_scale=1.0), "scales.k\\[0\\]"),
    (lambda q, k8, v8: blasst.attention(q, k8, v8, k_scale=float("nan"), v_scale=1.0), "scales.k\\[0\\]"),
    (lambda q, k8, v8: blasst.attention(q, k8, v8, k_scale=1.0, v_scale=1.0, out_dtype=torch.float16), "out_dtype"),
    (lambda q, k8, v8: blasst.attention(q.to(FP8), k8, v8, q_scale=1.0, k_scale=1.0, v_scale=1.0, out_dtype=FP8),
     "out_dtype"),
    (lambda q, k8, v8: blasst.attention(q.to(FP8), k8.float(), v8.float(), q_scale=1.0), "share one dtype"),
    (lambda q, k8, v8: blasst.attention(q, k8, v8, k_scale=torch.ones(1, device="meta"), v_scale=1.0),
     "k_scale is on meta"),
], ids=["no-k-scale", "no-v-scale", "stray-q-scale", "v-not-fp8", "scale-shape", "scale-int", "scale-zero",
        "scale-nan", "out-dtype-non-fp8", "out-dtype-fp8", "q-fp8-kv-not", "scale-device"])
def test_fp8_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(*_fp8_inputs())
