"""sparse_attention_config: read what ModelOpt writes, write what TensorRT-LLM reads, round-trip."""

import json
import math

import pytest

import blasst
from blasst import schema

# The checkpoint block of prior-art section 4 (ModelOpt export read by TensorRT-LLM / vLLM).
PRIOR_ART_EXAMPLE = {
    "config_groups": {
        "group_0": {
            "algorithm": "skip_softmax", "targets": ["LlamaAttention"], "ignore": ["model.layers.0.self_attn"],
            "initial_disabled_steps": 16,
            "threshold_scale_factor": {"formula": "a * exp(b * target_sparsity)",
                                       "prefill": {"a": 7.93, "b": 8.61}, "decode": {"a": 0.12, "b": 9.85}},
            "target_sparsity": {"prefill": 0.5, "decode": 0.3}},
        "group_1": {"algorithm": "sparse_softmax", "sparsity_n": 2, "sparsity_m": 4, "dense_sink_tokens": 0,
                    "dense_recent_tokens": 64}},
    "producer": {"name": "modelopt", "version": "0.xx"},
}

# ModelOpt's older export: the formula beside config_groups, the group names the algorithm
# "softmax_skip" under "sparse_algo".
MODELOPT_LEGACY = {
    "config_groups": {"group_0": {"sparse_algo": "softmax_skip", "targets": ["LlamaAttention"]}},
    "threshold_scale_factor": {"formula": "a * exp(b * target_sparsity)",
                               "prefill": {"a": 7.93, "b": 8.61}, "decode": {"a": 0.12, "b": 9.85}},
    "producer": {"name": "modelopt", "version": "0.37.0"},
}


def test_reads_prior_art_example():
    spec = schema.read_sparse_attention_config(PRIOR_ART_EXAMPLE)
    assert spec.group_name == "group_0"
    assert spec.ignore == ["model.layers.0.self_attn"] and spec.targets == ["LlamaAttention"]
    assert spec.target_sparsity == {"prefill": 0.5, "decode": 0.3}
    assert spec.formulas["prefill"].factor(0.5) == pytest.approx(7.93 * math.exp(8.61 * 0.5))
    assert spec.formulas["decode"].factor(0.3) == pytest.approx(0.12 * math.exp(9.85 * 0.3))
    assert spec.extra == {"initial_disabled_steps": 16}
    cfg = blasst.BlasstConfig.from_sparse_attention_config(PRIOR_ART_EXAMPLE)
    assert cfg.factor("prefill") == pytest.approx(7.93 * math.exp(8.61 * 0.5))  # about 587 (blog16)
    assert not cfg.applies_to("model.layers.0.self_attn", "LlamaAttention")
    assert cfg.applies_to("model.layers.3.self_attn", "LlamaAttention")
    assert not cfg.applies_to("model.layers.3.self_attn", "MistralAttention")


def test_reads_modelopt_legacy_export():
    spec = schema.read_sparse_attention_config(MODELOPT_LEGACY)
    assert spec.formulas["prefill"].coefficients == {"a": 7.93, "b": 8.61}
    assert spec.target_sparsity == {}
    cfg = blasst.BlasstConfig.from_sparse_attention_config(MODELOPT_LEGACY, target_sparsity=0.5)
    assert cfg.factor("decode") == pytest.approx(0.12 * math.exp(9.85 * 0.5))
    assert cfg.factor("prefill") == pytest.approx(7.93 * math.exp(8.61 * 0.5))


@pytest.mark.parametrize("tsf, expected", [
    (1000.0, {"prefill": 1000.0, "decode": 1000.0}),
    ({"prefill": 1000.0, "decode": 500.0}, {"prefill": 1000.0, "decode": 500.0}),
])
def test_reads_fixed_factors_and_flat_user_form(tsf, expected):
    flat = {"algorithm": "skip_softmax", "threshold_scale_factor": tsf}
    spec = schema.read_sparse_attention_config(flat)
    assert spec.factors == expected


