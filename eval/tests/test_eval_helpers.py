"""Checks of the evaluation harness's own logic (no model is loaded; runs in a few seconds):
    python3 -m pytest -q eval/tests
Not part of scripts/test.sh: the harness is a measurement tool, not the library."""
import math
import os
import sys
import types

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate  # noqa: E402
import report  # noqa: E402

TRIALS = [1e-3, 1e-2, 0.1, 0.99]


def test_lambda_for_target_hits_measured_points_and_interpolates_in_log_space():
    s = [0.1, 0.3, 0.5, 0.6]
    assert evaluate.lambda_for_target(TRIALS, s, 0.3) == pytest.approx(1e-2)
    # halfway in sparsity between 1e-2 and 0.1 is the geometric mean of the two lambdas
    assert evaluate.lambda_for_target(TRIALS, s, 0.4) == pytest.approx(math.sqrt(1e-2 * 0.1))


def test_lambda_for_target_clamps_to_the_tried_range():
    s = [0.1, 0.3, 0.5, 0.6]
    assert evaluate.lambda_for_target(TRIALS, s, 0.05) == TRIALS[0]
    # unreachable target: the largest lambda below the lambda >= 1 guard, never a value that turns skipping off
    assert evaluate.lambda_for_target(TRIALS, s, 0.9) == 0.99


def test_lambda_for_target_ignores_dips_between_trials():
    # a curve that dips (noise between trials) is made monotone: the first lambda that reached 0.5 wins
    s = [0.1, 0.5, 0.45, 0.7]
    assert evaluate.lambda_for_target(TRIALS, s, 0.5) == pytest.approx(1e-2)


def test_sparsity_at_reports_crossings_and_bounds():
    pts = [(0.2, 0.5), (0.4, 1.5), (0.6, 4.0)]
    assert report.sparsity_at(pts, 1.0) == "0.300"
    assert report.sparsity_at(pts, 10.0) == ">0.600"
    kl = [(0.2, 1e-3), (0.4, 1e-1)]
    assert report.sparsity_at(kl, 1e-2, log=True) == "0.300"
    assert report.sparsity_at(kl, 1e-4, log=True) == "<0.200"


def test_per_head_factors_reach_the_package_layer_state():
    pytest.importorskip("blasst")
    pytest.importorskip("blasst.hf")
    from blasst.hf.attention import LayerState

    backend = evaluate.BlasstBackend(None, types.SimpleNamespace(block=128, engine="cpu"))
    heads = {"model.layers.0.self_attn": [10.0, 20.0, 30.0], "model.layers.1.self_attn": [1.0, 2.0, 3.0]}
    th = evaluate.Thresholds(prefill=0.0, decode=None, head_decode=heads)
    cfg = backend.config("ascending", th, target=0.5)
    for name, want in heads.items():
        state = LayerState.build(name, "LlamaAttention", cfg)
        assert state.head_factors["decode"] == pytest.approx(want)
        assert state.factors["prefill"] == 0.0 and "prefill" not in state.head_factors


def test_calibrated_factors_stay_below_the_guard_at_the_evaluated_length():
    # a head that never reaches the target is capped at the largest lambda tried; its factor is that lambda
    # times the evaluated KV length, so lambda stays < 1 even when the evaluated context is shorter than
    # the calibration's
    cal = evaluate.Calibration.__new__(evaluate.Calibration)
    cal.trials = TRIALS
    cal.heads = {"decode": {"model.layers.0.self_attn": [[0.0, 0.1, 0.2, 0.3], [0.1, 0.5, 0.8, 0.9]]}}
    cal.pooled = {"decode": [0.05, 0.3, 0.5, 0.6]}
    cal.seqlen_k = {"decode": 2064.0}
    heads = cal.per_head("decode", 0.5, lk=2042)["model.layers.0.self_attn"]
    assert heads[0] == pytest.approx(0.99 * 2042)
    assert heads[1] == pytest.approx(1e-2 * 2042)
    assert cal.single("decode", 0.5, lk=2042) == pytest.approx(0.1 * 2042)
    assert cal.per_head("decode", 0.0, lk=2042)["model.layers.0.self_attn"] == [0.0, 0.0]


def test_text_root_stands_in_for_slash_and_keeps_the_recorded_paths(tmp_path, monkeypatch):
    import texts
    name, (_, files) = next(iter(texts.DOCUMENTS.items()))
    for i, p in enumerate(files):
        target = tmp_path / p.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"copy {i}\n")
    monkeypatch.setenv("BLASST_TEXT_ROOT", str(tmp_path))
    assert name in texts.available()
    doc = texts.load(name)
    assert doc.files == files  # provenance names the original paths
    assert doc.text == "\n\n".join(f"copy {i}\n" for i in range(len(files)))
    assert texts.describe(name)["bytes"] == [len(f"copy {i}\n") for i in range(len(files))]
    monkeypatch.setenv("BLASST_TEXT_ROOT", str(tmp_path / "missing"))
    assert texts.available() == []  # a root without the files offers nothing, it never falls back to /


def test_commit_override_for_trees_without_git(monkeypatch):
    monkeypatch.setenv("BLASST_COMMIT", "abc1234")
    assert evaluate.git_commit() == "abc1234"


def test_report_names_the_decode_prompt_from_the_rows():
    rows = [{"task": "ppl", "doc": "d", "tokens": 8192, "decode_positions": 64, "backend": "dense",
             "phase": "decode", "order": "sdpa", "method": "dense", "sparsity": 0.0, "ppl": 2.0},
            {"task": "ppl", "doc": "d", "tokens": 8192, "decode_positions": 64, "backend": "blasst",
             "phase": "decode", "order": "anchored", "method": "config", "target": 0.5, "sparsity": 0.5,
             "ppl": 2.01, "kl_mean": 1e-3}]
    text = "\n".join(report.summary(rows))
    assert "64 decoded positions after a prompt of the column's length" in text
    assert "2K prompt" not in text
