"""attn_implementation="blasst" against "sdpa" over transformers' cache classes: forward passes
(a prefill then teacher-forced decode steps) and generate(), batch 1 and left- or right-padded
batches. Logits are compared on valid tokens: rows of padding tokens come out zero under BLASST,
as under flash_attention_2, where SDPA computes values nothing uses."""

import inspect

import pytest
import torch

import blasst
import blasst.hf
from conftest import tiny_llama

GEOM = dict(block_m=16, block_n=16)
PROMPT, STEPS, MAX_CACHE = 14, 3, 40
LENGTHS = [14, 9, 5]  # valid tokens per entry of a padded batch


def make_cache(kind, model, max_cache=MAX_CACHE):
    from transformers import DynamicCache, QuantizedCache, StaticCache

    if kind == "dynamic":
        return DynamicCache(config=model.config)
    if kind == "static":
        return StaticCache(config=model.config, max_cache_len=max_cache)
    if kind == "quantized-fp8":
        return fp8_cache(model)
    if kind == "quantized-quanto":
        pytest.importorskip("optimum.quanto", reason="the quanto backend of QuantizedCache needs optimum-quanto")
        return QuantizedCache("quanto", config=model.config, residual_length=4)
    raise ValueError(kind)


def fp8_cache(model):
    """QuantizedCache's fp8 backend, which needs no optional package (recent transformers only)."""
    from transformers import QuantizedCache

    try:
        return QuantizedCache("fp8", config=model.config)
    except ValueError as e:
        if "backend" not in str(e):
            raise
        pytest.skip(f"this transformers has no fp8 backend of QuantizedCache ({e})")


