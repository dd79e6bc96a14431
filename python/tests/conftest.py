"""Shared fixtures: small structured inputs and a tiny randomly initialised Llama (no download)."""

import csv
import importlib.util
import os
import pathlib

# Without a GPU, Triton kernels (blasst's Triton backward) run in Triton's interpreter; it must be
# chosen before Triton is first imported.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


def structured_qkv(batch, lq, lk, hq, hkv, d, dv=None, dtype=torch.float32, spread=1.0, sink=16.0, seed=0):
    """q [B, Lq, Hq, D], k [B, Lk, Hkv, D], v [B, Lk, Hkv, Dv] with an attention sink: key 0 adds
    about `sink` to every score (scale 1/sqrt(D)), the other scores are noise of std ~spread^2,
    so that many tiles are skippable at moderate thresholds."""
    g = torch.Generator().manual_seed(seed)
    dv = dv or d
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    q = torch.randn(batch, lq, hq, d, generator=g) * spread + u * d ** 0.5
    k = torch.randn(batch, lk, hkv, d, generator=g) * spread
    v = torch.randn(batch, lk, hkv, dv, generator=g)
    k[:, 0] = u * sink
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rounded_backward(q, k, v, out, dout, lse, dlse, kept, bm, bn, causal, dtype=torch.float16, entry=0):
    """fp64 gradients [dq, dk, dv] of one batch entry (each [1, L, H, D]) over the kept tiles, with P and
    dS rounded to `dtype` before their products, as every fused 16-bit backward rounds them: their
    error against the exact gradients is the floor a fused kernel's tolerance scales from (NaN inputs
    read as 0: only the scale matters). q [B, Lq, Hq, D], kept [B, Hq, RB, KT] of bm x bn tiles."""
    q, k, v, out, lse = (torch.nan_to_num(t) for t in (q, k, v, out, lse))
    g = q.shape[2] // k.shape[2]
    qd, dod = (t[entry].double().transpose(0, 1) for t in (q, dout))              # [Hq, Lq, D]
    kd, vd = (t[entry].double().transpose(0, 1).repeat_interleave(g, 0) for t in (k, v))
    lq, lk = q.shape[1], k.shape[1]
    mask = kept[entry][:, torch.arange(lq) // bm][:, :, torch.arange(lk) // bn]
    if causal:
        mask = mask & (torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + lk - lq)
    s = qd @ kd.transpose(-1, -2) * q.shape[-1] ** -0.5
    p = torch.where(mask, torch.exp(s - lse[entry].double().transpose(0, 1)[..., None]), 0.0)
    big_d = (out[entry].double().transpose(0, 1) * dod).sum(-1, keepdim=True)
    if dlse is not None:
        big_d = big_d - dlse[entry].double().transpose(0, 1)[..., None]
    ds = (p * (dod @ vd.transpose(-1, -2) - big_d)).to(dtype).double()
    p = p.to(dtype).double()
    scale = q.shape[-1] ** -0.5
    dq = ds @ kd * scale
    dk = (ds.transpose(-1, -2) @ qd * scale).unflatten(0, (-1, g)).sum(1)
    dv = (p.transpose(-1, -2) @ dod).unflatten(0, (-1, g)).sum(1)
    return [t.transpose(0, 1)[None] for t in (dq, dk, dv)]


def plant_nan(where, q, k, v, row, key, device="cpu", **run_kw):
    """One NaN, in place, for the tests of where NaN reaches the gradients (one entry, prefill):
    'skipped value' puts it into v at a key of the last tile that every decision group skipped in a
    forward with run_kw on `device`; 'query row' into q's `row` (query head 1); 'key' into k's `key`."""
    from blasst import _core, _lib, autograd

    if where == "skipped value":
        _, _, _, decisions, info = _core.run(_lib.PHASE_PREFILL, *(t.to(device) for t in (q, k, v)),
                                             return_decisions=True, **run_kw)
        kept = autograd.kept_tiles(_lib.PHASE_PREFILL, decisions, info, 1, q.shape[2], k.shape[2], q.shape[1],
                                   k.shape[1])
        skipped_everywhere = [t for t in range(kept.shape[3]) if not kept[..., t].any()]
        assert skipped_everywhere, "the case should have a tile that no group kept"
        v[0, skipped_everywhere[-1] * info.block_n + 5, 0, 2] = float("nan")
    elif where == "query row":
        q[0, row, 1, 3] = float("nan")
    else:
        k[0, key, 0, 1] = float("nan")


def sdpa_reference(q, k, v, causal=True, scale=None, key_mask=None):
    """fp64 attention with bottom-right causal alignment; q [B, Lq, Hq, D] etc. key_mask
    [B, Hq, Lq, Lk] bool of keys to keep (on top of causality)."""
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    g = qd.shape[1] // kd.shape[1]
    kd = kd.repeat_interleave(g, dim=1)
    vd = vd.repeat_interleave(g, dim=1)
    scale = scale or q.shape[-1] ** -0.5
    s = (qd @ kd.transpose(-1, -2)) * scale
    lq, lk = q.shape[1], k.shape[1]
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        allowed = torch.arange(lk)[None, :] <= (torch.arange(lq)[:, None] + lk - lq)
    allowed = allowed.expand_as(s)
    if key_mask is not None:
        allowed = allowed & key_mask
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return (p @ vd).transpose(1, 2)


def tiny_llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6)
    base.update(kw)
    return LlamaConfig(**base)


def tiny_llama(sharpen=1.0, seed=0, **kw):
    """A tiny random Llama; sharpen > 1 scales the q/k projections so attention is peaked (as in
    trained models) and skipping happens."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**kw)).eval()
    if sharpen != 1.0:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(sharpen)
                layer.self_attn.k_proj.weight.mul_(sharpen)
    return model


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def sharp_llama():
    return tiny_llama(sharpen=32.0)


# Columns of the benchmark CSVs under bench/results/ (gpu_bench.py, gpu_decode_bench.py).
BENCH_CSV_FIELDS = ["gpu", "date", "commit", "phase", "kernel", "dtype", "batch", "lq", "lk", "hq", "hkv", "d",
                    "causal", "sf", "sparsity", "ms", "tflops", "gbs"]


def load_bench_script(name):
    """The module bench/<name>.py (the bench folder is not a package)."""
    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_bench_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=BENCH_CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)


def assert_no_rows_of_commit(script, csv_path, phase):
    """A target script asked for a commit the CSV lacks exits naming the commit and the phase."""
    with pytest.raises(SystemExit) as e:
        script.main(["--csv", str(csv_path), "--commit", "nope"])
    assert f"no {phase} rows of commit nope" in str(e.value)
