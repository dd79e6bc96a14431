"""bench/prefill_targets.py: the ratios and target checks it derives from benchmark rows."""

import pytest
from conftest import assert_no_rows_of_commit, load_bench_script, write_bench_csv as write


@pytest.fixture(scope="module")
def targets():
    return load_bench_script("prefill_targets")


def row(date, kernel, sparsity, ms, commit="abc1234", tflops=100.0, d=128, L=8192, causal=0):
    return {"gpu": "GPU", "date": date, "commit": commit, "phase": "prefill", "kernel": kernel, "dtype": "bf16",
            "batch": 1, "lq": L, "lk": L, "hq": 32, "hkv": 8, "d": d, "causal": causal, "sf": 1.0,
            "sparsity": sparsity, "ms": ms, "tflops": tflops, "gbs": 0}


def test_ratios_of_one_run(tmp_path, targets):
    # dense 10 ms; skip 10.2 ms at s=0 (0.980 of dense); s=0.75: 8 ms -> 1.25x, bound 1.6x -> 0.78125;
    # cuDNN 12 ms -> 1.5x over cuDNN at s=0.75.
    rows = [row("t1", "blasst-dense", 0.0, 10.0, tflops=600), row("t1", "blasst-skip", 0.0, 10.2),
            row("t1", "blasst-skip", 0.75, 8.0), row("t1", "cudnn", 0.0, 12.0, tflops=500),
            row("t1", "fa2", 0.0, 20.0, tflops=300),
            row("t2", "blasst-dense", 0.0, 10.0), row("t0", "blasst-dense", 0.0, 1.0, commit="other")]
    path = tmp_path / "p.csv"
    write(path, rows)
    runs = targets.runs_of(targets.read_rows(path), "abc1234")
    assert list(runs) == ["t1", "t2"]
    s = targets.shape_summary(runs["t1"][(128, 8192, 0)])
    assert s["skip_zero"] == pytest.approx(10.0 / 10.2)
    high = s["points"][-1]
    assert high["speedup"] == pytest.approx(1.25)
    assert high["of_bound"] == pytest.approx(1.25 / 1.6)
    assert high["vs_cudnn"] == pytest.approx(1.5)
    # t2 has no skip rows: nothing to summarize.
    assert targets.shape_summary(runs["t2"][(128, 8192, 0)]) is None

    checks = {name: (worst, met) for name, worst, _, met, _ in targets.check_targets(runs, 128)}
    assert checks["sm_90a dense / cuDNN"] == (pytest.approx(1.2), True)
    assert checks["sm_90a skip s~0 / dense"] == (pytest.approx(10.0 / 10.2), True)
    assert checks["sm_90a of bound, s in [0.5, 0.9]"] == (pytest.approx(0.78125), False)
    assert checks["sm_90a vs cuDNN, s in [0.7, 0.8]"] == (pytest.approx(1.5), True)
    assert not any(name.startswith("sm_80") for name in checks)  # no sm_80 rows


def test_sm80_rows_and_missing_commit(tmp_path, targets, capsys):
    rows = [row("t1", "blasst-dense-sm80", 0.0, 10.0, tflops=350), row("t1", "blasst-skip-sm80", 0.0, 11.0),
            row("t1", "blasst-skip-sm80", 0.6, 7.0), row("t1", "fa2", 0.0, 10.0, tflops=360)]
    path = tmp_path / "p.csv"
    write(path, rows)
    runs = targets.runs_of(targets.read_rows(path), "abc1234")
    checks = {name: (worst, met) for name, worst, _, met, _ in targets.check_targets(runs, None)}
    assert checks["sm_80 dense / FA2"] == (pytest.approx(350 / 360), False)
    assert checks["sm_80 skip s~0 / dense"] == (pytest.approx(10 / 11), False)
    assert checks["sm_80 of bound, s >= 0.5"] == (pytest.approx((10 / 7) / (2 / 1.4)), True)
    assert targets.main(["--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| sm_80 of bound, s >= 0.5 |" in out and "rows blasst-*-sm80" in out
    assert_no_rows_of_commit(targets, path, "prefill")