def prompt(padding, vocab=96):
    """ids [B, PROMPT] and the 2D attention mask (None for batch 1)."""
    g = torch.Generator().manual_seed(7)
    if padding == "none":
        return torch.randint(0, vocab, (1, PROMPT), generator=g), None
    ids = torch.randint(0, vocab, (len(LENGTHS), PROMPT), generator=g)
    mask = torch.zeros(len(LENGTHS), PROMPT, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        if padding == "left":
            mask[b, PROMPT - n:] = 1
        else:
            mask[b, :n] = 1
    return ids, mask


def cache_arg(model):
    """The forward argument that takes the KV cache: `cache` in current transformers, where
    `past_key_values` is deprecated, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def forward_steps(model, impl, cache_kind, ids, mask, steps=STEPS, vocab=96, max_cache=MAX_CACHE, compiled=False):
    """Logits of a prefill and `steps` decode steps of one given token per entry."""
    model.set_attn_implementation(impl)
    cache = make_cache(cache_kind, model, max_cache)
    call = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
    kw = {cache_arg(model): cache, "use_cache": True}
    g = torch.Generator().manual_seed(11)
    out = []
    with torch.no_grad():
        out.append(call(ids, attention_mask=mask, **kw).logits)
        for _ in range(steps):
            token = torch.randint(0, vocab, (ids.shape[0], 1), generator=g)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out.append(call(token, attention_mask=mask, **kw).logits)
    return out


def assert_steps_close(out, ref, mask, tol=1e-4):
    valid = torch.ones(ref[0].shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    assert (out[0] - ref[0])[valid].abs().max() < tol  # prefill, valid tokens
    for step, (o, r) in enumerate(zip(out[1:], ref[1:])):
        assert (o - r).abs().max() < tol, f"decode step {step}"


def cases(caches):
    """(cache, padding) pairs. A quantized cache takes its scales from all the keys it is given,
    padding tokens' included, and with right padding those come out of rows that only SDPA
    computes: the two runs then quantize differently, so right padding is left out for them."""
    return [(c, p) for c in caches for p in ("none", "left", "right")
            if not (c.startswith("quantized") and p == "right")]


@pytest.mark.parametrize("cache,padding", cases(["dynamic", "static", "quantized-fp8", "quantized-quanto"]))
def test_forward_matches_sdpa(cache, padding):
    model = tiny_llama()
    ids, mask = prompt(padding)
    ref = forward_steps(model, "sdpa", cache, ids, mask)
    blasst.hf.enable(model, blasst.BlasstConfig(**GEOM))
    out = forward_steps(model, "blasst", cache, ids, mask)
    assert_steps_close(out, ref, mask)


GENERATE = {
    "dynamic": {},
    "static": {"cache_implementation": "static"},
    "quantized-fp8": {"cache_implementation": "quantized", "cache_config": {"backend": "fp8"}},
}


def generate(model, impl, ids, mask, **kw):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0,
                              return_dict_in_generate=True, output_logits=True, **kw)


@pytest.mark.parametrize("cache,padding", cases(sorted(GENERATE)))
def test_generate_matches_sdpa(cache, padding):
    model = tiny_llama()
    if cache == "quantized-fp8":
        fp8_cache(model)
    ids, mask = prompt(padding)
    ref = generate(model, "sdpa", ids, mask, **GENERATE[cache])
    blasst.hf.enable(model, blasst.BlasstConfig(**GEOM))
    out = generate(model, "blasst", ids, mask, **GENERATE[cache])
    # Right padding: the first new token of a padded entry comes from a padding row (transformers
    # warns), which only SDPA computes; entries without padding must still agree.
    entries = [0] if padding == "right" else list(range(ids.shape[0]))
    assert torch.equal(out.sequences[entries], ref.sequences[entries])
    for o, r in zip(out.logits, ref.logits):
        assert (o[entries] - r[entries]).abs().max() < 1e-4


def test_compiled_forward_with_static_cache_and_mask():
    """torch.compile(model, fullgraph=True) with a static cache and a 2D mask: the mask is built
    inside the graph, where the cache position is a tensor and nothing is read on the host."""
    model = tiny_llama()
    ids, mask = prompt("left")
    ref = forward_steps(model, "sdpa", "static", ids, mask)
    blasst.hf.enable(model, blasst.BlasstConfig(**GEOM))
    out = forward_steps(model, "blasst", "static", ids, mask, compiled=True)
    assert_steps_close(out, ref, mask)


def test_compiled_static_cache_generate_matches_sdpa():
    """generate() with a static cache and its decode steps compiled with fullgraph=True, as
    transformers does on GPUs (the mask is built ahead of each step, outside the graph)."""
    from transformers import CompileConfig

    model = tiny_llama()
    ids, mask = prompt("left")
    config = CompileConfig(fullgraph=True, backend="aot_eager", mode=None, dynamic=False)
    config._compile_all_devices = True  # transformers compiles on accelerators only by default
    kw = dict(cache_implementation="static", compile_config=config)
    ref = generate(model, "sdpa", ids, mask, **kw)
    blasst.hf.enable(model, blasst.BlasstConfig(**GEOM))
    out = generate(model, "blasst", ids, mask, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    for o, r in zip(out.logits, ref.logits):
        assert (o - r).abs().max() < 1e-4


def test_static_cache_uses_the_real_key_length_for_skipping(sharp_llama):
    """lambda = factor / Lk and the causal diagonal use the keys written so far, not the static
    cache's length: skipping decisions and logits equal the dynamic cache's."""
    ids = torch.randint(0, 96, (1, 100), generator=torch.Generator().manual_seed(3))
    results = {}
    for cache in ("dynamic", "static"):
        blasst.hf.enable(sharp_llama, blasst.BlasstConfig(threshold_scale_factor=50.0, collect_stats=True, **GEOM))
        logits = forward_steps(sharp_llama, "blasst", cache, ids, None, steps=2, max_cache=256)
        summary = blasst.hf.summary(sharp_llama)
        results[cache] = (logits, {p: (s["visited"], s["skipped"]) for p, s in summary.items()})
    (dyn_logits, dyn_stats), (st_logits, st_stats) = results["dynamic"], results["static"]
    assert dyn_stats["prefill"][1] > 0  # the threshold does skip tiles
    assert st_stats == dyn_stats
    for d, s in zip(dyn_logits, st_logits):
        assert (d - s).abs().max() < 1e-5


def tiny_mistral(window):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                        max_position_embeddings=256)
    return MistralForCausalLM(cfg).eval()


@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_sliding_window_cache_decodes_past_the_window(cache, padding):
    """Sliding-window layers run exactly while the window hides no key: a prompt shorter than
    the window, then one-token steps, where the sliding cache hands over the window's keys."""
    model = tiny_mistral(window=16)
    ids, mask = prompt(padding)  # 14 tokens, then 6 steps reach position 19
    ref = forward_steps(model, "sdpa", cache, ids, mask, steps=6)
    blasst.hf.enable(model, blasst.BlasstConfig(**GEOM))
    out = forward_steps(model, "blasst", cache, ids, mask, steps=6)
    assert_steps_close(out, ref, mask)


def test_sliding_window_that_hides_keys_is_refused():
    model = tiny_mistral(window=16)
    blasst.hf.enable(model, blasst.BlasstConfig())
    ids, _ = prompt("none")
    kw = {cache_arg(model): make_cache("dynamic", model), "use_cache": True}
    with torch.no_grad():
        model(ids, **kw)
        # a 6-token chunk after 14 cached tokens: its last rows lose the first keys to the window
        with pytest.raises(blasst.hf.UnsupportedMaskError, match="sliding window of 16"):
            model(ids[:, :6], **kw)
