"""Bad inputs to the Python front: each must raise an exception naming the argument, none may
return. One table for blasst.attention and the torch ops; the cases that returned garbage or read
past a view before these checks existed are marked (returned)."""

import pytest
import torch

import blasst
from conftest import structured_qkv

B, L, HQ, HKV, D = 2, 64, 4, 2, 32


def qkv(batch=B, lq=L, lk=L, d=D):
    return structured_qkv(batch, lq, lk, HQ, HKV, d)


def paged(num_pages=8, page=16):
    k = torch.randn(num_pages, page, HKV, D)
    return k, torch.randn_like(k)


def i32(*values):
    return torch.tensor(values, dtype=torch.int32)


def _prefill(*args, **kw):
    return torch.ops.blasst.prefill(*args, **kw)


def _decode(*args, **kw):
    return torch.ops.blasst.decode(*args, **kw)


def k_head_dim_48():  # (returned) ran on k[..., :32]
    q, _, v = qkv()
    k = torch.randn(B, L, HKV, 48)
    return blasst.attention(q, k, v)


def v_view_shorter_than_k():  # (returned) read the sliced-off rows of v's storage
    q, k, _ = qkv()
    v = torch.randn(B, 80, HKV, D)[:, :50]
    return blasst.attention(q, k, v)


def k_view_shorter_than_v():
    q, _, v = qkv()
    k = torch.randn(B, 80, HKV, D)[:, :50]
    return blasst.attention(q, k, v)


def kv_batch_differs():
    q, k, v = qkv()
    return blasst.attention(q, k[:1], v[:1])


def paged_block_table_one_row():  # (returned) entry 1 of the output was uninitialized memory
    q, _, _ = qkv()
    k, v = paged()
    return blasst.attention(q, k, v, phase="prefill", block_table=i32(0, 1, 2, 3).view(1, 4),
                            seqlens_k=i32(64, 64))


def paged_block_table_1d():
    q, _, _ = qkv()
    k, v = paged()
    return blasst.attention(q, k, v, block_table=i32(0, 1, 2, 3), seqlens_k=i32(64, 64))


def paged_block_table_float():
    q, _, _ = qkv()
    k, v = paged()
    return blasst.attention(q, k, v, block_table=torch.zeros(B, 4), seqlens_k=i32(64, 64))


def paged_seqlens_k_short():
    q, _, _ = qkv()
    k, v = paged()
    return blasst.attention(q, k, v, block_table=i32(0, 1, 2, 3, 4, 5, 6, 7).view(2, 4), seqlens_k=i32(64))


def paged_max_seqlen_k_past_table():
    q, _, _ = qkv()
    k, v = paged()
    table = i32(0, 1, 2, 3, 4, 5, 6, 7).view(2, 4)
    return blasst.attention(q, k, v, block_table=table, seqlens_k=i32(64, 64), max_seqlen_k=65)


def seqlens_k_shorter_than_batch():  # (returned) read past the end of seqlens_k
    q, k, v = qkv()
    return blasst.attention(q, k, v, seqlens_k=i32(64))


def seqlens_q_shorter_than_batch():  # (returned) read past the end of seqlens_q
    q, k, v = qkv()
    return blasst.attention(q, k, v, seqlens_q=i32(64))


def seqlens_k_2d():  # (returned) accepted
    q, k, v = qkv()
    return blasst.attention(q, k, v, seqlens_k=i32(64, 64).view(2, 1))


def seqlens_k_too_long():  # (returned) accepted
    q, k, v = qkv()
    return blasst.attention(q, k, v, seqlens_k=i32(64, 64, 64))


def seqlens_k_float():
    q, k, v = qkv()
    return blasst.attention(q, k, v, seqlens_k=torch.tensor([64.0, 64.0]))


def seqlens_k_int64_past_int32():  # would be truncated to 5 by the int32 conversion
    q, k, v = qkv()
    return blasst.attention(q, k, v, seqlens_k=torch.tensor([2**32 + 5, 64], dtype=torch.int64))


def cu_seqlens_q_wrong_length():
    q, k, v = qkv()
    return _prefill(q.reshape(B * L, HQ, D), k.reshape(B * L, HKV, D), v.reshape(B * L, HKV, D),
                    i32(0, 64, 128), i32(0, 64))


def cu_seqlens_q_2d():
    q, k, v = qkv()
    return _prefill(q.reshape(B * L, HQ, D), k.reshape(B * L, HKV, D), v.reshape(B * L, HKV, D),
                    i32(0, 64, 128).view(3, 1), i32(0, 64, 128))


