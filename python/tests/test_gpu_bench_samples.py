"""bench/gpu_bench.py --sample: reading a real attention sample (runs without a GPU)."""

import numpy as np
import pytest
from conftest import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("gpu_bench")


def test_shipped_sample_by_name(bench):
    q, k, v = bench.load_sample("smollm2_licenses_L0_kv0_2048")
    # data/samples/README.md: query heads 0-2 of layer 0 with their KV head, 2048 tokens, d = 64
    assert list(q.shape) == [1, 2048, 3, 64] and list(k.shape) == [1, 2048, 1, 64] and v.shape == k.shape
    assert str(q.dtype) == "torch.float16"


def test_path_prefix_and_bad_samples(bench, tmp_path):
    prefix = str(tmp_path / "s")
    np.save(prefix + "_q.npy", np.zeros((1, 16, 4, 8), np.float16))
    np.save(prefix + "_k.npy", np.zeros((1, 16, 2, 8), np.float16))
    np.save(prefix + "_v.npy", np.zeros((1, 16, 2, 8), np.float16))
    q, k, _ = bench.load_sample(prefix)
    assert list(q.shape) == [1, 16, 4, 8] and list(k.shape) == [1, 16, 2, 8]

    np.save(prefix + "_k.npy", np.zeros((1, 16, 3, 8), np.float16))  # 3 KV heads do not divide 4 query heads
    np.save(prefix + "_v.npy", np.zeros((1, 16, 3, 8), np.float16))
    with pytest.raises(SystemExit) as e:
        bench.load_sample(prefix)
    assert "Hkv dividing Hq" in str(e.value)
    with pytest.raises(SystemExit) as e:
        bench.load_sample(str(tmp_path / "missing"))
    assert "cannot read" in str(e.value) and "missing_q.npy" in str(e.value)
