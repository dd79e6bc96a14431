"""bench/decode_targets.py: runs, ratios and target checks it derives from decode benchmark rows."""

import pytest
from conftest import assert_no_rows_of_commit, load_bench_script, write_bench_csv as write


@pytest.fixture(scope="module")
def targets():
    return load_bench_script("decode_targets")


def row(date, kernel, ms, sparsity=0.0, sf=0, gbs=None, batch=8, lk=32768, commit="abc1234"):
    return {"gpu": "GPU", "date": date, "commit": commit, "phase": "decode", "kernel": kernel, "dtype": "bf16",
            "batch": batch, "lq": 1, "lk": lk, "hq": 32, "hkv": 8, "d": 128, "causal": 1, "sf": sf,
            "sparsity": sparsity, "ms": ms, "tflops": 0, "gbs": 1000.0 / ms if gbs is None else gbs}


def copy_row(date, gbs):
    return {**row(date, "device-copy", 0, gbs=gbs, batch=0, lk=0), "hq": 0, "hkv": 0, "d": 0}


def test_kernel_names(targets):
    assert targets.parse_kernel("device-copy") == ("copy", None, "")
    assert targets.parse_kernel("fa2") == ("peer", "fa2", "")
    assert targets.parse_kernel("blasst-dense-contig") == ("dense", None, "contig")
    assert targets.parse_kernel("blasst-skip") == ("skip", "ascending", "")
    assert targets.parse_kernel("blasst-skip-anchored-p16") == ("skip", "anchored", "p16")
    with pytest.raises(ValueError):
        targets.parse_kernel("blasst-dense-fast")


def test_ratios_runs_and_checks(tmp_path, targets):
    # Run 1 (timestamped, copy rate 3000 GB/s): dense 10 ms (2800 GB/s), cuDNN 12 ms (2500), FA2
    # 11 ms (2700); skip at s ~ 0: 10.1 ms; s = 0.75: 7 ms -> 1.4286x over dense, bound 1.6 -> 0.893;
    # vs cuDNN 12 / 7 = 1.714x.
    t1 = "2026-11-23T10:00:00Z"
    rows = [copy_row(t1, 3000.0),
            row(t1, "cudnn", 12.0, gbs=2500.0), row(t1, "fa2", 11.0, gbs=2700.0),
            row(t1, "blasst-dense", 10.0, gbs=2800.0), row(t1, "blasst-dense-contig", 9.9, gbs=2830.0),
            row(t1, "blasst-skip-anchored", 10.1, sparsity=0.001, sf=1),
            row(t1, "blasst-skip-anchored", 7.0, sparsity=0.75, sf=100),
            # a second call of the same day without timestamps: the repeated dense row opens a run
            row("2026-11-23", "blasst-dense", 10.0, gbs=2800.0), row("2026-11-23", "blasst-dense", 10.0, gbs=2600.0),
            row("2026-11-23", "blasst-skip", 5.0, sparsity=0.6, sf=50),
            row("2026-11-23", "blasst-dense", 1.0, commit="other")]
    path = tmp_path / "d.csv"
    write(path, rows)
    runs = targets.runs_of(targets.read_rows(path), "abc1234")
    assert [r["date"] for r in runs] == [t1, "2026-11-23", "2026-11-23"]
    assert runs[0]["copy"] == 3000.0 and runs[1]["copy"] is None
    shape = runs[0]["points"][(8, 32768, 128, 32, 8)]
    s = targets.point_summary(shape, runs[0]["copy"], "anchored")
    assert s["of_copy"] == pytest.approx(2800 / 3000)
    assert s["of_peer"] == pytest.approx(2800 / 2700)
    assert s["skip_zero"] == pytest.approx(10.0 / 10.1)
    high = s["points"][-1]
    assert high["speedup"] == pytest.approx(10 / 7)
    assert high["of_bound"] == pytest.approx((10 / 7) / 1.6)
    assert high["vs_cudnn"] == pytest.approx(12 / 7)

    checks = {name: (worst, met) for name, worst, _, met, _ in targets.check_targets(runs)}
    assert checks["dense / copy rate"] == (pytest.approx(2800 / 3000), True)
    assert checks["dense / better of cuDNN and FA2"] == (pytest.approx(2800 / 2700), True)  # run 3 has no peers
    assert checks["anchored: skip s~0 / dense"] == (pytest.approx(10 / 10.1), True)
    assert checks["anchored: of bound, s in [0.5, 0.9]"] == (pytest.approx((10 / 7) / 1.6), False)
    assert checks["anchored: vs cuDNN, s in [0.7, 0.8]"] == (pytest.approx(12 / 7), True)
    # ascending: one skip row at s = 0.6 (2x over dense, bound 1/0.7) and no row at s ~ 0
    assert checks["ascending: of bound, s in [0.5, 0.9]"] == (pytest.approx(2.0 * 1.4 / 2.0), True)
    assert "ascending: skip s~0 / dense" not in checks


def test_non_target_points_and_cli(tmp_path, targets, capsys):
    rows = [row("t1", "blasst-dense", 10.0, lk=4096), row("t1", "blasst-skip", 8.0, sparsity=0.5, lk=4096)]
    path = tmp_path / "d.csv"
    write(path, rows)
    assert targets.main(["--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| 8 x 4K |" in out and "no rows at the target points" in out
    assert_no_rows_of_commit(targets, path, "decode")
    write(path, [row("t1", "blasst-dense-fast", 10.0)])
    with pytest.raises(SystemExit) as e:
        targets.main(["--csv", str(path)])
    assert "unknown kernel name" in str(e.value)