def cu_seqlens_q_with_seqlens_q():
    q, k, v = qkv()
    return _prefill(q.reshape(B * L, HQ, D), k, v, i32(0, 64, 128), None, i32(64, 64))


def ragged_q_kv_batch_differs():
    q, k, v = qkv()
    return _prefill(q.reshape(B * L, HQ, D), k[:1], v[:1], i32(0, 64, 128))


def k_on_meta_device():  # (returned) the fake kernel ran and an uninitialized tensor came back
    q, k, v = qkv()
    return blasst.attention(q, k.to("meta"), v)


def k_on_meta_device_op():  # (returned) the same through the op
    q, k, v = qkv()
    return _prefill(q, k.to("meta"), v)


def lk_2_pow_32_plus_5():  # (returned) int32 truncation: ran on 5 keys, wrong LSE
    q, k, v = qkv(lk=1)
    n = 2**32 + 5
    return blasst.attention(q, k.expand(B, n, HKV, D), v.expand(B, n, HKV, D), phase="prefill")


def lk_2_pow_31_plus_1():  # a negative length in the message before
    q, k, v = qkv(lk=1)
    n = 2**31 + 1
    return blasst.attention(q, k.expand(B, n, HKV, D), v.expand(B, n, HKV, D), phase="prefill")


def max_seqlen_q_below_rows():  # rows past it would stay uninitialized
    q, k, v = qkv()
    return blasst.attention(q, k, v, max_seqlen_q=32)


def max_seqlen_k_below_keys():  # keys past it would be silently left out
    q, k, v = qkv()
    return blasst.attention(q, k, v, max_seqlen_k=32)


def max_seqlen_k_above_keys():
    q, k, v = qkv()
    return blasst.attention(q, k, v, seqlens_k=i32(64, 64), max_seqlen_k=65)


def q_heads_not_multiple():
    q, k, v = qkv()
    return blasst.attention(q[:, :, :3], k, v)


def k_v_heads_differ():
    q, k, v = qkv()
    return blasst.attention(q, k, v[:, :, :1])


def q_3d_without_cu_seqlens():
    q, k, v = qkv()
    return blasst.attention(q[0], k, v)


def q_not_a_tensor():
    _, k, v = qkv()
    return blasst.attention([[1.0]], k, v)


def int_dtype():
    q, k, v = qkv()
    return blasst.attention(q.int(), k.int(), v.int())


def per_head_factor_wrong_count():
    q, k, v = qkv()
    return blasst.attention(q, k, v, threshold_scale_factor=[1.0, 2.0, 3.0])


def per_head_factor_op_2d():
    q, k, v = qkv()
    return _prefill(q, k, v, per_kv_head_factor=torch.ones(1, HKV))


def per_head_factor_on_meta():
    q, k, v = qkv()
    return _prefill(q, k, v, per_kv_head_factor=torch.ones(HKV, device="meta"))


def per_request_wrong_count():
    q, k, v = qkv()
    return blasst.attention(q, k, v, per_request_factor=[1.0])


def per_request_with_per_head():
    q, k, v = qkv()
    return blasst.attention(q, k, v, threshold_scale_factor=[1.0, 2.0], per_request_factor=[1.0, 2.0])


def per_request_int_dtype():
    q, k, v = qkv()
    return blasst.attention(q, k, v, per_request_factor=torch.tensor([1, 2]))


def per_request_nan_on_cpu():
    q, k, v = qkv()
    return blasst.attention(q, k, v, per_request_factor=[1.0, float("nan")])


def negative_factor():
    q, k, v = qkv()
    return blasst.attention(q, k, v, threshold_scale_factor=-1.0)


def nan_factor():
    q, k, v = qkv()
    return blasst.attention(q, k, v, threshold_scale_factor=float("nan"))


def nan_scale():
    q, k, v = qkv()
    return blasst.attention(q, k, v, scale=float("nan"))


def unknown_phase():
    q, k, v = qkv()
    return blasst.attention(q, k, v, phase="train")


def unknown_engine():
    q, k, v = qkv()
    return blasst.attention(q, k, v, engine="tpu")


def block_n_negative():
    q, k, v = qkv()
    return blasst.attention(q, k, v, block_n=-16)