def test_reads_other_formula_forms():
    shared = {"config_groups": {"g": {"algorithm": "skip_softmax", "target_sparsity": 0.45, "threshold_scale_factor": {
        "formula": "a * exp(b * target_sparsity)", "coefficients": {"a": 2142.7, "b": 4.28}}}}}
    spec = schema.read_sparse_attention_config(shared)
    assert spec.formulas["decode"].factor(0.45) == pytest.approx(2142.7 * math.exp(4.28 * 0.45))
    per_phase = {"config_groups": {"g": {"algorithm": "skip_softmax", "threshold_scale_factor": {
        "prefill": {"formula": "c * 10 ** (d * target_sparsity)", "c": 2.0, "d": 1.0},
        "decode": {"formula": "sqrt(k) + target_sparsity", "k": 4.0}}}}}
    spec = schema.read_sparse_attention_config(per_phase)
    assert spec.formulas["prefill"].factor(1.0) == pytest.approx(20.0)
    assert spec.formulas["decode"].factor(0.5) == pytest.approx(2.5)


def test_writes_what_tensorrt_llm_reads_and_round_trips(tmp_path):
    formulas = {"prefill": schema.Formula(coefficients={"a": 7.92, "b": 8.615}),
                "decode": schema.Formula(coefficients={"a": 0.12, "b": 9.857})}
    sac = schema.write_sparse_attention_config(
        PRIOR_ART_EXAMPLE, formulas=formulas, target_sparsity={"prefill": 0.6, "decode": 0.4},
        producer={"name": "blasst", "version": "0.1.0"})
    group = sac["config_groups"]["group_0"]
    # the documented TensorRT-LLM layout
    assert group["algorithm"] == "skip_softmax"
    assert group["threshold_scale_factor"] == {"formula": "a * exp(b * target_sparsity)",
                                               "prefill": {"a": 7.92, "b": 8.615}, "decode": {"a": 0.12, "b": 9.857}}
    assert group["target_sparsity"] == {"prefill": 0.6, "decode": 0.4}
    assert group["ignore"] == ["model.layers.0.self_attn"] and group["initial_disabled_steps"] == 16
    assert sac["config_groups"]["group_1"] == PRIOR_ART_EXAMPLE["config_groups"]["group_1"]
    assert sac["producer"]["name"] == "blasst"
    skip_groups = [g for g in sac["config_groups"].values() if g.get("algorithm") == "skip_softmax"]
    assert len(skip_groups) == 1
    # into a config.json and back
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    schema.update_config_json(path, sac)
    config = json.loads(path.read_text())
    assert config["model_type"] == "llama"
    spec = schema.read_sparse_attention_config(config["sparse_attention_config"])
    assert spec.formulas["prefill"].factor(0.6) == pytest.approx(7.92 * math.exp(8.615 * 0.6))
    assert spec.target_sparsity == {"prefill": 0.6, "decode": 0.4}


def test_write_converts_legacy_layout():
    formulas = {"prefill": schema.Formula(coefficients={"a": 1.0, "b": 2.0})}
    sac = schema.write_sparse_attention_config(MODELOPT_LEGACY, formulas=formulas)
    assert "threshold_scale_factor" not in sac  # moved into the group
    assert sac["config_groups"]["group_0"]["algorithm"] == "skip_softmax"
    assert "sparse_algo" not in sac["config_groups"]["group_0"]
    assert sac["config_groups"]["group_0"]["targets"] == ["LlamaAttention"]


@pytest.mark.parametrize("bad, match", [
    ({"config_groups": {"a": {"algorithm": "skip_softmax"}, "b": {"algorithm": "skip_softmax"}}}, "at most one"),
    ({"config_groups": {"a": {"algorithm": "skip_softmax", "threshold_scale_factor": {
        "formula": "a * exp(b * target_sparsity)", "prefill": {"a": 1.0}}}}}, "neither target_sparsity"),
    ({"config_groups": {"a": {"algorithm": "skip_softmax", "threshold_scale_factor": {
        "formula": "__import__('os')", "coefficients": {}}}}}, "not supported"),
    ({"config_groups": {"a": {"algorithm": "skip_softmax", "target_sparsity": 1.2}}}, r"\[0, 1\)"),
    ({"config_groups": {"a": {"algorithm": "skip_softmax", "threshold_scale_factor": {"prefil": 3.0}}}}, "prefil"),
    ({"config_groups": {"a": {"algorithm": "skip_softmax", "threshold_scale_factor": "big"}}}, "finite number"),
    ({"config_groups": {"a": {"algorithm": "skip_softmax", "ignore": 3}}}, "list of strings"),
])
def test_bad_schemas_give_clear_errors(bad, match):
    with pytest.raises(schema.SchemaError, match=match):
        schema.read_sparse_attention_config(bad)


