"""attn_implementation="blasst" on a tiny randomly initialised Llama (built from a config)."""

import json

import pytest
import torch

import blasst
import blasst.hf
from conftest import tiny_llama

GEOM = dict(block_m=16, block_n=16)


def logits(model, impl, ids, **kw):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, **kw).logits


def test_threshold_zero_matches_eager(llama):
    ids = torch.randint(0, 96, (2, 150), generator=torch.Generator().manual_seed(0))
    ref = logits(llama, "eager", ids)
    blasst.hf.enable(llama, blasst.BlasstConfig(threshold_scale_factor=0.0, **GEOM))
    out = logits(llama, "blasst", ids)
    assert (out - ref).abs().max() < 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_matches_eager(llama, side):
    ids = torch.randint(0, 96, (3, 90), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 90, dtype=torch.long)
    valid = [slice(0, 90), slice(0, 90), slice(0, 90)]
    if side == "left":
        mask[0, :30] = 0
        mask[2, :7] = 0
        valid = [slice(30, 90), slice(0, 90), slice(7, 90)]
    else:
        mask[1, 61:] = 0
        valid = [slice(0, 90), slice(0, 61), slice(0, 90)]
    ref = logits(llama, "eager", ids, attention_mask=mask)
    blasst.hf.enable(llama, blasst.BlasstConfig(**GEOM))
    out = logits(llama, "blasst", ids, attention_mask=mask)
    for b in range(3):
        assert (out[b, valid[b]] - ref[b, valid[b]]).abs().max() < 1e-4


def test_generate_matches_eager_and_counts_decode(llama):
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(2))
    llama.set_attn_implementation("eager")
    with torch.no_grad():
        ref = llama.generate(ids, max_new_tokens=6, do_sample=False)
    blasst.hf.enable(llama, blasst.BlasstConfig(collect_stats=True, **GEOM))
    with torch.no_grad():
        out = llama.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, ref)
    summary = blasst.hf.summary(llama)
    assert summary["prefill"]["visited"] > 0 and summary["decode"]["visited"] > 0
    stats = blasst.hf.stats(llama)
    assert stats["model.layers.0.self_attn"]["prefill"].shape == (4, 2)  # per query head
    assert stats["model.layers.0.self_attn"]["decode"].shape == (2, 2)  # per KV head


def test_skipping_sparsity_and_bounded_error(sharp_llama):
    ids = torch.randint(0, 96, (1, 256), generator=torch.Generator().manual_seed(3))
    ref = logits(sharp_llama, "eager", ids)
    blasst.hf.enable(sharp_llama, blasst.BlasstConfig(threshold_scale_factor=50.0, collect_stats=True, **GEOM))
    out = logits(sharp_llama, "blasst", ids)
    sparsity = blasst.hf.summary(sharp_llama)["prefill"]["sparsity"]
    assert sparsity > 0.03
    p_ref, p_out = ref.softmax(-1), out.softmax(-1)
    assert (p_out - p_ref).abs().sum(-1).max() < 0.2  # distance of next-token distributions


def test_ignore_patterns_keep_layers_dense(sharp_llama):
    ids = torch.randint(0, 96, (1, 200), generator=torch.Generator().manual_seed(4))
    cfg = blasst.BlasstConfig(threshold_scale_factor=50.0, collect_stats=True, ignore=["model.layers.0.*"], **GEOM)
    blasst.hf.enable(sharp_llama, cfg)
    logits(sharp_llama, "blasst", ids)
    layers = blasst.hf.summary(sharp_llama)["prefill"]["layers"]
    assert layers["model.layers.0.self_attn"] == 0.0 and layers["model.layers.1.self_attn"] > 0.0


def test_config_from_checkpoint_sparse_attention_config(tmp_path):
    model = tiny_llama(sharpen=32.0)
    model.config.sparse_attention_config = {
        "config_groups": {"group_0": {
            "algorithm": "skip_softmax", "targets": ["LlamaAttention"], "ignore": ["model.layers.1.self_attn"],
            "threshold_scale_factor": {"formula": "a * exp(b * target_sparsity)",
                                       "prefill": {"a": 0.5, "b": 2.0}, "decode": {"a": 0.1, "b": 3.0}},
            "target_sparsity": {"prefill": 0.5, "decode": 0.3}}},
        "producer": {"name": "modelopt", "version": "0.37.0"}}
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["sparse_attention_config"]["config_groups"]["group_0"]["algorithm"] == "skip_softmax"

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="blasst").eval()
    with torch.no_grad():
        loaded(torch.randint(0, 96, (1, 64)))
    states = {name: m.blasst_state for name, m in blasst.hf.attention_modules(loaded)}
    s0, s1 = states["model.layers.0.self_attn"], states["model.layers.1.self_attn"]
    assert s0.factors["prefill"] == pytest.approx(0.5 * 2.718281828459045 ** 1.0)
    assert s0.factors["decode"] == pytest.approx(0.1 * 2.718281828459045 ** 0.9)
    assert not s1.sparse and s1.factors["prefill"] == 0.0
    # enable() with a user target overrides the checkpoint default; checkpoint ignores still hold
    cfg = blasst.hf.enable(loaded, target_sparsity={"prefill": 0.25})
    assert cfg.factor("prefill") == pytest.approx(0.5 * 2.718281828459045 ** 0.5)
    assert cfg.factor("decode") == pytest.approx(0.1 * 2.718281828459045 ** 0.9)
    assert "model.layers.1.self_attn" in cfg.ignore


