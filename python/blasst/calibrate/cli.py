"""blasst-calibrate: fit BLASST thresholds for a transformers model and write them into a config.json.

Example:
  blasst-calibrate --model HuggingFaceTB/SmolLM2-135M-Instruct --texts essays/ \\
      --max-seqlen 4096 --num-bins 4 --samples-per-bin 4 --decode-tokens 8 \\
      --target-sparsity prefill=0.5,decode=0.3 --output calibrated/config.json --plot-dir calibrated/plots
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Optional

from ..schema import (PHASES, SPARSE_CONTEXT_KEY, load_config_json, read_sparse_attention_config,
                      update_config_json, write_sparse_attention_config)
from .context import check_lengths, config_extension, model_context_length

EPILOG = """\
Where a calibrated target skips: lambda = threshold_scale_factor / context_length, and lambda >= 1
turns skipping off (the project's docs/semantics.md, section 4). The factor a * exp(b * s) grows
with the target s, so a target skips only in contexts longer than its factor; shorter ones run
dense. The output lists, per phase, each target's factor and the shortest context it skips at
(also in the JSON report under "sparse_context", and for the written default target in config.json
under "blasst_sparse_context"), and warns when a target leaves calibration lengths, or every
context the model supports, dense.

Lengths (--lengths, --max-seqlen, plus --decode-tokens) beyond the model's context
(max_position_embeddings or its equivalent) are refused before the model is loaded.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the epilog's lines kept as written."""


def _phase_values(text: Optional[str], name: str) -> Optional[dict]:
    """'0.5' -> both phases; 'prefill=0.5,decode=0.3' -> per phase."""
    if text is None:
        return None
    if "=" not in text:
        v = float(text)
        return {p: v for p in PHASES}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in PHASES:
            raise argparse.ArgumentTypeError(f"{name}: unknown phase {key!r} (prefill, decode)")
        out[key] = float(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blasst-calibrate",
        # filled here: the raw formatter (for the epilog's layout) keeps the description's lines as given
        description=textwrap.fill(
            "Calibrate BLASST (skip-softmax) thresholds: run a model densely over calibration texts binned by length, "
            "measure the tile sparsity each trial threshold would give (per phase, at the engine's geometry and GQA "
            "grouping), fit threshold_scale_factor = a * exp(b * sparsity), and write the sparse_attention_config "
            "block (ModelOpt / TensorRT-LLM schema) into a config.json.", width=100),
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, help="model directory or Hugging Face id (loaded with transformers)")
    m.add_argument("--gguf-file", help="GGUF file inside --model to load")
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    m.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    m.add_argument("--trust-remote-code", action="store_true")
    d = p.add_argument_group("data")
    d.add_argument("--texts", nargs="+", help="calibration texts: .txt/.jsonl/.json files or directories")
    d.add_argument("--random-tokens", action="store_true", help="random token ids instead of texts (smoke tests)")
    d.add_argument("--lengths", help="comma-separated sample lengths (the length bins), e.g. 1024,2048,4096; "
                   "at most the model's context")
    d.add_argument("--max-seqlen", type=int, default=4096,
                   help="longest bin when --lengths is not given; at most the model's context")
    d.add_argument("--num-bins", type=int, default=4, help="number of power-of-two bins ending at --max-seqlen")
    d.add_argument("--samples-per-bin", type=int, default=4)
    d.add_argument("--seed", type=int, default=0)
    c = p.add_argument_group("measurement")
    c.add_argument("--phases", default="prefill,decode", help="phases to calibrate")
    c.add_argument("--decode-tokens", type=int, default=8, help="greedy decode steps per sample (decode phase)")
    c.add_argument("--trials", help="comma-separated trial lambda values (default: 20 from 1e-6 to 0.99)")
    c.add_argument("--order", default="ascending", choices=["ascending", "anchored"])
    c.add_argument("--block-m", type=int, default=0, help="prefill rows per decision group (0 = engine default)")
    c.add_argument("--block-n", type=int, default=0, help="keys per KV tile (0 = engine default)")
    c.add_argument("--splits", type=int, default=0, help="KV splits (0 = engine default)")
    c.add_argument("--engine", default="auto", choices=["auto", "cpu", "cuda"])
    c.add_argument("--ignore", nargs="*", default=[], help="fnmatch patterns of attention modules kept dense")
    f = p.add_argument_group("fit and output")
    f.add_argument("--fit-space", default="linear", choices=["linear", "log"], help="objective of the fit")
    f.add_argument("--min-sparsity", type=float, default=0.10, help="lowest sparsity a fitted point may have")
    f.add_argument("--max-sparsity", type=float, default=0.90, help="highest sparsity a fitted point may have")
    f.add_argument("--per-head", action="store_true", help="also fit one formula per (layer, KV head)")
    f.add_argument("--target-sparsity", help="default target written to the config: 0.5 or prefill=0.5,decode=0.3")
    f.add_argument("--output", default="blasst-calibration/config.json",
                   help="config.json to write (updated in place if it exists, else started from the model's config)")
    f.add_argument("--report", help="JSON report with every point and fit (default: next to --output)")
    f.add_argument("--plot-dir", help="directory for PNG plots (needs matplotlib)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _model_config(args):
    """The model's config alone (no weights): cheap, so what it decides is checked before the long
    work starts."""
    from transformers import AutoConfig

    kw = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    return AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code, **kw)


def _existing_block(output: Path, model_config) -> Optional[dict]:
    """The sparse_attention_config to update: the existing --output's, else the model's own (whose
    groups of other algorithms must survive into the new file). Checked now: one that cannot be
    updated (two skip_softmax groups, a malformed group) must not fail after the calibration."""
    where = f"--output {output}" if output.exists() else "the config of --model"
    try:
        if output.exists():
            block = load_config_json(output).get("sparse_attention_config")
        else:
            block = getattr(model_config, "sparse_attention_config", None)
            block = block.to_dict() if hasattr(block, "to_dict") else block
        read_sparse_attention_config(block)
        if block is not None:
            write_sparse_attention_config(block)
    except (OSError, ValueError) as e:  # SchemaError and json's errors are ValueErrors
        raise ValueError(f"{where}: {e}") from None
    return block


def _print_sparse_context(result, out=None) -> None:
    """Per phase: each target's factor and the shortest context it skips at; per length, the target
    above which it runs dense."""
    out = out or sys.stdout  # looked up per call: sys.stdout may be replaced (captured) after import
    limit = result.model_context[0] if result.model_context else None
    for phase, view in result.sparse_context.items():
        print(f"{phase}: skipping needs lambda = sf / context_length < 1, so a target skips only in contexts "
              f"longer than its sf" + (f" (model context {limit} tokens)" if limit else ""), file=out)
        for row in view["targets"]:
            lo = row["min_context_length"]
            where = ("skips at every length" if lo == 1 else f"skips from {lo} tokens on")
            if lo is None:
                where = "never skips"
            elif not row["skips_within_model_context"]:
                where = f"never skips within the model's context (needs {lo} tokens)"
            print(f"  target {row['target_sparsity']:.2f}: sf {row['threshold_scale_factor']:10.4g}  {where}", file=out)
        for row in view["lengths"]:
            s, n = row["max_target_sparsity"], row["context_length"]
            if s is None:
                continue
            if s >= 1:
                print(f"  at {n} tokens every target skips", file=out)
            elif s <= 0:
                print(f"  at {n} tokens every target runs dense", file=out)
            else:
                print(f"  at {n} tokens targets of {s:.3f} and above run dense", file=out)


def _load_model(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import blasst.hf  # noqa: F401  (registers attn_implementation "blasst")

    dtype = getattr(torch, args.dtype)
    kw = {"dtype": dtype, "attn_implementation": "blasst", "trust_remote_code": args.trust_remote_code}
    if args.gguf_file:
        kw["gguf_file"] = args.gguf_file
    model = AutoModelForCausalLM.from_pretrained(args.model, **kw).to(args.device)
    tokenizer = None
    if not args.random_tokens:
        tk = {"gguf_file": args.gguf_file} if args.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code, **tk)
    return model, tokenizer


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from . import data
    from .run import calibrate_model

    try:
        phases = [x.strip() for x in args.phases.split(",") if x.strip()]
        target = _phase_values(args.target_sparsity, "--target-sparsity")
        trials = [float(x) for x in args.trials.split(",")] if args.trials else None
        bins = ([int(x) for x in args.lengths.split(",")] if args.lengths
                else data.length_bins(args.max_seqlen, args.num_bins))
    except (ValueError, argparse.ArgumentTypeError) as e:
        parser.error(str(e))
    if not args.texts and not args.random_tokens:
        parser.error("give --texts (calibration texts) or --random-tokens")
    output = Path(args.output)
    try:
        model_config = _model_config(args)
        check_lengths(bins, model_context_length(model_config), args.decode_tokens if "decode" in phases else 0,
                      what="--lengths" if args.lengths else f"length bins (from --max-seqlen {args.max_seqlen})")
        existing_block = _existing_block(output, model_config)
    except ValueError as e:
        parser.error(str(e))

    model, tokenizer = _load_model(args)
    if args.random_tokens:
        samples = data.random_samples(model.config.vocab_size, bins, args.samples_per_bin, seed=args.seed)
    else:
        texts = data.load_texts(args.texts)
        stream = data.token_stream(tokenizer, texts)
        samples = data.windows(stream, bins, args.samples_per_bin, bos_token_id=tokenizer.bos_token_id)

    kw = {} if trials is None else {"trials": trials}
    with warnings.catch_warnings():
        # calibrate_model's own warnings are printed below, after the fits they are about
        warnings.filterwarnings("ignore", message="blasst calibrate: ")
        result = calibrate_model(
            model, samples, phases=phases, decode_tokens=args.decode_tokens, fit_space=args.fit_space,
            min_sparsity=args.min_sparsity, max_sparsity=args.max_sparsity, per_head=args.per_head,
            target_sparsity=target, ignore=args.ignore, order=args.order, block_m=args.block_m,
            block_n=args.block_n, splits=args.splits, engine=args.engine, progress=not args.no_progress, **kw,
        )

    if not output.exists():
        base = model.config.to_dict()
        base.pop("sparse_attention_config", None)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(base, indent=2) + "\n")
    sac = result.sparse_attention_config(existing_block, target_sparsity=target, ignore=args.ignore or None)
    # where the written default targets skip, from the group as written (a phase not calibrated now
    # keeps its old formula and target)
    spec = read_sparse_attention_config(sac)
    ext = config_extension(spec.formulas, spec.target_sparsity, result.model_context) if spec else None
    update_config_json(output, sac, per_head=result.per_head_json(), extensions={SPARSE_CONTEXT_KEY: ext})

    report_path = Path(args.report) if args.report else output.with_name("blasst_calibration_report.json")
    report_path.write_text(json.dumps(result.report(), indent=2) + "\n")
    if args.plot_dir:
        from .plot import plot_phase

        for phase in result.fits:
            plot_phase(result, phase, Path(args.plot_dir) / f"calibration_{phase}.png")

    for phase, fit in result.fits.items():
        print(f"{phase}: sf = {fit.a:.6g} * exp({fit.b:.6g} * s)   R2 linear {fit.r2_linear:.4f}  log {fit.r2_log:.4f}  "
              f"points {fit.n_points}  observed sparsity {fit.min_sparsity:.3f}..{fit.max_sparsity:.3f}  "
              f"geometry {result.geometry.get(phase)}")
    _print_sparse_context(result)
    for w in result.warnings:
        print("warning:", w, file=sys.stderr)
    print(f"wrote {output} and {report_path}")
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
