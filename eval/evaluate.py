"""Accuracy of BLASST attention on SmolLM2-135M-Instruct against dense attention.

Tasks (all prefill: one causal forward per input, nothing decoded token by token):
  ppl      perplexity of the next tokens of long real texts (eval/texts.py), and the KL divergence
           KL(dense || method) of the next-token distributions, mean over positions (also over the
           second half only, where there are enough tiles to skip), and top-1 agreement with dense.
  passkey  a 5-digit pass key hidden at several depths of filler text; the answer is scored with teacher
           forcing: correct iff every answer token is the argmax given the true prefix, which is exactly
           when greedy decoding would print the key.

Attention backends (--backend, repeatable):
  dense     transformers' eager attention (or --dense-impl sdpa); the reference every method is compared to
  torchref  eval/attention_fns.py's torch model of the SPEC rule (prefill, Bm x Bn tiles, --order),
            slow but available without the library
  blasst    the library through the Python package: blasst.hf.enable(model, BlasstConfig(...)),
            i.e. attn_implementation="blasst"; statistics from blasst.hf.summary()
Each non-dense backend runs once per --factors value (threshold_scale_factor; lambda = factor / Lk).

Output: <out>.csv (one row per run), <out>.json (rows + the settings, model and machine) and <out>.png.

Example (a few minutes on 2 CPU cores):
  python3 eval/evaluate.py --backend torchref --factors 4,16,64 --docs licenses --tokens 2048 \\
      --passkey-lengths 2048 --passkey-depths 0.1,0.5,0.9
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import attention_fns as af  # noqa: E402
import texts  # noqa: E402

# --------------------------------------------------------------------------- backends


class Backend:
    """Switches the loaded model to one attention implementation and reports the sparsity of the last
    forward. `configure(factor)` is called before each forward with the threshold_scale_factor."""

    name = "dense"

    def __init__(self, model, args):
        self.model, self.args = model, args

    def configure(self, factor: float) -> None:
        self.model.set_attn_implementation(self.args.dense_impl)

    def reset(self) -> None:
        pass

    def sparsity(self) -> float | None:
        return 0.0


class TorchRefBackend(Backend):
    name = "torchref"

    def configure(self, factor: float) -> None:
        af.register()
        self.cfg = af.SkipConfig(factor=factor, bm=self.args.block, bn=self.args.block, order=self.args.order)
        af.set_skip_config(self.cfg)
        self.model.set_attn_implementation("blasst_torchref")

    def reset(self) -> None:
        self.cfg.counts.clear()

    def sparsity(self) -> float | None:
        return self.cfg.sparsity()


class BlasstBackend(Backend):
    """The project's Python package (python/blasst). Import fails cleanly when it is not installed:
    build it with `pip install /work/main` (or put python/ on PYTHONPATH with the native library built)."""

    name = "blasst"

    def __init__(self, model, args):
        super().__init__(model, args)
        import blasst  # noqa: F401
        import blasst.hf
        self.hf = blasst.hf
        self.BlasstConfig = blasst.BlasstConfig

    def configure(self, factor: float) -> None:
        cfg = self.BlasstConfig(threshold_scale_factor={"prefill": factor, "decode": factor},
                                order=self.args.order, block_m=self.args.block, block_n=self.args.block,
                                engine=self.args.engine, collect_stats=True)
        self.hf.enable(self.model, cfg)

    def reset(self) -> None:
        self.hf.reset_stats(self.model)

    def sparsity(self) -> float | None:
        s = self.hf.summary(self.model).get("prefill")
        return s["sparsity"] if s else None


BACKENDS = {"dense": Backend, "torchref": TorchRefBackend, "blasst": BlasstBackend}

# --------------------------------------------------------------------------- tasks


def logprobs(model, ids: list[int], device: str) -> torch.Tensor:
    """[L, V] float32 log-softmax of the next-token logits for every position."""
    with torch.no_grad():
        out = model(torch.tensor([ids], device=device), use_cache=False)
    return torch.log_softmax(out.logits[0].float(), dim=-1).cpu()


def ppl_metrics(lp: torch.Tensor, ids: list[int], ref: torch.Tensor | None) -> dict:
    """lp, ref [L, V] log-probs; ids [L]. NLL over positions 0..L-2 predicting ids[1:]."""
    tgt = torch.tensor(ids[1:])
    nll = -lp[:-1].gather(1, tgt[:, None])[:, 0]
    half = nll.shape[0] // 2
    m = {"ppl": float(torch.exp(nll.mean())), "ppl_tail": float(torch.exp(nll[half:].mean()))}
    if ref is not None:
        kl = (ref.exp() * (ref - lp)).sum(-1)[:-1].clamp_min(0)
        m.update({"kl_mean": float(kl.mean()), "kl_tail": float(kl[half:].mean()), "kl_max": float(kl.max()),
                  "top1_agree": float((lp[:-1].argmax(-1) == ref[:-1].argmax(-1)).float().mean())})
    return m


FILLER = ("The morning was quiet and the road ran on between the fields. A few birds crossed the pale sky, "
          "and the wind moved slowly through the grass. ")
PREFIX = ("Somewhere in the long text below there is a pass key. Read everything, find the pass key and "
          "remember it, because you will be asked for it at the end.\n\n")
QUESTION = "\n\nWhat is the pass key? The pass key is"


def passkey_input(tok, length: int, depth: float, key: str) -> tuple[list[int], int]:
    """Token ids of exactly `length` tokens and the index where the answer starts. The needle goes to the
    filler sentence boundary nearest to `depth` (0 = start of the filler, 1 = end)."""
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pre, unit, q = enc(PREFIX), enc(FILLER), enc(QUESTION)
    needle = enc(f"The pass key is {key}. Remember it. {key} is the pass key. ")
    answer = enc(f" {key}")
    n_fill = length - len(pre) - len(needle) - len(q) - len(answer)
    if n_fill < len(unit):
        raise ValueError(f"passkey length {length} too short")
    reps = n_fill // len(unit) + 1
    filler = (unit * reps)[:n_fill]
    cut = min(round(depth * n_fill / len(unit)) * len(unit), n_fill)
    ids = pre + filler[:cut] + needle + filler[cut:] + q + answer
    assert len(ids) == length
    return ids, length - len(answer)


def passkey_metrics(lp: torch.Tensor, ids: list[int], start: int) -> dict:
    ans = torch.tensor(ids[start:])
    pos = torch.arange(start - 1, len(ids) - 1)
    pred = lp[pos].argmax(-1)
    return {"passkey_correct": int(bool((pred == ans).all())),
            "passkey_digits_correct": float((pred == ans).float().mean()),
            "answer_logprob": float(lp[pos, ans].sum())}


# --------------------------------------------------------------------------- driver


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def run(args) -> list[dict]:
    from load_smollm2 import load
    torch.set_num_threads(args.threads)
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model, tok = load(device=args.device, dtype=dtype, attn_implementation="eager")
    backends = [BACKENDS[b](model, args) for b in args.backend if b != "dense"]
    dense = Backend(model, args)

    inputs = []  # (task, label fields, ids, answer start)
    for doc in args.docs:
        for n in args.tokens:
            inputs.append(("ppl", {"doc": doc, "tokens": n}, texts.token_ids(tok, doc, n), None))
    for n in args.passkey_lengths:
        for i, depth in enumerate(args.passkey_depths):
            key = f"{random.Random(args.seed * 1000 + n + i).randrange(10000, 100000)}"
            ids, start = passkey_input(tok, n, depth, key)
            inputs.append(("passkey", {"doc": "filler", "tokens": n, "depth": depth, "key": key}, ids, start))

    rows = []
    for task, label, ids, start in inputs:
        runs = [(dense, 0.0)] + [(b, f) for b in backends for f in args.factors]
        ref = None
        for backend, factor in runs:
            backend.configure(factor)
            backend.reset()
            t0 = time.time()
            lp = logprobs(model, ids, args.device)
            secs = time.time() - t0
            row = {"task": task, **label, "backend": backend.name,
                   "order": args.order if backend.name != "dense" else args.dense_impl,
                   "factor": factor, "sparsity": backend.sparsity(), "seconds": round(secs, 2)}
            if task == "ppl":
                row.update(ppl_metrics(lp, ids, ref if backend is not dense else None))
            else:
                row.update(passkey_metrics(lp, ids, start))
                if ref is not None:
                    row["kl_mean"] = float((ref.exp() * (ref - lp)).sum(-1)[:-1].clamp_min(0).mean())
            if backend is dense:
                ref = lp
            rows.append(row)
            print(json.dumps(row), flush=True)
        del ref
    return rows


FIELDS = ["task", "doc", "tokens", "depth", "key", "backend", "order", "factor", "sparsity", "ppl", "ppl_tail",
          "kl_mean", "kl_tail", "kl_max", "top1_agree", "passkey_correct", "passkey_digits_correct",
          "answer_logprob", "seconds"]


def write(rows: list[dict], args, out: str) -> None:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    from load_smollm2 import MODEL_NAME
    meta = {"model": MODEL_NAME, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "commands": getattr(args, "previous_commands", []) + [
                "python3 eval/evaluate.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])],
            "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
            "device": args.device, "dtype": args.dtype, "dense_impl": args.dense_impl, "threads": args.threads, "block": args.block,
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "texts": {d: texts.describe(d) for d in args.docs}}
    with open(out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    plot(rows, out + ".png")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ppl = [r for r in rows if r["task"] == "ppl" and r["backend"] != "dense" and r.get("sparsity") is not None]
    series = sorted({(r["backend"], r["order"], r["doc"], r["tokens"]) for r in ppl})
    for b, o, d, n in series:
        pts = sorted((r["sparsity"], r["kl_mean"], r["ppl"]) for r in ppl
                     if (r["backend"], r["order"], r["doc"], r["tokens"]) == (b, o, d, n))
        dense_ppl = next(r["ppl"] for r in rows if r["task"] == "ppl" and r["backend"] == "dense"
                         and r["doc"] == d and r["tokens"] == n)
        lab = f"{b}/{o} {d} {n}"
        style = "x--" if b == "torchref" else "o-"   # torchref and blasst coincide where both ran
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, label=lab)
        axes[1].plot([0] + [p[0] for p in pts], [0] + [p[2] / dense_ppl - 1 for p in pts], style, label=lab)
    axes[0].set(xlabel="sparsity (skipped / visited tiles)", ylabel="KL(dense || method), nats/token",
                title="next-token KL vs sparsity", yscale="log")
    axes[1].set(xlabel="sparsity", ylabel="relative perplexity change", title="perplexity vs sparsity")
    pk = [r for r in rows if r["task"] == "passkey"]
    # torchref and blasst make the same decisions (checked tile for tile): one series per (order, factor)
    gkey = lambda r: ("dense" if r["backend"] == "dense" else "blasst|torchref",  # noqa: E731
                      r["order"] if r["backend"] != "dense" else "", r["factor"])
    lengths = sorted({r["tokens"] for r in pk})
    for i, g in enumerate(sorted({gkey(r) for r in pk})):
        xs, acc = [], []
        for n in lengths:
            sel = [r["passkey_correct"] for r in pk if gkey(r) == g and r["tokens"] == n]
            if sel:
                xs.append(n)
                acc.append(sum(sel) / len(sel))
        b, o, f = g
        # small vertical offsets keep overlapping series visible
        axes[2].plot(xs, [a + 0.012 * (i - 3) for a in acc], "o-", label=f"{b}" + (f"/{o} f={f:g}" if b != "dense" else ""))
    axes[2].set(xlabel="context tokens", ylabel="pass key accuracy (fraction of depths)", title="pass key retrieval",
                ylim=(-0.1, 1.1))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M-Instruct (Q4_1 GGUF): BLASST vs dense attention, prefill, causal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    csvlist = lambda t: lambda s: [t(x) for x in s.split(",") if x]  # noqa: E731
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", action="append", choices=list(BACKENDS),
                    help="attention backend(s) to compare with dense (repeatable; default: torchref)")
    ap.add_argument("--factors", type=csvlist(float), default=[4.0, 16.0, 64.0],
                    help="threshold_scale_factor values for the non-dense backends (default 4,16,64)")
    ap.add_argument("--order", default="ascending", choices=["ascending", "anchored"])
    ap.add_argument("--dense-impl", default="eager", choices=["eager", "sdpa"],
                    help="dense reference: eager (default) or sdpa (same math, much faster at 4K/8K on CPU)")
    ap.add_argument("--block", type=int, default=128, help="Bm = Bn tile size (default 128)")
    ap.add_argument("--engine", default="auto", choices=["auto", "cpu", "cuda"], help="blasst backend engine")
    ap.add_argument("--docs", type=csvlist(str), default=["licenses"],
                    help=f"documents for ppl/KL, from {texts.available()}")
    ap.add_argument("--tokens", type=csvlist(int), default=[2048], help="context lengths for ppl/KL")
    ap.add_argument("--passkey-lengths", type=csvlist(int), default=[2048], help="passkey prompt lengths ('' = none)")
    ap.add_argument("--passkey-depths", type=csvlist(float), default=[0.1, 0.5, 0.9])
    ap.add_argument("--seed", type=int, default=0, help="pass key digits")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "smollm2_eval"),
                    help="output path without extension (.csv, .json, .png are written)")
    ap.add_argument("--plot-only", action="store_true", help="redraw <out>.png from <out>.json")
    ap.add_argument("--append", action="store_true",
                    help="merge into an existing <out>.json/.csv (rows with the same task/input/backend/order/factor are replaced)")
    args = ap.parse_args()
    if args.plot_only:
        with open(args.out + ".json") as f:
            plot(json.load(f)["rows"], args.out + ".png")
        return
    args.backend = args.backend or ["torchref"]
    rows = run(args)
    if args.append and os.path.exists(args.out + ".json"):
        # new rows replace old ones with the same key (the dense reference is recomputed every run)
        key = lambda r: tuple(r.get(k) for k in ("task", "doc", "tokens", "depth", "backend", "order", "factor"))  # noqa: E731
        with open(args.out + ".json") as f:
            old = json.load(f)
        new_keys = {key(r) for r in rows}
        rows = [r for r in old["rows"] if key(r) not in new_keys] + rows
        args.previous_commands = old["meta"].get("commands", [old["meta"].get("command")])
    write(rows, args, args.out)


if __name__ == "__main__":
    main()