def test_refuses_masks_it_cannot_honour(llama):
    blasst.hf.enable(llama, blasst.BlasstConfig())
    ids = torch.randint(0, 96, (1, 20))
    mask4d = torch.ones(1, 1, 20, 20, dtype=torch.bool).tril()
    with pytest.raises(blasst.hf.UnsupportedMaskError, match="4D"):
        with torch.no_grad():
            llama(ids, attention_mask=mask4d)
    holes = torch.ones(1, 20, dtype=torch.long)
    holes[0, 5] = 0
    with pytest.raises(blasst.hf.UnsupportedMaskError, match="holes"):
        with torch.no_grad():
            llama(ids, attention_mask=holes)


def test_refuses_sliding_window():
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=8)
    model = MistralForCausalLM(cfg).eval()
    blasst.hf.enable(model, blasst.BlasstConfig())
    with pytest.raises(blasst.hf.UnsupportedMaskError, match="sliding"):
        with torch.no_grad():
            model(torch.randint(0, 64, (1, 16)))


def test_bad_configs_give_clear_errors(llama):
    with pytest.raises(blasst.ConfigError, match="formula"):
        blasst.BlasstConfig(target_sparsity=0.5)
    with pytest.raises(blasst.ConfigError, match=r"\[0, 1\)"):
        blasst.BlasstConfig(target_sparsity=1.5, formulas={"prefill": blasst.Formula(coefficients={"a": 1, "b": 1})})
    with pytest.raises(blasst.ConfigError, match="order"):
        blasst.BlasstConfig(order="random")
    with pytest.raises(blasst.ConfigError, match="threshold_scale_factor"):
        blasst.BlasstConfig(threshold_scale_factor={"prefil": 1.0})
    with pytest.raises(blasst.ConfigError, match=">= 0"):
        blasst.BlasstConfig(threshold_scale_factor=-3)
    with pytest.warns(UserWarning, match="match no attention module"):
        blasst.hf.enable(llama, blasst.BlasstConfig(ignore=["layers.0"]))