CASES = [
    (k_head_dim_48, "head dim 48"),
    (v_view_shorter_than_k, "k and v must agree"),
    (k_view_shorter_than_v, "k and v must agree"),
    (kv_batch_differs, "batch"),
    (paged_block_table_one_row, "block_table has shape"),
    (paged_block_table_1d, "block_table has shape"),
    (paged_block_table_float, "block_table has dtype"),
    (paged_seqlens_k_short, "seqlens_k has shape"),
    (paged_max_seqlen_k_past_table, "max_seqlen_k"),
    (seqlens_k_shorter_than_batch, "seqlens_k has shape"),
    (seqlens_q_shorter_than_batch, "seqlens_q has shape"),
    (seqlens_k_2d, "seqlens_k has shape"),
    (seqlens_k_too_long, "seqlens_k has shape"),
    (seqlens_k_float, "seqlens_k has dtype"),
    (seqlens_k_int64_past_int32, "seqlens_k holds 4294967301"),
    (cu_seqlens_q_wrong_length, "cu_seqlens_k has shape"),
    (cu_seqlens_q_2d, "cu_seqlens_q has shape"),
    (cu_seqlens_q_with_seqlens_q, "not both"),
    (ragged_q_kv_batch_differs, "batch"),
    (k_on_meta_device, "k is on meta"),
    (k_on_meta_device_op, "k is on meta"),
    (lk_2_pow_32_plus_5, "4294967301.*2\\^31"),
    (lk_2_pow_31_plus_1, "2147483649.*2\\^31"),
    (max_seqlen_q_below_rows, "max_seqlen_q"),
    (max_seqlen_k_below_keys, "max_seqlen_k"),
    (max_seqlen_k_above_keys, "max_seqlen_k"),
    (q_heads_not_multiple, "not a multiple"),
    (k_v_heads_differ, "KV heads"),
    (q_3d_without_cu_seqlens, "q has shape"),
    (q_not_a_tensor, "q is a list"),
    (int_dtype, "dtype"),
    (per_head_factor_wrong_count, "per_kv_head_factor"),
    (per_head_factor_op_2d, "per_kv_head_factor"),
    (per_head_factor_on_meta, "per_kv_head_factor is on meta"),
    (per_request_wrong_count, "per_request_factor has shape"),
    (per_request_with_per_head, "not both"),
    (per_request_int_dtype, "per_request_factor has dtype"),
    (per_request_nan_on_cpu, "per_request_factor\\[1\\]"),
    (negative_factor, "threshold_scale_factor"),
    (nan_factor, "threshold_scale_factor"),
    (nan_scale, "scale"),
    (unknown_phase, "phase"),
    (unknown_engine, "engine"),
    (block_n_negative, "block_n"),
]


@pytest.mark.parametrize("case, match", CASES, ids=[c.__name__ for c, _ in CASES])
def test_bad_input_raises(case, match):
    with pytest.raises((ValueError, TypeError), match=match):
        case()


def test_backward_through_the_ops_points_to_blasst_attention():
    q, k, v = (t.requires_grad_() for t in qkv())
    out, _, _ = torch.ops.blasst.prefill(q, k, v)
    with pytest.raises(NotImplementedError, match="blasst.attention"):
        out.sum().backward()


def test_gradients_through_a_paged_cache_are_refused():
    q, _, _ = qkv()
    k, v = paged()
    with pytest.raises(NotImplementedError, match="paged"):
        blasst.attention(q.requires_grad_(), k, v, block_table=i32(0, 1, 2, 3, 4, 5, 6, 7).view(2, 4),
                         seqlens_k=i32(64, 64))


def test_views_of_longer_tensors_read_only_the_view():
    # k and v both slices of longer buffers whose tails hold NaN: the result must not see them
    q, k, v = qkv()
    kb = torch.full((B, 80, HKV, D), float("nan"))
    vb = torch.full((B, 80, HKV, D), float("nan"))
    kb[:, :L], vb[:, :L] = k, v
    out, _ = blasst.attention(q, kb[:, :L], vb[:, :L])
    ref, _ = blasst.attention(q, k, v)
    assert torch.equal(out, ref)


def test_auto_phase_ragged_single_token_batch_is_decode():
    # nine one-token queries over their caches: a decode call, whatever the packed total
    lens_k = [30 + 7 * i for i in range(9)]
    q = torch.randn(9, HQ, D)
    k = torch.randn(sum(lens_k), HKV, D)
    v = torch.randn_like(k)
    cu_q = torch.arange(10, dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    *_, stats = blasst.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, return_stats=True)
    decode = torch.ops.blasst.decode(q, k, v, cu_q, cu_k, return_stats=True)[2]
    assert stats.shape == (HKV, 2) and torch.equal(stats, decode)  # per KV head: the decode statistics
