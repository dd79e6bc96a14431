"""attn_implementation="blasst" on a tiny randomly initialised DeepSeek-V3 (multi-head latent
attention in transformers' non-absorbed form: queries and keys of qk_nope + qk_rope values per head,
values of v_head_dim, so Dqk != Dv)."""

import pytest
import torch

import blasst
import blasst.hf

transformers = pytest.importorskip("transformers")
DeepseekV3Config = getattr(transformers, "DeepseekV3Config", None)
pytestmark = pytest.mark.skipif(DeepseekV3Config is None, reason="this transformers has no DeepSeek-V3")


@pytest.fixture
def deepseek():
    torch.manual_seed(0)
    cfg = DeepseekV3Config(vocab_size=128, hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
                           num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=32,
                           q_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=24,
                           max_position_embeddings=512, n_group=1, topk_group=1)
    return transformers.DeepseekV3ForCausalLM(cfg).eval()


def test_mla_logits_and_generation_match_eager(deepseek):
    ids = torch.randint(0, 128, (2, 60), generator=torch.Generator().manual_seed(1))
    deepseek.set_attn_implementation("eager")
    with torch.no_grad():
        ref = deepseek(ids).logits
        ref_gen = deepseek.generate(ids[:, :12], max_new_tokens=8, do_sample=False,
                                    attention_mask=torch.ones(2, 12, dtype=torch.long))
    blasst.hf.enable(deepseek, blasst.BlasstConfig(threshold_scale_factor=0.0, collect_stats=True, block_m=16,
                                                   block_n=16))
    with torch.no_grad():
        out = deepseek(ids).logits
        gen = deepseek.generate(ids[:, :12], max_new_tokens=8, do_sample=False,
                                attention_mask=torch.ones(2, 12, dtype=torch.long))
    assert (out - ref).abs().max() < 1e-4
    assert torch.equal(gen, ref_gen)
    summary = blasst.hf.summary(deepseek)
    assert summary["prefill"]["visited"] > 0 and summary["decode"]["visited"] > 0  # blasst ran both phases


def test_mla_skipping_reports_sparsity(deepseek):
    # peaked attention, as in trained models: larger query and latent key projections
    with torch.no_grad():
        for layer in deepseek.model.layers:
            layer.self_attn.q_b_proj.weight.mul_(60.0)
            layer.self_attn.kv_b_proj.weight.mul_(60.0)
    ids = torch.randint(0, 128, (1, 256), generator=torch.Generator().manual_seed(2))
    blasst.hf.enable(deepseek, blasst.BlasstConfig(threshold_scale_factor=50.0, collect_stats=True, block_m=16,
                                                   block_n=16))
    with torch.no_grad():
        out = deepseek(ids).logits
    assert torch.isfinite(out).all()
    summary = blasst.hf.summary(deepseek)
    assert summary["prefill"]["visited"] > 0
    assert 0 < summary["prefill"]["skipped"] < summary["prefill"]["visited"]
