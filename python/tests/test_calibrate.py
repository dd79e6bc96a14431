"""Calibration: the fit on synthetic statistics, the collection on a tiny model, the CLI."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import blasst
from blasst.calibrate import calibrate_model, fit, random_samples
from blasst.calibrate.fit import _fit_linear_own, extrapolation_warning, fit_exponential
from conftest import tiny_llama


def synthetic(a, b, noise, n=60, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.1, 0.9, n)
    sf = a * np.exp(b * s) * np.exp(rng.normal(0, noise, n))
    return s, sf


@pytest.mark.parametrize("space", ["linear", "log"])
@pytest.mark.parametrize("a, b", [(7.92, 8.615), (0.12, 9.857)])  # blog16 prefill / decode fits
def test_fit_recovers_known_coefficients(space, a, b):
    s, sf = synthetic(a, b, noise=0.0)
    r = fit_exponential(s, sf, space=space)
    assert r.a == pytest.approx(a, rel=1e-6) and r.b == pytest.approx(b, rel=1e-6)
    assert r.r2_linear == pytest.approx(1.0) and r.r2_log == pytest.approx(1.0)
    s, sf = synthetic(a, b, noise=0.05, n=400, seed=1)
    r = fit_exponential(s, sf, space=space)
    # multiplicative noise biases the linear-space objective slightly; the log-space one is unbiased
    tol_a, tol_b = (0.1, 0.03) if space == "linear" else (0.05, 0.02)
    assert r.a == pytest.approx(a, rel=tol_a) and r.b == pytest.approx(b, rel=tol_b)
    assert r.r2_log > 0.95


def test_own_least_squares_matches_without_scipy():
    s, sf = synthetic(3.0, 6.0, noise=0.03, n=200, seed=2)
    a0, b0 = fit._fit_log(s, sf)
    a, b = _fit_linear_own(s, sf, a0 * 1.5, b0 * 0.8)
    try:
        from scipy.optimize import curve_fit
    except ImportError:
        assert a == pytest.approx(3.0, rel=0.05) and b == pytest.approx(6.0, rel=0.02)
        return
    (sa, sb), _ = curve_fit(lambda x, a, b: a * np.exp(b * x), s, sf, p0=[a0, b0])
    assert a == pytest.approx(sa, rel=1e-4) and b == pytest.approx(sb, rel=1e-4)


def test_fit_filters_points_and_refuses_too_few():
    s = np.array([0.0, 0.05, 0.2, 0.5, 0.8, 0.95, 1.0])
    sf = 2.0 * np.exp(4.0 * s)
    r = fit_exponential(s, sf)
    assert r.n_points == 3 and r.min_sparsity == 0.2 and r.max_sparsity == 0.8
    with pytest.raises(ValueError, match="at least"):
        fit_exponential([0.0, 0.99], [1.0, 2.0])
    assert extrapolation_warning(r, 0.5) is None
    assert "outside the observed range" in extrapolation_warning(r, 0.9, "prefill")


def test_calibrate_tiny_model_and_write_config(tmp_path):
    model = tiny_llama(sharpen=32.0)
    samples = random_samples(96, [128, 256], 2, seed=0)
    result = calibrate_model(model, samples, decode_tokens=3, block_m=4, block_n=16, progress=False,
                             min_sparsity=0.02, max_sparsity=0.95, per_head=True,
                             target_sparsity={"prefill": 0.2, "decode": 0.3})
    assert set(result.fits) == {"prefill", "decode"}
    for phase, f in result.fits.items():
        assert f.a > 0 and f.n_points >= 3, phase
        pts = result.points(phase)
        assert len(pts) == len(samples) * len(result.trials)
        # a skipped tile never raises the running max (lambda < 1), so decisions are monotone in
        # lambda and sparsity grows with the threshold for every sample
        assert result.trials == sorted(result.trials)
        for rec in result.records:
            sp = rec.sparsity().tolist()
            assert all(x <= y + 1e-12 for x, y in zip(sp, sp[1:])), (rec.phase, sp)
    assert result.geometry["prefill"]["block_m"] == 4 and result.geometry["decode"]["block_n"] == 16
    # lambda >= 1 disables skipping: the 0.99 trial is the largest; nothing above
    sac = result.sparse_attention_config(target_sparsity={"prefill": 0.2, "decode": 0.3})
    cfg = blasst.BlasstConfig.from_sparse_attention_config(sac, result.per_head_json())
    assert cfg.factor("prefill") == pytest.approx(result.fits["prefill"].factor(0.2))
    heads = cfg.head_factors("decode", "model.layers.0.self_attn")
    assert heads is not None and len(heads) == 2
    assert model.config._attn_implementation != "blasst"  # restored
    # the calibrated config drives the runtime
    blasst.hf.enable(model, cfg.with_overrides(collect_stats=True, block_m=4, block_n=16))
    with torch.no_grad():
        model(samples[-1][0])
    assert blasst.hf.summary(model)["prefill"]["skipped"] > 0


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "blasst.calibrate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sparse_attention_config" in out.stdout and "--target-sparsity" in out.stdout


def test_cli_end_to_end(tmp_path):
    model = tiny_llama(sharpen=32.0)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    out_cfg = tmp_path / "out" / "config.json"
    cmd = [sys.executable, "-m", "blasst", "calibrate", "--model", str(model_dir), "--random-tokens",
           "--lengths", "128,256", "--samples-per-bin", "1", "--decode-tokens", "2", "--block-m", "4",
           "--block-n", "16", "--min-sparsity", "0.02", "--target-sparsity", "prefill=0.2,decode=0.3",
           "--ignore", "model.layers.1.self_attn", "--output", str(out_cfg), "--plot-dir", str(tmp_path / "plots"),
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads(out_cfg.read_text())
    assert config["model_type"] == "llama"
    group = config["sparse_attention_config"]["config_groups"]["group_0"]
    assert group["algorithm"] == "skip_softmax" and group["ignore"] == ["model.layers.1.self_attn"]
    assert group["threshold_scale_factor"]["formula"] == "a * exp(b * target_sparsity)"
    assert set(group["threshold_scale_factor"]) >= {"prefill", "decode"}
    assert group["target_sparsity"] == {"prefill": 0.2, "decode": 0.3}
    assert (tmp_path / "plots" / "calibration_prefill.png").stat().st_size > 1000
    report = json.loads((out_cfg.parent / "blasst_calibration_report.json").read_text())
    assert report["fits"]["prefill"]["n_points"] >= 3
    assert math.isfinite(report["fits"]["decode"]["r2_linear"])
