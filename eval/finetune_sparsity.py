#!/usr/bin/env python3
"""Sparsity-aware fine-tuning of SmolLM2-135M-Instruct: the same fine-tuning run in two arms, from the
same weights, on the same token windows in the same order, with the same seed, steps and learning
rate:

  sparse   attention through blasst with skipping on at --factor (or the shipped calibration's
           factor for --target), so the gradients flow over the kept tiles (blasst.autograd);
  dense    the control: the same blasst attention at threshold 0 (exact dense attention).

Training text is disjoint from the evaluation's (eval/texts.py): license texts of Debian's base-files
that the evaluation does not read. Each arm writes <out>/<arm>.pt (the model's state dict) and
<out>/<arm>.json (per step: loss, and for the sparse arm the prefill sparsity). Measure the models
afterwards with the existing evaluation, e.g.

    python3 eval/evaluate.py --backend blasst --targets 0,0.5,0.7,0.8,0.9 --state-dict <out>/sparse.pt ...

for the base model (no --state-dict), the control and the sparsity-tuned model, and compare their
perplexity and pass key accuracy against sparsity.

    python3 eval/finetune_sparsity.py --out runs/ft [--arms sparse,dense] [--steps 300] [--length 1024]
        [--lr 2e-5] [--factor F | --lambda L | --target 0.8] [--device cpu|cuda] [--seed 0] [--amp auto|on|off]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))

import texts  # noqa: E402
from evaluate import DEFAULT_CALIBRATION, load_formulas  # noqa: E402

# License texts of base-files that eval/texts.py does not use (it reads GPL-3 and GFDL-1.3; their
# earlier versions GPL-2 and GFDL-1.2 are left out too, being near copies).
TRAIN_FILES = ("Apache-2.0", "Artistic", "MPL-1.1", "MPL-2.0", "LGPL-2.1", "BSD", "CC0-1.0")
LICENSES = "/usr/share/common-licenses"


def training_tokens(tokenizer) -> torch.Tensor:
    parts = []
    for name in TRAIN_FILES:
        path = texts.located(os.path.join(LICENSES, name))  # under $BLASST_TEXT_ROOT when set
        if not os.path.isfile(path):
            raise SystemExit(f"training text {path} is missing (Debian package base-files)")
        with open(path, encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
    return torch.tensor(tokenizer("\n\n".join(parts))["input_ids"], dtype=torch.long)


def windows(tokens: torch.Tensor, length: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """The token windows [batch, length] of every step, drawn once so that both arms see the same."""
    if tokens.numel() <= length:
        raise SystemExit(f"--length {length}: the training text has only {tokens.numel()} tokens")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - length, (steps, batch), generator=g)
    return [torch.stack([tokens[s:s + length] for s in row.tolist()]) for row in starts]


def train_arm(arm: str, factor: float, batches: list[torch.Tensor], args) -> dict:
    import blasst
    import blasst.hf
    from load_smollm2 import load_model
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    model = load_model(device=args.device, attn_implementation="eager")
    config = blasst.BlasstConfig(threshold_scale_factor={"prefill": factor, "decode": factor}, collect_stats=True,
                                 block_m=args.block, block_n=args.block, order=args.order)
    blasst.hf.enable(model, config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    log = {"arm": arm, "factor": factor, "steps": []}
    started = time.time()
    for step, ids in enumerate(tqdm(batches, desc=arm, disable=args.no_progress)):
        ids = ids.to(args.device)
        blasst.hf.reset_stats(model)
        # bf16 compute with float32 weights and optimizer state: an update of lr x grad is far below
        # a bf16 weight's resolution, so the weights themselves must stay float32
        with torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.amp):
            loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        summary = blasst.hf.summary(model).get("prefill", {})
        value = loss.item()
        log["steps"].append({"step": step, "loss": value, "sparsity": summary.get("sparsity", 0.0)})
        if not math.isfinite(value):
            raise SystemExit(f"{arm}: the loss is {value} at step {step}")
    log["seconds"] = time.time() - started
    blasst.hf.disable(model, "eager")
    torch.save(model.state_dict(), os.path.join(args.out, f"{arm}.pt"))
    with open(os.path.join(args.out, f"{arm}.json"), "w") as f:
        json.dump(log, f, indent=1)
    return log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for <arm>.pt and <arm>.json")
    ap.add_argument("--arms", default="sparse,dense", help="comma list of sparse, dense")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--length", type=int, default=1024, help="tokens per training window")
    ap.add_argument("--batch", type=int, default=1, help="windows per step")
    ap.add_argument("--lr", type=float, default=2e-5)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--factor", type=float, help="prefill threshold_scale_factor of the sparse arm")
    g.add_argument("--lambda", dest="lam", type=float,
                   help="the sparse arm's lambda at the training length: factor = lambda x --length")
    g.add_argument("--target", type=float, default=0.8,
                   help="target prefill sparsity of the sparse arm, through the shipped calibration")
    ap.add_argument("--calibration", default=DEFAULT_CALIBRATION)
    ap.add_argument("--block", type=int, default=128, help="Bm = Bn of the decision tiles")
    ap.add_argument("--order", default="ascending", choices=["ascending", "anchored"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                    help="bf16 autocast over float32 weights (auto: on for cuda, where the library's kernels "
                         "take bf16; off on cpu, where the CPU engine computes in float32)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in ("sparse", "dense") for a in arms):
        ap.error(f"--arms {args.arms!r}: expected a comma list of sparse, dense")
    if args.steps < 1 or args.length < 2 or args.batch < 1 or not args.lr > 0:
        ap.error("--steps, --batch >= 1, --length >= 2 and --lr > 0 are needed")
    args.amp = args.amp == "on" or (args.amp == "auto" and torch.device(args.device).type == "cuda")
    os.makedirs(args.out, exist_ok=True)
    if args.lam is not None:
        if not 0 <= args.lam:
            ap.error(f"--lambda {args.lam}: expected >= 0")
        factor = args.lam * args.length
    elif args.factor is not None:
        factor = args.factor
    else:
        formulas = load_formulas(args.calibration)  # the evaluation's reader of the calibration
        if "prefill" not in formulas:
            raise SystemExit(f"{args.calibration}: no prefill threshold formula")
        factor = float(formulas["prefill"].factor(args.target))
    if factor >= args.length:
        print(f"warning: factor {factor:g} >= --length {args.length}: lambda >= 1, the sparse arm would run dense",
              file=sys.stderr)

    from load_smollm2 import load_tokenizer

    batches = windows(training_tokens(load_tokenizer()), args.length, args.batch, args.steps, args.seed)
    summary = {}
    for arm in arms:
        log = train_arm(arm, factor if arm == "sparse" else 0.0, batches, args)
        losses = [s["loss"] for s in log["steps"]]
        sparsity = [s["sparsity"] for s in log["steps"]]
        summary[arm] = {"first_loss": losses[0], "last_loss": losses[-1], "mean_sparsity": sum(sparsity) / len(sparsity),
                        "seconds": log["seconds"]}
        print(f"{arm}: factor {log['factor']:g}, loss {losses[0]:.3f} -> {losses[-1]:.3f}, mean prefill sparsity "
              f"{summary[arm]['mean_sparsity']:.3f}, {log['seconds']:.0f} s")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"args": vars(args), "factor": factor, "arms": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