def test_no_skip_group_means_dense():
    only_other = {"config_groups": {"group_1": PRIOR_ART_EXAMPLE["config_groups"]["group_1"]}}
    assert schema.read_sparse_attention_config(only_other) is None
    cfg = blasst.BlasstConfig.from_sparse_attention_config(only_other)
    assert cfg.factor("prefill") == 0.0 and cfg.factor("decode") == 0.0
    with pytest.raises(blasst.ConfigError, match="needs a calibrated formula"):
        blasst.BlasstConfig.from_sparse_attention_config(only_other, target_sparsity=0.5)


def test_user_threshold_takes_precedence():
    cfg = blasst.BlasstConfig.from_sparse_attention_config(PRIOR_ART_EXAMPLE, threshold_scale_factor={"decode": 5.0})
    assert cfg.factor("decode") == 5.0
    assert cfg.factor("prefill") == pytest.approx(7.93 * math.exp(8.61 * 0.5))


def test_calibrating_one_phase_keeps_the_other_phases_formula():
    decode_only = schema.write_sparse_attention_config(
        formulas={"decode": schema.Formula(schema.DEFAULT_FORMULA, {"a": 0.36, "b": 10.7})}, target_sparsity={"decode": 0.3})
    both = schema.write_sparse_attention_config(
        decode_only, formulas={"prefill": schema.Formula(schema.DEFAULT_FORMULA, {"a": 54.3, "b": 6.76})},
        target_sparsity={"prefill": 0.5})
    spec = schema.read_sparse_attention_config(both)
    assert spec.formulas["decode"].coefficients == {"a": 0.36, "b": 10.7}
    assert spec.formulas["prefill"].coefficients == {"a": 54.3, "b": 6.76}
    assert spec.target_sparsity == {"prefill": 0.5, "decode": 0.3}
    # a new fit of a phase replaces only that phase
    again = schema.write_sparse_attention_config(both, formulas={"decode": schema.Formula(schema.DEFAULT_FORMULA, {"a": 1.0, "b": 2.0})})
    spec = schema.read_sparse_attention_config(again)
    assert spec.formulas["decode"].coefficients == {"a": 1.0, "b": 2.0}
    assert spec.formulas["prefill"].coefficients == {"a": 54.3, "b": 6.76}


def test_writes_ignore_even_when_empty():
    """ModelOpt writes `ignore` in the skip_softmax group even when it lists nothing; so do we."""
    formulas = {"prefill": schema.Formula(coefficients={"a": 7.92, "b": 8.615})}
    group = schema.write_sparse_attention_config(formulas=formulas)["config_groups"]["group_0"]
    assert group["ignore"] == []
    # an existing group's list is kept when no new one is given, and replaced when one is
    kept = schema.write_sparse_attention_config(PRIOR_ART_EXAMPLE, formulas=formulas)
    assert kept["config_groups"]["group_0"]["ignore"] == ["model.layers.0.self_attn"]
    cleared = schema.write_sparse_attention_config(PRIOR_ART_EXAMPLE, formulas=formulas, ignore=[])
    assert cleared["config_groups"]["group_0"]["ignore"] == []


# A checkpoint with groups of several algorithms: the skip_softmax group is not the first, and the
# other groups hold fields that would be errors in a skip_softmax group (theirs, not ours to judge).
MULTI_GROUP = {
    "config_groups": {
        "nm": {"algorithm": "sparse_softmax", "sparsity_n": 2, "sparsity_m": 4, "target_sparsity": 1.5,
               "ignore": 3, "threshold_scale_factor": "learned"},
        "legacy_other": {"sparse_algo": "sparse24", "targets": ["model.layers.*.mlp"]},
        "skip": {"algorithm": "skip_softmax", "targets": ["LlamaAttention"], "ignore": ["model.layers.0.*"],
                 "threshold_scale_factor": {"formula": "a * exp(b * target_sparsity)",
                                            "prefill": {"a": 7.93, "b": 8.61}, "decode": {"a": 0.12, "b": 9.85}},
                 "target_sparsity": {"prefill": 0.5, "decode": 0.3}},
    },
    "producer": {"name": "modelopt", "version": "0.45.0"},
}


