"""Capture real post-RoPE Q/K/V of SmolLM2-135M-Instruct on real text, as .npy files for the CLI.

    python3 eval/capture_samples.py [--doc licenses] [--layers auto|A,B] [--out data/samples]

1. Survey (2048 tokens): records q/k/v of all 30 layers through the "blasst_capture" attention function
   (eager attention underneath) and writes layer_survey.json: per layer and head the attention mass on
   key 0 (sink), on the last 128 keys, the normalized entropy, and the BLASST prefill sparsity of the
   torch model of the rule (causal, Bm = Bn = 128, ascending) at a few threshold_scale_factors.
2. Picks a "sink" layer (largest mean sink mass) and a "diffuse" layer (largest normalized entropy),
   unless --layers names them, and within each the KV head whose query heads show it most.
3. Saves, as float16 in the CLI's layout (Q [1, L, Hq, 64], K/V [1, L, Hkv, 64]):
     sink layer:    all 9/3 heads at 2048 and 4096 tokens, one KV-head group (3 query heads) at 8192
     diffuse layer: one KV-head group at 2048 and 4096 tokens
   and manifest.json (source text and hashes, layer, heads, tokens, model, command).
The 4096/8192 forwards stop after the deepest layer needed. The tokens are the first L tokens of the
document, so the 2048 sample is a prefix of the 4096 one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_fns as af  # noqa: E402
import texts  # noqa: E402
from load_smollm2 import MODEL_NAME, find_gguf, load  # noqa: E402

SURVEY_FACTORS = [0.5, 2.0, 8.0, 32.0, 128.0]


def forward(model, ids: list[int], rec: af.Recorder) -> None:
    af.set_recorder(rec)
    try:
        with torch.no_grad():
            model(torch.tensor([ids]), use_cache=False)
    except af.StopForward:
        pass
    finally:
        af.set_recorder(None)


def layer_sparsity(q: torch.Tensor, k: torch.Tensor, factors) -> dict:
    """q [1, Hq, L, D], k [1, Hkv, L, D] fp32 -> {factor: [sparsity per query head]} (causal prefill)."""
    hq, lq, d = q.shape[1], q.shape[2], q.shape[3]
    g = hq // k.shape[1]
    kk = k.repeat_interleave(g, dim=1)[0]
    s = torch.matmul(q[0], kk.transpose(1, 2)) * (d ** -0.5)
    s = s.masked_fill(torch.ones(lq, lq, dtype=torch.bool).triu(1), float("-inf"))
    out = {}
    for f in factors:
        skip, visited = af.skip_tiles(s, lq, lq, f, 128, 128, "ascending")
        out[f] = (skip.sum(dim=(1, 2)).float() / visited.sum(dim=(1, 2)).float()).tolist()
    return out


def save_sample(outdir: str, name: str, q, k, v, kv_heads: list[int]) -> dict:
    """q [1, Hq, L, D] fp32 -> file Q [1, L, Hq', D] fp16 keeping the query heads of `kv_heads`."""
    hq, hkv = q.shape[1], k.shape[1]
    g = hq // hkv
    qh = [h for j in kv_heads for h in range(j * g, (j + 1) * g)]
    arrays = {"q": q[:, qh], "k": k[:, kv_heads], "v": v[:, kv_heads]}
    files, info = {}, {}
    for key, t in arrays.items():
        a = t.transpose(1, 2).contiguous().numpy()
        amax = float(np.abs(a).max())
        assert amax < 6e4, f"{key} exceeds the float16 range ({amax})"
        a16 = a.astype(np.float16)
        path = os.path.join(outdir, f"{name}_{key}.npy")
        np.save(path, a16)
        files[key] = os.path.basename(path)
        info[key] = {"shape": list(a16.shape), "max_abs": amax, "bytes": os.path.getsize(path),
                     "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    return {"files": files, "arrays": info, "query_heads": qh, "kv_heads": kv_heads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", default="licenses", choices=texts.available())
    ap.add_argument("--layers", default="auto", help="'auto' or 'SINK,DIFFUSE' layer indices")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "samples"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    outdir = os.path.abspath(args.out)
    os.makedirs(outdir, exist_ok=True)
    command = "python3 eval/capture_samples.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    af.register()
    t0 = time.time()
    model, tok = load(attn_implementation="blasst_capture")
    n_layers = model.config.num_hidden_layers
    ids8k = texts.token_ids(tok, args.doc, 8192)

    # 1. survey at 2048 tokens, all layers
    rec = af.Recorder(layers=set(range(n_layers)), stop_after=False, stats=True)
    forward(model, ids8k[:2048], rec)
    survey = {"model": MODEL_NAME, "document": texts.describe(args.doc), "tokens": 2048,
              "sparsity_note": "torch model of the rule: causal prefill, Bm=Bn=128, ascending",
              "factors": SURVEY_FACTORS, "layers": []}
    for layer in range(n_layers):
        q, k, _ = rec.qkv[layer]
        st = dict(rec.layer_stats[layer])
        st["layer"] = layer
        st["sparsity"] = {str(f): s for f, s in layer_sparsity(q, k, SURVEY_FACTORS).items()}
        survey["layers"].append(st)
        print(f"layer {layer:2d} sink {np.mean(st['sink_mass']):.3f} local {np.mean(st['local128_mass']):.3f} "
              f"ent {np.mean(st['norm_entropy']):.3f} sparsity@8 {np.mean(st['sparsity']['8.0']):.3f}", flush=True)
    print(f"survey done in {time.time() - t0:.0f} s", flush=True)

    if args.layers == "auto":
        sink_layer = int(np.argmax([np.mean(s["sink_mass"]) for s in survey["layers"]]))
        ent = [np.mean(s["norm_entropy"]) if s["layer"] != sink_layer else -1 for s in survey["layers"]]
        diffuse_layer = int(np.argmax(ent))
    else:
        sink_layer, diffuse_layer = (int(x) for x in args.layers.split(","))
    g = model.config.num_attention_heads // model.config.num_key_value_heads

    def best_kv(layer: int, key: str, sign: float) -> int:
        per_q = np.array(survey["layers"][layer][key])
        return int(np.argmax(sign * per_q.reshape(-1, g).mean(axis=1)))

    sink_kv = best_kv(sink_layer, "sink_mass", 1.0)
    diffuse_kv = best_kv(diffuse_layer, "norm_entropy", 1.0)
    survey["picked"] = {"sink": {"layer": sink_layer, "kv_head": sink_kv},
                        "diffuse": {"layer": diffuse_layer, "kv_head": diffuse_kv}}
    with open(os.path.join(outdir, "layer_survey.json"), "w") as f:
        json.dump(survey, f, indent=1)
    print(f"picked sink layer {sink_layer} (kv head {sink_kv}), diffuse layer {diffuse_layer} (kv head {diffuse_kv})")

    plan = [  # (tokens, layer, role, kv heads)
        (2048, sink_layer, "sink", [0, 1, 2]), (4096, sink_layer, "sink", [0, 1, 2]),
        (8192, sink_layer, "sink", [sink_kv]),
        (2048, diffuse_layer, "diffuse", [diffuse_kv]), (4096, diffuse_layer, "diffuse", [diffuse_kv]),
    ]
    samples = []
    captured = {2048: rec.qkv}
    for n in (4096, 8192):
        want = {layer for (t, layer, _, _) in plan if t == n}
        t1 = time.time()
        r = af.Recorder(layers=want)
        forward(model, ids8k[:n], r)
        captured[n] = r.qkv
        print(f"{n} tokens: layers {sorted(want)} captured in {time.time() - t1:.0f} s", flush=True)
    for n, layer, role, kvh in plan:
        q, k, v = captured[n][layer]
        tag = "all" if len(kvh) == 3 else f"kv{kvh[0]}"
        name = f"smollm2_{args.doc}_L{layer}_{tag}_{n}"
        entry = {"name": name, "role": role, "layer": layer, "tokens": n, "token_offset": 0,
                 "causal": True, "scale": 0.125, "dtype": "float16", "layout": "[1, L, H, 64]"}
        entry.update(save_sample(outdir, name, q, k, v, kvh))
        samples.append(entry)
        print(f"saved {name}: {sum(a['bytes'] for a in entry['arrays'].values()) / 1e6:.2f} MB")
    manifest = {"model": MODEL_NAME, "gguf": os.path.basename(find_gguf()),
                "gguf_sha256": hashlib.sha256(open(find_gguf(), "rb").read()).hexdigest(),
                "model_dtype": "float32 (dequantized Q4_1), samples rounded to float16",
                "attention": "transformers eager (q/k after RoPE, as fed to softmax(q k^T * 0.125))",
                "document": texts.describe(args.doc), "command": command,
                "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                "samples": samples}
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