def test_torch_compile_fullgraph_model(llama):
    blasst.hf.enable(llama, blasst.BlasstConfig(threshold_scale_factor=1.0, **GEOM))
    ids = torch.randint(0, 96, (1, 48), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        eager = llama(ids).logits
        compiled = torch.compile(llama, fullgraph=True, backend="aot_eager")
        out = compiled(ids).logits
    assert (out - eager).abs().max() < 1e-4


def padded_batch(side, length=40):
    ids = torch.randint(0, 96, (3, length), generator=torch.Generator().manual_seed(6))
    mask = torch.ones(3, length, dtype=torch.long)
    if side == "left":
        mask[1, :11] = 0
        mask[2, :length - 3] = 0
    else:
        mask[1, 29:] = 0
        mask[2, 3:] = 0
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_torch_compile_fullgraph_with_padding_mask(llama, side):
    """The mask is built inside the compiled graph: no host read of its values, same logits."""
    ids, mask = padded_batch(side)
    ref = logits(llama, "sdpa", ids, attention_mask=mask)
    blasst.hf.enable(llama, blasst.BlasstConfig(threshold_scale_factor=1.0, **GEOM))
    with torch.no_grad():
        eager = llama(ids, attention_mask=mask).logits
        compiled = torch.compile(llama, fullgraph=True, backend="aot_eager")
        out = compiled(ids, attention_mask=mask).logits
    valid = mask.bool()
    assert (out - eager)[valid].abs().max() < 1e-5
    assert (out - ref)[valid].abs().max() < 1e-4
    if side == "left":
        # a mask BLASST cannot honour fails inside the compiled graph too, never a wrong answer
        holes = mask.clone()
        holes[0, 20] = 0
        with pytest.raises(RuntimeError, match="holes"):
            with torch.no_grad():
                compiled(ids, attention_mask=holes)


REGISTRATION = """
import sys
import torch
{first}
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.{load}
model.eval()
ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
impl = model.config._attn_implementation
with torch.no_grad():
    out = model(ids).logits
    model.set_attn_implementation("sdpa")
    ref = model(ids).logits
assert (out - ref).abs().max() < 1e-4
print("ok", impl)
"""


@pytest.mark.parametrize("order", ["blasst-first", "transformers-first"])
def test_import_blasst_registers_attn_implementation(tmp_path, order):
    """In a fresh interpreter `import blasst` alone makes attn_implementation="blasst" known to
    transformers, whether transformers is imported before or after, without importing it itself."""
    import subprocess
    import sys

    tiny_llama().save_pretrained(tmp_path)
    if order == "blasst-first":
        first = "import blasst\nassert 'transformers' not in sys.modules, 'import blasst imported transformers'"
        load = f"from_pretrained({str(tmp_path)!r}, attn_implementation='blasst')"
    else:
        first = "import transformers.modeling_utils, transformers.masking_utils\nimport blasst"
        load = f"from_config(__import__('transformers').AutoConfig.from_pretrained({str(tmp_path)!r}), " \
               "attn_implementation='blasst')"
    script = REGISTRATION.format(first=first, load=load)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["ok", "blasst"]


def _param_grads(model, ids):
    model.zero_grad()
    out = model(ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_training_step_gradients_match_eager_at_threshold_zero(llama):
    # a training step through attn_implementation="blasst": at threshold 0 its parameter gradients
    # are eager attention's (the backward of blasst.attention over every tile)
    ids = torch.randint(0, 96, (2, 48), generator=torch.Generator().manual_seed(8))
    llama.train()
    llama.set_attn_implementation("eager")
    ref_loss, ref = _param_grads(llama, ids)
    blasst.hf.enable(llama, blasst.BlasstConfig(threshold_scale_factor=0.0, **GEOM))
    loss, got = _param_grads(llama, ids)
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    assert got.keys() == ref.keys()
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=2e-5, rtol=1e-3), name


def test_autocast_training_step_matches_sdpa_under_the_same_autocast(llama):
    # bf16 autocast over float32 weights (how a model is fine-tuned): q and k leave the rotary
    # embedding in float32 beside a bf16 v; attention runs in bf16 as SDPA's does, and the step's
    # loss and gradients follow SDPA's under the same autocast to bf16 accuracy
    ids = torch.randint(0, 96, (2, 64), generator=torch.Generator().manual_seed(11))
    llama.train()

    def step(impl):
        llama.set_attn_implementation(impl)
        llama.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = llama(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in llama.named_parameters() if p.grad is not None}

    ref_loss, ref = step("sdpa")
    blasst.hf.enable(llama, blasst.BlasstConfig(threshold_scale_factor=0.0, **GEOM))
    loss, got = step("blasst")
    assert all(p.dtype == torch.float32 for p in llama.parameters())
    assert abs(loss.item() - ref_loss.item()) < 2e-2
    assert got.keys() == ref.keys()
    for name in ref:
        scale = ref[name].abs().max().item()
        assert (got[name] - ref[name]).abs().max().item() <= 0.05 * scale + 1e-6, name


def test_training_step_with_skipping_trains_through_the_kept_tiles(sharp_llama):
    ids = torch.randint(0, 96, (1, 128), generator=torch.Generator().manual_seed(9))
    sharp_llama.train()
    blasst.hf.enable(sharp_llama, blasst.BlasstConfig(threshold_scale_factor=50.0, collect_stats=True, **GEOM))
    opt = torch.optim.SGD(sharp_llama.parameters(), lr=1e-2)
    loss, grads = _param_grads(sharp_llama, ids)
    assert blasst.hf.summary(sharp_llama)["prefill"]["sparsity"] > 0.03
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    opt.step()


def test_training_step_with_left_padding_matches_eager(llama):
    # left padding: the keys of each entry are gathered to the front for the backward; the
    # gradients of a loss over the real tokens equal eager attention's
    ids = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(10))
    mask = torch.ones_like(ids)
    mask[0, :12] = 0
    # a label counts only where the token before it is real too (the logits that predict it come
    # from that token: a padding row is zero here and arbitrary in eager)
    before = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
    labels = ids.masked_fill((mask == 0) | (before == 0), -100)
    llama.train()

    def step(impl):
        llama.zero_grad()
        llama.set_attn_implementation(impl) if impl != "blasst" else blasst.hf.enable(
            llama, blasst.BlasstConfig(threshold_scale_factor=0.0, **GEOM))
        loss = llama(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in llama.named_parameters() if p.grad is not None}

    ref_loss, ref = step("eager")
    loss, got = step("blasst")
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=2e-5, rtol=1e-3), name
