"""bench/mla_targets.py: the MLA issue's target checks from decode and prefill benchmark rows."""

import pytest
from conftest import load_bench_script


@pytest.fixture(scope="module")
def targets():
    return load_bench_script("mla_targets")


def decode_row(kernel, ms, hq=128, lq=1, batch=64, lk=8192, sparsity=0.0, gbs=1000.0, commit="c1"):
    return {"gpu": "GPU", "commit": commit, "kernel": kernel, "hq": hq, "lq": lq, "batch": batch, "lk": lk,
            "ms": ms, "sparsity": sparsity, "gbs": gbs}


def checks_by_name(checks):
    return {name: (worst, met, n) for name, worst, _, met, n in checks}


def test_the_compute_bound_of_mla_decode(targets):
    assert targets.mla_bound(0.0) == pytest.approx(1.0)
    assert targets.mla_bound(0.75) == pytest.approx(1088 / (576 + 128))  # 1.55x, as the issue says
    assert targets.mla_bound(1.0) == pytest.approx(1088 / 576)


def test_decode_checks(targets):
    rows = [decode_row("device-copy", 0, hq=0, lq=0, batch=0, lk=0, gbs=3000.0),
            decode_row("fa3", 1.0), decode_row("blasst-dense", 1.25),
            decode_row("blasst-skip", 1.25 / (0.95 * targets.mla_bound(0.75)), sparsity=0.75),
            decode_row("blasst-skip", 1.26, sparsity=0.001),
            decode_row("blasst-dense-cluster", 0.5),  # not counted without --cluster
            decode_row("blasst-dense", 1.0, hq=16, gbs=2800.0),
            decode_row("blasst-dense", 9.0, hq=128, batch=1, lk=1000)]  # not a target point
    got = checks_by_name(targets.decode_checks(rows))
    assert got["decode Hq 128: dense / FA3"] == (pytest.approx(0.8), False, 1)
    assert got["decode Hq 128: of bound, s in [0.5, 0.9]"] == (pytest.approx(0.95), True, 1)
    assert got["decode Hq 128: skip s~0 / dense"][1] and got["decode Hq 128: skip s~0 / dense"][2] == 1
    assert got["decode Hq 16: dense / copy rate"] == (pytest.approx(2800 / 3000), True, 1)
    with_cluster = checks_by_name(targets.decode_checks(rows, cluster=True))
    assert with_cluster["decode Hq 128: dense / FA3"] == (pytest.approx(2.0), True, 1)


def test_prefill_checks(targets):
    def row(kernel, ms, s=0.0, d=192, causal=0):
        return {"kernel": kernel, "ms": ms, "sparsity": s, "d": d, "hq": 32, "lq": 8192, "causal": causal}

    rows = [row("fa3", 0.9), row("cudnn", 1.1), row("blasst-dense", 1.0),
            row("blasst-skip", 1.0 / (0.95 * 2 / 1.4), s=0.6), row("blasst-skip", 0.99, s=0.1),
            row("blasst-dense", 0.1, d=128)]  # another head dim: not counted
    got = checks_by_name(targets.prefill_checks(rows))
    assert got["prefill 192/128: dense / FA3"] == (pytest.approx(0.9), False, 1)
    assert got["prefill 192/128: dense / cuDNN"] == (pytest.approx(1.1), True, 1)
    assert got["prefill 192/128: of bound, s in [0.5, 0.9]"] == (pytest.approx(0.95), True, 1)


def test_the_committed_rows_are_read(targets, capsys):
    assert targets.main([]) == 0
    out = capsys.readouterr().out
    assert "decode: commit" in out and "prefill 192/128: commit" in out and "| target |" in out