def test_reads_the_skip_group_of_a_multi_group_config_and_writes_the_others_back_untouched():
    spec = schema.read_sparse_attention_config(MULTI_GROUP)
    assert spec.group_name == "skip" and spec.ignore == ["model.layers.0.*"]
    assert spec.target_sparsity == {"prefill": 0.5, "decode": 0.3}
    cfg = blasst.BlasstConfig.from_sparse_attention_config(MULTI_GROUP)
    assert cfg.factor("decode") == pytest.approx(0.12 * math.exp(9.85 * 0.3))
    assert not cfg.applies_to("model.layers.0.self_attn", "LlamaAttention")
    sac = schema.write_sparse_attention_config(
        MULTI_GROUP, formulas={"prefill": schema.Formula(coefficients={"a": 1.0, "b": 2.0})})
    assert list(sac["config_groups"]) == ["nm", "legacy_other", "skip"]  # names and order kept
    for name in ("nm", "legacy_other"):
        assert sac["config_groups"][name] == MULTI_GROUP["config_groups"][name]
    assert sac["config_groups"]["skip"]["threshold_scale_factor"]["decode"] == {"a": 0.12, "b": 9.85}


def test_two_skip_groups_are_refused_when_read_and_when_written():
    """TensorRT-LLM: at most one skip_softmax group. Writing used to replace the first and leave the
    second, giving a config no reader accepts."""
    two = {"config_groups": {"a": {"algorithm": "skip_softmax", "targets": ["LlamaAttention"]},
                             "b": {"sparse_algo": "softmax_skip", "targets": ["MistralAttention"]},
                             "c": {"algorithm": "sparse_softmax"}}}
    fit = {"prefill": schema.Formula(coefficients={"a": 1.0, "b": 2.0})}
    with pytest.raises(schema.SchemaError, match="2 skip_softmax groups"):
        schema.write_sparse_attention_config(two, formulas=fit)
    with pytest.raises(schema.SchemaError, match=r"2 skip_softmax groups \(a, b\).*such as c"):
        schema.read_sparse_attention_config(two)


def test_legacy_layout_beside_other_groups_keeps_the_phase_not_calibrated():
    """ModelOpt's older export keeps the formula beside config_groups; updating one phase moves it
    into the group without losing the other phase's coefficients, and leaves other groups alone."""
    nm = {"algorithm": "sparse_softmax", "sparsity_n": 2, "sparsity_m": 4}
    legacy = {**MODELOPT_LEGACY, "config_groups": {**MODELOPT_LEGACY["config_groups"], "group_1": nm}}
    sac = schema.write_sparse_attention_config(
        legacy, formulas={"prefill": schema.Formula(coefficients={"a": 1.0, "b": 2.0})})
    assert "threshold_scale_factor" not in sac and sac["config_groups"]["group_1"] == nm
    spec = schema.read_sparse_attention_config(sac)
    assert spec.formulas["prefill"].coefficients == {"a": 1.0, "b": 2.0}
    assert spec.formulas["decode"].coefficients == {"a": 0.12, "b": 9.85}


def test_update_config_json_sets_and_removes_extension_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", schema.SPARSE_CONTEXT_KEY: {"old": 1}}))
    sac = schema.write_sparse_attention_config(formulas={"prefill": schema.Formula(coefficients={"a": 1.0, "b": 2.0})})
    schema.update_config_json(path, sac, extensions={schema.SPARSE_CONTEXT_KEY: {"prefill": {"min_context_length": 8}}})
    assert json.loads(path.read_text())[schema.SPARSE_CONTEXT_KEY] == {"prefill": {"min_context_length": 8}}
    schema.update_config_json(path, sac, extensions={schema.SPARSE_CONTEXT_KEY: None})
    config = json.loads(path.read_text())
    assert schema.SPARSE_CONTEXT_KEY not in config and config["model_type"] == "llama"
