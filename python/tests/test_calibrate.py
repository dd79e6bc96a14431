"""Calibration: the fit on synthetic statistics, the collection on a tiny model, the CLI."""

import json
import math
import subprocess
import sys
import warnings

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


def test_calibration_reports_where_each_target_skips():
    """lambda = factor / context_length >= 1 turns skipping off, and a calibrated factor grows with the
    target: the report gives, per phase and target, the shortest context that skips, and warns when
    a target leaves calibration lengths or the whole model context dense."""
    model = tiny_llama(sharpen=32.0, max_position_embeddings=512)
    samples = random_samples(96, [128, 256], 1, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = calibrate_model(model, samples, decode_tokens=2, block_m=4, block_n=16, progress=False,
                                 min_sparsity=0.02, max_sparsity=0.95, target_sparsity={"prefill": 0.9, "decode": 0.1})
    assert any("skipping is off" in str(w.message) for w in caught)  # said, not only reported
    report = json.loads(json.dumps(result.report()))  # as written
    assert report["model_context_length"] == 512
    for phase, fit in result.fits.items():
        view = report["sparse_context"][phase]
        rows = {r["target_sparsity"]: r for r in view["targets"]}
        assert {0.1, 0.3, 0.5, 0.7, 0.9} <= set(rows), phase
        for t, r in rows.items():
            factor = fit.factor(t)
            assert r["threshold_scale_factor"] == pytest.approx(factor)
            lo = r["min_context_length"]
            assert factor / lo < 1 and (lo == 1 or factor / (lo - 1) >= 1), (phase, t, factor, lo)
            assert r["skips_within_model_context"] == (lo <= 512)
        # per length, the target at which that length's lambda reaches 1
        by_length = {r["context_length"]: r["max_target_sparsity"] for r in view["lengths"]}
        assert set(by_length) == {128, 256, 512}
        for n, s in by_length.items():
            assert fit.factor(s) == pytest.approx(n)
    # calibration saw prefill sparsity far below 0.9 at every factor it could try (lambda < 1 at
    # lengths <= 256), so 0.9's factor lies past those lengths and past the model's 512 positions
    row = {r["target_sparsity"]: r for r in report["sparse_context"]["prefill"]["targets"]}[0.9]
    assert row["min_context_length"] > 512 and not row["skips_within_model_context"]
    dense = [w for w in result.warnings if "skipping is off" in w]
    assert any(w.startswith("prefill: target sparsity 0.9") and "max_position_embeddings 512" in w
               and "never skips" in w for w in dense), dense
    assert not any(w.startswith("decode") for w in dense), dense  # 0.1 skips at every length here


def test_calibration_warns_for_calibration_lengths_in_the_dense_range():
    from blasst.calibrate.context import dense_range_warnings
    from blasst.calibrate.fit import FitResult

    # target 0.5 -> factor 2494: prompts of up to 2494 tokens run dense
    fit = FitResult(a=2494.0 / math.exp(4.0), b=8.0, space="log", r2_linear=1, r2_log=1, n_points=9,
                    min_sparsity=0.1, max_sparsity=0.9)
    (w,) = dense_range_warnings("prefill", fit, 0.5, [1024, 2048, 4096], (8192, "max_position_embeddings"))
    assert "up to 2493 tokens" in w or "up to 2494 tokens" in w
    assert "calibration lengths 1024, 2048 lie in that range" in w and "4096" not in w
    assert dense_range_warnings("prefill", fit, 0.2, [1024, 2048], (8192, "max_position_embeddings")) == []


def test_sample_lengths_beyond_the_model_context_are_refused_before_running():
    model = tiny_llama(sharpen=32.0, max_position_embeddings=256)
    samples = random_samples(96, [128, 256], 1, seed=0)
    with pytest.raises(ValueError, match=r"256 plus 2 decode tokens exceed the model's context of 256 tokens "
                                         r"\(max_position_embeddings"):
        calibrate_model(model, samples, decode_tokens=2, progress=False)
    assert not hasattr(model.model.layers[0].self_attn, "blasst_state")  # refused before enabling anything


def _save_tiny(tmp_path, **kw):
    model_dir = tmp_path / "model"
    tiny_llama(sharpen=32.0, **kw).save_pretrained(model_dir)
    return model_dir


@pytest.mark.parametrize("args, bad", [(["--lengths", "128,512"], "--lengths 512"),
                                       (["--max-seqlen", "512", "--num-bins", "2"], "--max-seqlen 512) 512")])
def test_cli_refuses_lengths_beyond_the_model_context(tmp_path, capsys, args, bad):
    from blasst.calibrate import cli

    model_dir = _save_tiny(tmp_path, max_position_embeddings=256)
    out_cfg = tmp_path / "out" / "config.json"
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(model_dir), "--random-tokens", "--samples-per-bin", "1", "--phases", "prefill",
                  "--trials", "0.01,0.1,0.5", "--output", str(out_cfg), "--no-progress", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert bad in err and "context of 256 tokens (max_position_embeddings" in err
    assert not out_cfg.exists()


def test_cli_refuses_an_output_config_it_could_not_update_before_calibrating(tmp_path, capsys):
    from blasst.calibrate import cli

    model_dir = _save_tiny(tmp_path)
    out_cfg = tmp_path / "config.json"
    two_skip = {"model_type": "llama", "sparse_attention_config": {"config_groups": {
        "a": {"algorithm": "skip_softmax", "targets": ["LlamaAttention"]},
        "b": {"algorithm": "skip_softmax", "targets": ["LlamaAttention"]}}}}
    out_cfg.write_text(json.dumps(two_skip))
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(model_dir), "--random-tokens", "--lengths", "128", "--samples-per-bin", "1",
                  "--phases", "prefill", "--trials", "0.01,0.1,0.5", "--output", str(out_cfg), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "2 skip_softmax groups" in err, err
    assert json.loads(out_cfg.read_text()) == two_skip


def test_cli_keeps_other_groups_writes_ignore_and_the_sparse_context(tmp_path, capsys):
    from blasst import schema
    from blasst.calibrate import cli

    model_dir = _save_tiny(tmp_path, max_position_embeddings=1024)
    out_cfg = tmp_path / "config.json"
    nm = {"algorithm": "sparse_softmax", "sparsity_n": 2, "sparsity_m": 4, "dense_recent_tokens": 64}
    existing = json.loads((model_dir / "config.json").read_text())
    existing["sparse_attention_config"] = {"config_groups": {
        "nm": nm, "skip": {"algorithm": "skip_softmax", "targets": ["LlamaAttention"], "initial_disabled_steps": 4}}}
    out_cfg.write_text(json.dumps(existing))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # extrapolation notes of this tiny fit
        rc = cli.main(["--model", str(model_dir), "--random-tokens", "--lengths", "128,256", "--samples-per-bin", "1",
                       "--decode-tokens", "2", "--block-m", "4", "--block-n", "16", "--min-sparsity", "0.02",
                       "--target-sparsity", "prefill=0.9,decode=0.1", "--output", str(out_cfg), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    config = json.loads(out_cfg.read_text())
    groups = config["sparse_attention_config"]["config_groups"]
    assert list(groups) == ["nm", "skip"] and groups["nm"] == nm
    assert groups["skip"]["ignore"] == [] and groups["skip"]["initial_disabled_steps"] == 4
    # where the written default targets skip, beside (not inside) sparse_attention_config
    spec = schema.read_sparse_attention_config(config["sparse_attention_config"])
    ext = config[schema.SPARSE_CONTEXT_KEY]
    for phase in ("prefill", "decode"):
        factor = spec.formulas[phase].factor(spec.target_sparsity[phase])
        assert ext[phase]["threshold_scale_factor"] == pytest.approx(factor)
        assert ext[phase]["min_context_length"] == math.floor(factor) + 1 and ext[phase]["max_context_length"] == 1024
    report = json.loads((tmp_path / "blasst_calibration_report.json").read_text())
    assert {r["target_sparsity"] for r in report["sparse_context"]["prefill"]["targets"]} >= {0.5, 0.9}
    assert "prefill: skipping needs lambda = sf / context_length < 1" in out and "target 0.90" in out
    assert "warning: prefill: target sparsity 0.9" in err and "never skips" in err


def test_cli_new_output_keeps_the_models_groups_of_other_algorithms(tmp_path, capsys):
    """Without an existing --output the file starts from the model's config; the groups of other
    algorithms in the model's own sparse_attention_config are carried over, not dropped."""
    from blasst.calibrate import cli

    nm = {"algorithm": "sparse_softmax", "sparsity_n": 2, "sparsity_m": 4}
    model = tiny_llama(sharpen=32.0)
    model.config.sparse_attention_config = {"config_groups": {"group_0": nm}}
    model.save_pretrained(tmp_path / "model")
    out_cfg = tmp_path / "out" / "config.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main(["--model", str(tmp_path / "model"), "--random-tokens", "--lengths", "128,256",
                       "--samples-per-bin", "1", "--phases", "prefill", "--block-m", "4", "--block-n", "16",
                       "--min-sparsity", "0.02", "--output", str(out_cfg), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    groups = json.loads(out_cfg.read_text())["sparse_attention_config"]["config_groups"]
    assert groups["group_0"] == nm and groups["group_1"]["algorithm"] == "skip_softmax"
    assert groups["group_1"]["ignore"] == []


def test_calibration_raises_no_deprecation_warning():
    """Decode steps hand the KV cache over under the name the model's forward takes (`cache` in
    current transformers, where `past_key_values` warns) and read it back by its field name."""
    import logging

    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_root = logging.getLogger("transformers")
    hf_root.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # transformers logs each deprecation once per process
    model = tiny_llama(sharpen=32.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = calibrate_model(model, random_samples(96, [128], 1), phases=("decode",), decode_tokens=3,
                                     block_n=16, progress=False, min_sparsity=0.02, max_sparsity=0.95)
    finally:
        hf_root.removeHandler(handler)
    assert "decode" in result.fits
    assert not [r.getMessage() for r in records if "deprecated" in r.getMessage()]
    assert hf_logging.get_verbosity() <= logging.WARNING  # the handler would have seen a warning
