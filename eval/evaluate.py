"""Accuracy of BLASST attention on SmolLM2-135M-Instruct against dense attention.

Tasks
  ppl      perplexity of the next tokens of long real texts (eval/texts.py), the KL divergence
           KL(dense || method) of the next-token distributions (mean over the scored positions and over their
           second half), and top-1 agreement with dense.
  passkey  a 5-digit pass key hidden at several depths of filler text; the answer is scored with teacher
           forcing: correct iff every answer token is the argmax given the true prefix, which is exactly
           when greedy decoding would print the key.

Phases (--phases, comma list)
  prefill  one causal forward over the whole input with the prefill threshold; every position is scored
           (pass key: the answer tokens).
  decode   the prompt is prefilled densely (exact: factor 0), then the evaluated continuation is fed one
           token at a time through the KV cache, i.e. through the decode path with the decode threshold
           (teacher forcing). Only the positions fed as decode steps are scored. ppl: prompt = the first
           --tokens tokens of the document, --decode-tokens positions after it. Pass key: the prompt ends
           one token before the answer, so every answer token is predicted by a decode step.
  both     as decode, with the prompt prefilled sparsely (prefill threshold) as well.

Thresholds (each sparse backend runs once per value, phase and order)
  --factors F,..      threshold_scale_factor F for both phases (lambda = F / Lk)            method "factor"
  --lambdas x,..      factor = x * Lk of the phase's first call (x < 1; x >= 1 turns skipping off) "lambda"
  --targets t,..      target sparsity, turned into factors by --target-methods:
      config        the calibrated formula a * exp(b * t) of each phase from --calibration (the shipped
                    data/smollm2_calibration/config.json); the factor is the same at every length
      calib-single  one factor per phase that gives sparsity t on a calibration pass over --calib-doc
                    (a different text from the evaluated ones), at the evaluated length
      calib-head    one factor per (layer, KV head) and phase, each giving its head sparsity t on that same
                    calibration pass; heads that cannot reach t get the largest lambda tried (< 1)
  target 0 means dense through the library (factor 0), a check of the harness (KL ~ 0).

Attention backends (--backend, repeatable)
  dense     transformers' eager attention (or --dense-impl sdpa); the reference every method is compared to
  torchref  eval/attention_fns.py's torch model of the SPEC rule (prefill only, one factor per call)
  blasst    the library through the Python package: blasst.hf.enable(model, BlasstConfig(...)),
            i.e. attn_implementation="blasst"; statistics from blasst.hf.summary()

Output: <out>.csv (one row per run), <out>.json (rows, settings, calibration passes, machine) and the plots
of eval/report.py.

Examples (2 CPU cores):
  python3 eval/evaluate.py --backend torchref --factors 4,16,64 --docs licenses --tokens 2048 \\
      --passkey-lengths 2048 --passkey-depths 0.1,0.5,0.9
  python3 eval/evaluate.py --backend blasst --dense-impl sdpa --phases decode --targets 0,0.3,0.5 \\
      --docs licenses --tokens 2048 --decode-tokens 256 --passkey-lengths '' --out /tmp/smol
eval/run_all.sh runs the whole evaluation behind bench/results/smollm2_eval_targets.*.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import json
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import attention_fns as af  # noqa: E402
import texts  # noqa: E402

PHASES = ("prefill", "decode", "both")
TARGET_METHODS = ("config", "calib-single", "calib-head")
DEFAULT_CALIBRATION = os.path.join(ROOT, "data", "smollm2_calibration", "config.json")
# lambdas tried by the per-head calibration pass: dense enough in log space to interpolate, and reaching
# low enough for decode (whose sparsity rises at much smaller lambda than prefill's) and up to the largest
# value below the lambda >= 1 guard
CALIB_TRIALS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.85, 0.99)

# --------------------------------------------------------------------------- settings


@dataclass
class Setting:
    """One way of running attention: backend, phase, order and where the thresholds come from."""

    backend: str           # dense | torchref | blasst
    phase: str             # prefill | decode | both
    order: str             # ascending | anchored (dense: the dense implementation's name)
    method: str            # dense | factor | lambda | config | calib-single | calib-head
    value: float = 0.0     # the factor, lambda or target, per method

    @property
    def target(self):
        return self.value if self.method in TARGET_METHODS else None


@dataclass
class Thresholds:
    """What a setting means for one input: a factor per phase, or per-(layer, KV head) factors."""

    prefill: float | None = 0.0
    decode: float | None = 0.0
    head_prefill: dict | None = None    # layer name -> [factor per KV head]
    head_decode: dict | None = None


@dataclass
class Input:
    task: str                          # ppl | passkey
    label: dict
    ids: list[int]
    split: int | None                  # decode phases: number of prompt tokens (prefilled); None = prefill input
    answer_start: int | None = None    # passkey: index of the first answer token
    _prompt_cache: object = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "prefill" if self.split is None else "decode"


def load_formulas(path: str) -> dict:
    """Per-phase threshold formulas of a checkpoint config.json, through the package's schema reader
    (the same code a model loaded with attn_implementation="blasst" uses)."""
    from blasst.schema import read_sparse_attention_config
    if not os.path.isfile(path):
        raise SystemExit(f"--calibration {path}: no such file")
    with open(path) as f:
        cfg = json.load(f)
    spec = read_sparse_attention_config(cfg.get("sparse_attention_config"))
    if spec is None or not spec.formulas:
        raise SystemExit(f"--calibration {path}: no skip_softmax threshold formula in sparse_attention_config")
    return spec.formulas


# --------------------------------------------------------------------------- per-head calibration


def lambda_for_target(trials: list[float], sparsity: list[float], target: float) -> float:
    """The lambda at which a measured sparsity curve reaches `target`, interpolated linearly in log(lambda).
    The curve is made monotone first (sparsity cannot fall as lambda grows, up to noise between trials).
    Below the first trial's sparsity: the first trial; above the last one: the last trial (the most
    skipping the lambda < 1 guard allows, so the head stays below its target)."""
    s = []
    for x in sparsity:
        s.append(max(x, s[-1]) if s else x)
    if target <= s[0]:
        return trials[0]
    if target > s[-1]:
        return trials[-1]
    i = next(j for j, x in enumerate(s) if x >= target)
    if s[i] == s[i - 1]:
        return trials[i]
    w = (target - s[i - 1]) / (s[i] - s[i - 1])
    return math.exp(math.log(trials[i - 1]) + w * (math.log(trials[i]) - math.log(trials[i - 1])))


class Calibration:
    """Per-(layer, KV head) sparsity curves from one dense pass of the library's calibration collector
    (blasst.calibrate.calibrate_model) over --calib-doc: every attention call is re-run at each trial
    lambda with statistics on, prefill and then --calib-decode-tokens greedy decode steps."""

    def __init__(self, model, tok, args, length: int, order: str):
        from blasst.calibrate import calibrate_model
        ids = texts.token_ids(tok, args.calib_doc, length)
        t0 = time.time()
        res = calibrate_model(model, [(torch.tensor([ids], device=args.device), length)], trials=CALIB_TRIALS,
                              phases=("prefill", "decode"), decode_tokens=args.calib_decode_tokens, order=order,
                              block_m=args.block, block_n=args.block, engine=args.engine, progress=False)
        self.seconds = time.time() - t0
        self.doc, self.length, self.order = args.calib_doc, length, order
        self.trials = list(res.trials)
        self.seqlen_k, self.heads, self.pooled = {}, {}, {}
        for rec in res.records:
            self.seqlen_k[rec.phase] = float(rec.seqlen_k)
            total = None
            self.heads[rec.phase] = {}
            for layer, counts in sorted(rec.counts.items(), key=lambda kv: _layer_index(kv[0])):
                c = counts.double()  # [trials, Hkv, 2]
                self.heads[rec.phase][layer] = (c[..., 1] / c[..., 0].clamp_min(1)).T.tolist()  # [Hkv][trials]
                total = c.sum(1) if total is None else total + c.sum(1)
            self.pooled[rec.phase] = (total[:, 1] / total[:, 0].clamp_min(1)).tolist()
        for p in ("prefill", "decode"):
            if p not in self.pooled:
                raise RuntimeError(f"calibration pass saw no {p} calls")

    # The calibrated quantity is lambda; the factor handed to the engine is lambda times the KV length of the
    # evaluated input's first call in that phase (lk). Later calls only have more keys, so a head capped at
    # lambda 0.99 stays below the lambda >= 1 guard on every call instead of flipping to dense when the
    # evaluated context is a few tokens shorter than the calibration one.
    def single_lambda(self, phase: str, target: float) -> float:
        return 0.0 if target == 0 else lambda_for_target(self.trials, self.pooled[phase], target)

    def head_lambdas(self, phase: str, target: float) -> dict:
        if target == 0:
            return {layer: [0.0] * len(h) for layer, h in self.heads[phase].items()}
        return {layer: [lambda_for_target(self.trials, s, target) for s in h] for layer, h in self.heads[phase].items()}

    def single(self, phase: str, target: float, lk: int) -> float:
        return self.single_lambda(phase, target) * lk

    def per_head(self, phase: str, target: float, lk: int) -> dict:
        return {layer: [x * lk for x in lams] for layer, lams in self.head_lambdas(phase, target).items()}

    def describe(self, targets: list[float]) -> dict:
        return {"doc": self.doc, "tokens": self.length, "order": self.order, "trials": self.trials,
                "decode_steps": None, "seqlen_k": self.seqlen_k, "seconds": round(self.seconds, 1),
                "pooled_sparsity": self.pooled, "head_sparsity": self.heads,
                "lambdas": {str(t): {p: {"single": self.single_lambda(p, t), "per_head": self.head_lambdas(p, t)}
                                     for p in ("prefill", "decode")} for t in targets}}


def _layer_index(name: str) -> int:
    digits = [int(tok) for tok in name.split(".") if tok.isdigit()]
    return digits[0] if digits else -1


# --------------------------------------------------------------------------- backends


class Backend:
    """Switches the loaded model to one attention implementation and reports the sparsity of the last
    forward (per phase)."""

    name = "dense"

    def __init__(self, model, args):
        self.model, self.args = model, args

    def configure(self, setting: Setting, th: Thresholds) -> None:
        self.model.set_attn_implementation(self.args.dense_impl)

    def reset(self) -> None:
        pass

    def sparsity(self) -> dict:
        return {"prefill": 0.0}


class TorchRefBackend(Backend):
    name = "torchref"

    def configure(self, setting: Setting, th: Thresholds) -> None:
        if setting.phase != "prefill" or th.head_prefill is not None:
            raise SystemExit("torchref models the prefill rule with one factor per call only "
                             "(use --backend blasst for decode, both and calib-head)")
        af.register()
        self.cfg = af.SkipConfig(factor=th.prefill, bm=self.args.block, bn=self.args.block, order=setting.order)
        af.set_skip_config(self.cfg)
        self.model.set_attn_implementation("blasst_torchref")

    def reset(self) -> None:
        self.cfg.counts.clear()

    def sparsity(self) -> dict:
        return {"prefill": self.cfg.sparsity()}


class BlasstBackend(Backend):
    """The project's Python package (python/blasst). Import fails cleanly when it is not installed:
    build it with `pip install /work/main` or python/run_tests.sh."""

    name = "blasst"

    def __init__(self, model, args):
        super().__init__(model, args)
        try:
            import blasst
            import blasst.hf
        except ImportError as e:
            raise SystemExit(f"--backend blasst needs the blasst package ({e}); install it with python/run_tests.sh "
                             "or `pip install .` from the repository root") from None
        from blasst.schema import DEFAULT_FORMULA, Formula
        self.hf, self.BlasstConfig, self.Formula, self.formula_expr = blasst.hf, blasst.BlasstConfig, Formula, DEFAULT_FORMULA

    def config(self, order: str, th: Thresholds, target: float | None):
        factors, targets, formulas, per_head = {}, {}, {}, {}
        for phase, f, heads in (("prefill", th.prefill, th.head_prefill), ("decode", th.decode, th.head_decode)):
            if heads is None or not target:
                factors[phase] = f or 0.0
                continue
            # Per-(layer, KV head) factors go through the config's per-head formulas, which the package
            # applies when a phase is driven by a target sparsity. A formula with b = 0 is a constant: the
            # factor calibrated for this head at this target.
            const = lambda x: self.Formula(self.formula_expr, {"a": float(x), "b": 0.0})  # noqa: E731
            targets[phase] = target
            flat = sorted(x for fs in heads.values() for x in fs)
            formulas[phase] = const(flat[len(flat) // 2])  # unused: every layer has its own factors
            per_head[phase] = {layer: [const(x) for x in fs] for layer, fs in heads.items()}
        return self.BlasstConfig(threshold_scale_factor=factors or None, target_sparsity=targets or None,
                                 formulas=formulas, per_head_formulas=per_head, order=order,
                                 block_m=self.args.block, block_n=self.args.block, engine=self.args.engine,
                                 collect_stats=True)

    def configure(self, setting: Setting, th: Thresholds) -> None:
        self.hf.enable(self.model, self.config(setting.order, th, setting.target))

    def reset(self) -> None:
        self.hf.reset_stats(self.model)

    def sparsity(self) -> dict:
        summ = self.hf.summary(self.model)
        out = {p: s["sparsity"] for p, s in summ.items()}
        if summ:
            vis = sum(s["visited"] for s in summ.values())
            out["all"] = sum(s["skipped"] for s in summ.values()) / vis if vis else 0.0
        return out


BACKENDS = {"dense": Backend, "torchref": TorchRefBackend, "blasst": BlasstBackend}

# --------------------------------------------------------------------------- tasks


def logprobs(model, ids: list[int], device: str) -> torch.Tensor:
    """[L, V] float32 log-softmax of the next-token logits for every position (one prefill forward). It stays
    on `device`: at 8K tokens it is 1.6 GB, and scoring it on the CPU took longer than the forward on a GPU."""
    with torch.no_grad():
        out = model(torch.tensor([ids], device=device), use_cache=False)
    return torch.log_softmax(out.logits[0].float(), dim=-1)


def prompt_cache(model, ids: list[int], split: int, device: str):
    """KV cache after prefilling ids[:split] (with whatever attention the model is set to)."""
    with torch.no_grad():
        out = model(torch.tensor([ids[:split]], device=device), use_cache=True, logits_to_keep=1)
    return out.past_key_values


def decode_logprobs(model, ids: list[int], split: int, cache, device: str) -> torch.Tensor:
    """Teacher-forced decode: feeds ids[split], ..., ids[-2] one at a time through the cache.
    Returns [len(ids) - 1 - split, V]: row j predicts ids[split + 1 + j]."""
    rows = []
    with torch.no_grad():
        for j in range(split, len(ids) - 1):
            out = model(torch.tensor([[ids[j]]], device=device), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            rows.append(torch.log_softmax(out.logits[0, -1].float(), dim=-1))
    return torch.stack(rows)


def kl(ref: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    return (ref.exp() * (ref - lp)).sum(-1).clamp_min(0)


def ppl_metrics(lp: torch.Tensor, targets: torch.Tensor, ref: torch.Tensor | None) -> dict:
    """lp, ref [n, V] log-probs of the scored positions, targets [n] the tokens they predict."""
    nll = -lp.gather(1, targets[:, None])[:, 0]
    half = nll.shape[0] // 2
    m = {"ppl": float(torch.exp(nll.mean())), "ppl_tail": float(torch.exp(nll[half:].mean()))}
    if ref is not None:
        d = kl(ref, lp)
        m.update({"kl_mean": float(d.mean()), "kl_tail": float(d[half:].mean()), "kl_max": float(d.max()),
                  "top1_agree": float((lp.argmax(-1) == ref.argmax(-1)).float().mean())})
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


def passkey_metrics(lp_answer: torch.Tensor, answer: torch.Tensor) -> dict:
    """lp_answer [n, V]: the log-probs at the positions that predict the n answer tokens."""
    pred = lp_answer.argmax(-1)
    return {"passkey_correct": int(bool((pred == answer).all())),
            "passkey_digits_correct": float((pred == answer).float().mean()),
            "answer_logprob": float(lp_answer.gather(1, answer[:, None]).sum())}


def score(inp: Input, lp: torch.Tensor, ref: torch.Tensor | None) -> dict:
    """Metrics of one run. Prefill inputs: lp/ref cover every position. Decode inputs: lp covers the decode
    steps only (positions split .. len-2), ref every position."""
    ids = torch.tensor(inp.ids, device=lp.device)
    if inp.kind == "prefill":
        lo, hi, lp_s = 0, len(inp.ids) - 1, lp[:-1]
    else:
        lo, hi, lp_s = inp.split, len(inp.ids) - 1, lp
    ref_s = ref[lo:hi] if ref is not None else None
    if inp.task == "ppl":
        return ppl_metrics(lp_s, ids[lo + 1:hi + 1], ref_s)
    a = inp.answer_start
    m = passkey_metrics(lp_s[a - 1 - lo:], ids[a:])
    if ref_s is not None:
        m["kl_mean"] = float(kl(ref_s, lp_s).mean())
    return m


# --------------------------------------------------------------------------- driver


def git_commit() -> str:
    # $BLASST_COMMIT: for a copy of the tree without .git (eval/gpu_run.sh on a GPU machine)
    if os.environ.get("BLASST_COMMIT"):
        return os.environ["BLASST_COMMIT"]
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def machine_name(device: str) -> str:
    cpu = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip()
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} ({cpu})"
    return cpu


def build_inputs(tok, args, phases) -> list[Input]:
    inputs = []
    kinds = (["prefill"] if "prefill" in phases else []) + (["decode"] if set(phases) & {"decode", "both"} else [])
    for kind in kinds:
        for doc in args.docs:
            for n in args.tokens:
                if kind == "prefill":
                    inputs.append(Input("ppl", {"doc": doc, "tokens": n}, texts.token_ids(tok, doc, n), None))
                else:
                    ids = texts.token_ids(tok, doc, n + args.decode_tokens + 1)
                    inputs.append(Input("ppl", {"doc": doc, "tokens": n, "decode_positions": args.decode_tokens},
                                        ids, n))
        for n in args.passkey_lengths:
            for i, depth in enumerate(args.passkey_depths):
                key = f"{random.Random(args.seed * 1000 + n + i).randrange(10000, 100000)}"
                ids, start = passkey_input(tok, n, depth, key)
                label = {"doc": "filler", "tokens": n, "depth": depth, "key": key}
                if kind == "prefill":
                    inputs.append(Input("passkey", label, ids, None, start))
                else:
                    # the prompt stops one token short of the answer, so that every answer token is
                    # predicted by a decode step
                    inputs.append(Input("passkey", {**label, "tokens": start - 1, "decode_positions": n - start},
                                        ids, start - 1, start))
    return inputs


def build_settings(args) -> list[Setting]:
    out = []
    for b in args.backend:
        if b == "dense":
            continue
        for phase in args.phases:
            for order in args.orders:
                out += [Setting(b, phase, order, "factor", f) for f in args.factors]
                out += [Setting(b, phase, order, "lambda", x) for x in args.lambdas]
                out += [Setting(b, phase, order, m, t) for m in args.target_methods for t in args.targets]
    return out


def applies(s: Setting, inp: Input) -> bool:
    return (s.phase == "prefill") == (inp.kind == "prefill")


class Thresholder:
    """Turns a setting into the thresholds of one input (calibration passes run lazily and are kept)."""

    def __init__(self, model, tok, args):
        self.model, self.tok, self.args = model, tok, args
        self.formulas = load_formulas(args.calibration) if "config" in args.target_methods and args.targets else {}
        self.calibrations: dict = {}

    def calibration(self, inp: Input, order: str) -> Calibration:
        # calibrate at the evaluated prompt length rounded to whole 1K blocks, so that a document and the
        # pass key prompts of one length (a few tokens apart) share a pass
        n = inp.split if inp.split is not None else len(inp.ids)
        length = n if n < 1024 else round(n / 1024) * 1024
        key = (length, order)
        if key not in self.calibrations:
            if self.args.calib_doc in {i for i in self.args.docs}:
                raise SystemExit(f"--calib-doc {self.args.calib_doc} is also evaluated (--docs); pick another text")
            from tqdm.auto import tqdm
            tqdm.write(f"calibration pass: {self.args.calib_doc}, {length} tokens, order {order} ...")
            self.calibrations[key] = Calibration(self.model, self.tok, self.args, length, order)
            tqdm.write(f"  done in {self.calibrations[key].seconds:.0f} s")
        return self.calibrations[key]

    def __call__(self, s: Setting, inp: Input) -> Thresholds:
        wants = {"prefill": s.phase in ("prefill", "both"), "decode": s.phase in ("decode", "both")}
        # KV length of each phase's first call: the whole input (prefill phase), the prompt (prefill of a
        # decode input), the prompt plus the first fed token (decode)
        lk = {"prefill": len(inp.ids) if inp.split is None else inp.split,
              "decode": (inp.split or 0) + 1}
        th = Thresholds()
        for p in ("prefill", "decode"):
            if not wants[p]:
                setattr(th, p, 0.0)
                continue
            if s.method == "factor":
                f = s.value
            elif s.method == "lambda":
                f = s.value * lk[p]
            elif s.method == "config" and s.value == 0:
                f = 0.0
            elif s.method == "config":
                f = self.formulas[p].factor(s.value) if p in self.formulas else None
                if f is None:
                    raise SystemExit(f"--calibration has no {p} formula (needed for target {s.value})")
            elif s.method == "calib-single":
                f = self.calibration(inp, s.order).single(p, s.value, lk[p])
            else:
                setattr(th, "head_" + p, self.calibration(inp, s.order).per_head(p, s.value, lk[p]))
                f = None
            setattr(th, p, f)
        return th


def lambdas_of(th: Thresholds, inp: Input) -> dict:
    lk = {"prefill": len(inp.ids) if inp.split is None else inp.split, "decode": (inp.split or 0) + 1}
    out = {}
    for p in ("prefill", "decode"):
        f, heads = getattr(th, p), getattr(th, "head_" + p)
        if heads is not None:
            flat = sorted(x for fs in heads.values() for x in fs)
            out[f"factor_{p}"] = None
            out[f"factor_{p}_heads"] = f"{flat[0]:.4g}/{flat[len(flat) // 2]:.4g}/{flat[-1]:.4g}"
            out[f"lambda_{p}"] = flat[len(flat) // 2] / lk[p]
        else:
            out[f"factor_{p}"] = f
            out[f"lambda_{p}"] = f / lk[p] if f is not None else None
    return out


def run(args) -> tuple[list[dict], dict]:
    from tqdm.auto import tqdm

    from load_smollm2 import load
    torch.set_num_threads(args.threads)
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model, tok = load(device=args.device, dtype=dtype, attn_implementation="eager")
    if args.state_dict:
        # a fine-tuned model (eval/finetune_sparsity.py): its weights over the base model's
        state = torch.load(args.state_dict, map_location=args.device)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if not m.endswith("rotary_emb.inv_freq")]:
            raise SystemExit(f"--state-dict {args.state_dict}: missing {missing}, unexpected {unexpected}")
    backends = {b: BACKENDS[b](model, args) for b in args.backend if b != "dense"}
    dense = Backend(model, args)
    settings = build_settings(args)
    inputs = build_inputs(tok, args, args.phases)
    thresholder = Thresholder(model, tok, args)

    jobs = [(inp, s) for inp in inputs for s in [None] + [s for s in settings if applies(s, inp)]]
    rows = []
    bar = tqdm(total=len(jobs), desc="evaluate", unit="run", disable=args.no_progress)
    ref = None
    for inp, s in jobs:
        label = {"task": inp.task, **inp.label}
        if s is None:  # the dense reference of this input: one prefill forward over all of it
            dense.configure(None, None)
            t0 = time.time()
            ref = logprobs(model, inp.ids, args.device)
            row = {**label, "backend": "dense", "phase": "prefill" if inp.kind == "prefill" else "decode",
                   "order": args.dense_impl, "method": "dense", "sparsity": 0.0,
                   "seconds": round(time.time() - t0, 2)}
            if inp.kind == "decode":
                lp = ref[inp.split:len(inp.ids) - 1]
            else:
                lp = ref
            row.update(score(inp, lp, None))
            for other in inputs:  # the previous input's dense prompt cache is no longer needed
                other._prompt_cache = None
        else:
            backend = backends[s.backend]
            th = thresholder(s, inp)
            backend.configure(s, th)
            t0 = time.time()
            if inp.kind == "prefill":
                backend.reset()
                lp = logprobs(model, inp.ids, args.device)
            else:
                if s.phase == "decode":
                    # decode only: the dense prompt cache is the same for every setting of this input
                    if inp._prompt_cache is None:
                        backend.configure(s, Thresholds(prefill=0.0, decode=0.0))
                        inp._prompt_cache = prompt_cache(model, inp.ids, inp.split, args.device)
                        backend.configure(s, th)
                    cache = copy.deepcopy(inp._prompt_cache)
                    backend.reset()
                else:
                    backend.reset()
                    cache = prompt_cache(model, inp.ids, inp.split, args.device)
                lp = decode_logprobs(model, inp.ids, inp.split, cache, args.device)
                del cache
            secs = time.time() - t0
            sp = backend.sparsity()
            own = {"prefill": sp.get("prefill"), "decode": sp.get("decode"), "both": sp.get("all")}[s.phase]
            row = {**label, "backend": s.backend, "phase": s.phase, "order": s.order, "method": s.method,
                   "target": s.target, **({"factor": s.value} if s.method == "factor" else {}),
                   **({"lambda": s.value} if s.method == "lambda" else {}),
                   **lambdas_of(th, inp), "sparsity": own,
                   "sparsity_prefill": sp.get("prefill"), "sparsity_decode": sp.get("decode"),
                   "seconds": round(secs, 2)}
            row.update(score(inp, lp, ref))
        rows.append(row)
        tqdm.write(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}))
        bar.update(1)
    bar.close()
    targets = sorted(set(args.targets))
    calib = {f"{length}/{order}": c.describe(targets) for (length, order), c in thresholder.calibrations.items()}
    for c in calib.values():
        c["decode_steps"] = args.calib_decode_tokens
    return rows, calib


FIELDS = ["task", "doc", "tokens", "decode_positions", "depth", "key", "backend", "phase", "order", "method",
          "target", "factor", "lambda", "factor_prefill", "factor_decode", "factor_prefill_heads",
          "factor_decode_heads", "lambda_prefill", "lambda_decode", "sparsity", "sparsity_prefill",
          "sparsity_decode", "ppl", "ppl_tail", "kl_mean", "kl_tail", "kl_max", "top1_agree", "passkey_correct",
          "passkey_digits_correct", "answer_logprob", "seconds"]
ROW_KEY = ("task", "doc", "tokens", "decode_positions", "depth", "backend", "phase", "order", "method", "target",
           "factor", "lambda")


def row_key(r: dict) -> tuple:
    # rows written before phases and methods existed are prefill runs with a fixed factor
    d = {"phase": "prefill", "method": "dense" if r.get("backend") == "dense" else "factor", **r}
    return tuple(d.get(k) for k in ROW_KEY)


def write(rows: list[dict], args, out: str, calib: dict, previous: dict | None) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    from load_smollm2 import MODEL_NAME
    prev = (previous or {}).get("meta", {})
    command = "python3 eval/evaluate.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = {"model": MODEL_NAME, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            # a command run again replaces its earlier rows (same keys), so its earlier entry goes too
            "commands": [c for c in prev.get("commands", [prev["command"]] if "command" in prev else [])
                         if c != command] + [command],
            "runs": [r for r in prev.get("runs", []) if r.get("command") != command] + [
                {"command": command, "seconds": round(args.elapsed, 1),
                                             "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}],
            "machine": machine_name(args.device),
            "device": args.device, "dtype": args.dtype, "dense_impl": args.dense_impl, "threads": args.threads,
            "block": args.block, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "calibration_config": os.path.relpath(args.calibration, ROOT),
            "texts": {**prev.get("texts", {}), **{d: texts.describe(d) for d in args.docs}},
            "calibration_passes": {**prev.get("calibration_passes", {}), **calib}}
    if args.calib_doc in texts.available():
        meta["texts"][args.calib_doc] = texts.describe(args.calib_doc)
    with open(out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    try:
        import report
        report.plots(rows, out)
    except Exception as e:  # the rows are saved; a plotting problem must not lose a long run
        print(f"warning: plots not written ({type(e).__name__}: {e}); rerun eval/report.py", file=sys.stderr)


def main() -> None:
    def csvlist(t, lo=None, hi=None, name=""):
        def parse(s):
            try:
                vals = [t(x) for x in s.split(",") if x.strip()]
            except ValueError:
                raise argparse.ArgumentTypeError(f"{s!r} is not a comma list of {t.__name__}") from None
            for v in vals:
                if (lo is not None and v < lo) or (hi is not None and v >= hi):
                    raise argparse.ArgumentTypeError(f"{name} value {v} outside [{lo}, {hi})")
            return vals
        return parse

    def choices(allowed):
        def parse(s):
            vals = [x.strip() for x in s.split(",") if x.strip()]
            bad = [v for v in vals if v not in allowed]
            if bad or not vals:
                raise argparse.ArgumentTypeError(f"{s!r}: expected a comma list of {', '.join(allowed)}")
            return vals
        return parse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", action="append", choices=list(BACKENDS),
                    help="attention backend(s) to compare with dense (repeatable; default: torchref)")
    ap.add_argument("--phases", type=choices(PHASES), default=["prefill"],
                    help="comma list of prefill, decode, both (default prefill)")
    ap.add_argument("--factors", type=csvlist(float, 0, math.inf, "--factors"), default=None,
                    help="threshold_scale_factor values (default 4,16,64 when no --targets/--lambdas)")
    ap.add_argument("--lambdas", type=csvlist(float, 0, math.inf, "--lambdas"), default=[],
                    help="lambda values; factor = lambda * KV length of the phase's first call")
    ap.add_argument("--targets", type=csvlist(float, 0, 1, "--targets"), default=[],
                    help="target sparsities in [0, 1), e.g. 0.3,0.5,0.7,0.9 (0 = dense through the library)")
    ap.add_argument("--target-methods", type=choices(TARGET_METHODS), default=["config"],
                    help="how targets become factors: config, calib-single, calib-head (default config)")
    ap.add_argument("--state-dict", default=None,
                    help="weights to load over the base model (a fine-tuned model's state dict, as "
                         "eval/finetune_sparsity.py writes)")
    ap.add_argument("--calibration", default=DEFAULT_CALIBRATION,
                    help="config.json with the sparse_attention_config formulas (default: the shipped "
                         "data/smollm2_calibration/config.json)")
    ap.add_argument("--calib-doc", default="vim-manual",
                    help="text of the calibration pass of calib-single / calib-head (must not be evaluated)")
    ap.add_argument("--calib-decode-tokens", type=int, default=32, help="greedy decode steps of that pass")
    ap.add_argument("--order", "--orders", dest="orders", type=choices(("ascending", "anchored")),
                    default=["ascending"], help="visiting order(s), comma list (default ascending)")
    ap.add_argument("--dense-impl", default="eager", choices=["eager", "sdpa"],
                    help="dense reference: eager (default) or sdpa (same math, much faster at 4K/8K on CPU)")
    ap.add_argument("--block", type=int, default=128, help="Bm = Bn tile size (default 128)")
    ap.add_argument("--engine", default="auto", choices=["auto", "cpu", "cuda"], help="blasst backend engine")
    ap.add_argument("--docs", type=csvlist(str), default=["licenses"],
                    help=f"documents for ppl/KL, from {texts.available()}")
    ap.add_argument("--tokens", type=csvlist(int, 1), default=[2048],
                    help="context lengths for ppl/KL (decode phases: the prompt length)")
    ap.add_argument("--decode-tokens", type=int, default=256,
                    help="decode phases: positions decoded and scored after the prompt (default 256)")
    ap.add_argument("--passkey-lengths", type=csvlist(int, 1), default=[2048], help="passkey prompt lengths ('' = none)")
    ap.add_argument("--passkey-depths", type=csvlist(float, 0, 1.0000001, "--passkey-depths"), default=[0.1, 0.5, 0.9])
    ap.add_argument("--seed", type=int, default=0, help="pass key digits")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "smollm2_eval"),
                    help="output path without extension (.csv, .json and plots are written)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plots from <out>.json")
    ap.add_argument("--append", action="store_true",
                    help="merge into an existing <out>.json/.csv (rows with the same key are replaced)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args()
    if args.plot_only:
        import report
        if not os.path.exists(args.out + ".json"):
            raise SystemExit(f"--plot-only: {args.out}.json does not exist")
        with open(args.out + ".json") as f:
            report.plots(json.load(f)["rows"], args.out)
        return
    args.backend = args.backend or ["torchref"]
    if args.factors is None:
        args.factors = [] if (args.targets or args.lambdas) else [4.0, 16.0, 64.0]
    if args.decode_tokens < 1:
        ap.error("--decode-tokens must be >= 1")
    unknown = [d for d in args.docs if d not in texts.DOCUMENTS]
    if unknown:
        ap.error(f"--docs {unknown}: unknown documents (known: {list(texts.DOCUMENTS)})")
    if args.calib_doc not in texts.DOCUMENTS:
        ap.error(f"--calib-doc {args.calib_doc}: unknown document (known: {list(texts.DOCUMENTS)})")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            ap.error(f"--device {args.device}: torch sees no CUDA device")
        if args.dtype == "float32" and args.engine != "cpu":
            ap.error("--device cuda: the CUDA engine takes bfloat16 or float16 (add --dtype bfloat16)")
    if any(x >= 1 for x in args.lambdas):
        print("note: --lambdas >= 1 turn skipping off (SPEC section 4)", file=sys.stderr)
    t0 = time.time()
    rows, calib = run(args)
    args.elapsed = time.time() - t0
    previous = None
    if args.append and os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as f:
            previous = json.load(f)
        new_keys = {row_key(r) for r in rows}
        rows = [r for r in previous["rows"] if row_key(r) not in new_keys] + rows
    write(rows, args, args.out, calib, previous)


if __name__ == "__main__":
    main()
