"""bench/backward_targets.py: the training issue's speed checks from backward benchmark rows."""

import pytest
from conftest import load_bench_script


@pytest.fixture(scope="module")
def targets():
    return load_bench_script("backward_targets")


def row(kernel, ms, sf=0.0, sparsity=0.0, d=128, lq=8192, causal=1, commit="c1"):
    return {"gpu": "GPU", "commit": commit, "kernel": kernel, "ms": ms, "sf": sf, "sparsity": sparsity, "d": d,
            "lq": lq, "lk": lq, "causal": causal}


def test_backward_checks(targets):
    rows = [row("fa2", 5.0), row("blasst-triton", 6.25),
            row("blasst-triton", 6.25 / (0.9 * targets.skip_bound(0.6)), sf=4915.2, sparsity=0.6),
            row("blasst-triton", 6.25 / 1.2, sf=2000.0, sparsity=0.3),   # outside [0.5, 0.8]: listed only
            row("blasst-triton", 1.0, sf=1.0, sparsity=0.001),           # nothing skipped: neither
            row("blasst-flex", 1.0),                                    # another kernel
            row("blasst-triton", 1.0, d=256), row("blasst-triton", 1.0, lq=4096),  # not target points
            row("fa2", 1.0, causal=0), row("blasst-triton", 0.1, causal=0)]
    checks, skips = targets.checks_of(rows)
    got = {name: (worst, met, n) for name, worst, _, met, n in checks}
    assert got["blasst-triton: dense / FA2 dense"] == (pytest.approx(0.8), False, 1)
    assert got["blasst-triton: speedup / (1/(1-s)), s in [0.5, 0.8]"] == (pytest.approx(0.9), True, 1)
    assert [(d, length, s) for d, length, s, _, _ in skips] == [(128, 8192, 0.3), (128, 8192, 0.6)]
    flex = {name: n for name, _, _, _, n in targets.checks_of(rows, kernel="blasst-flex")[0]}
    assert flex == {"blasst-flex: dense / FA2 dense": 1}


def test_the_committed_rows_are_read(targets, capsys):
    assert targets.main([]) == 0
    out = capsys.readouterr().out
    assert "backward: commit" in out and "| target |" in out
