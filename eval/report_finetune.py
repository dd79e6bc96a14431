"""Base vs dense-tuned vs sparse-tuned SmolLM2-135M under the skip rule: tables and plots from three
eval/evaluate.py result files.

    python3 eval/report_finetune.py --base B.json --dense-tuned D.json --sparse-tuned S.json \\
        [--train-summary RUN/summary.json] --out bench/results/smollm2_finetune

The three models
  base          the model as published (evaluate.py without --state-dict)
  dense-tuned   fine-tuned by eval/finetune_sparsity.py with dense attention (the control arm, dense.pt)
  sparse-tuned  fine-tuned by eval/finetune_sparsity.py with the skip rule on (the sparse arm, sparse.pt)
Each JSON is evaluate.py's <out>.json ({"meta": ..., "rows": [...]}), run with --backend blasst --lambdas
..., so that every model has its own dense reference rows and runs at the same lambdas. Only the runs of
one phase (--phase, default prefill), of --backend (default blasst) and of method "lambda" are read; the
lambdas and orders present in all three files are compared, and the perplexity / pass key inputs that all
three files have a dense reference for.

Writes
  <out>.csv  one row per (model, task, doc, tokens, depth, order, lambda): measured sparsity, ppl,
             ppl_vs_own_dense (ppl / the same model's dense ppl on the same input; 1.0 on the dense row,
             whose lambda is "dense"), kl_mean (against the same model's dense), passkey_correct.
  <out>.md   what the models are, where the numbers come from (commit, date, machine and commands of each
             file; the fine-tuning arguments, factor, sparsity and losses of --train-summary), one table per
             order (rows: dense and each lambda; per model: mean measured sparsity over the perplexity inputs,
             geometric-mean perplexity over them, mean ppl_vs_own_dense, pass key accuracy), a computed
             reading per lambda (which tuned model loses less against its own dense) and a comparison at
             the lambda of highest measured sparsity.
  <out>.png  perplexity relative to own dense and absolute perplexity (geometric mean) against measured
             sparsity, one line per model (and order); a pass key accuracy panel when there are pass key rows.

Bad input (a missing or unreadable file, no rows, no lambda runs, no lambda common to the three files)
stops with a message naming the file and what is missing.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import fmt, norm  # noqa: E402

MODELS = ("base", "dense-tuned", "sparse-tuned")
OPTION = {"base": "--base", "dense-tuned": "--dense-tuned", "sparse-tuned": "--sparse-tuned"}
CSV_FIELDS = ["model", "task", "doc", "tokens", "depth", "order", "lambda", "sparsity", "ppl", "ppl_vs_own_dense",
              "kl_mean", "passkey_correct"]
COLORS = {"base": "tab:gray", "dense-tuned": "tab:blue", "sparse-tuned": "tab:red"}
MARKERS = {"base": "o", "dense-tuned": "s", "sparse-tuned": "D"}
ORDER_STYLE = ("-", "--", ":", "-.")

# --------------------------------------------------------------------------- input


def load_json(path: str, what: str) -> object:
    if not os.path.isfile(path):
        raise SystemExit(f"{what} {path}: no such file")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"{what} {path}: not a readable JSON file ({e})") from None


def load_eval(path: str, model: str) -> dict:
    """evaluate.py's <out>.json: a dict with a non-empty "rows" list of dicts."""
    what = OPTION[model]
    data = load_json(path, what)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise SystemExit(f"{what} {path}: expected evaluate.py's JSON ({{\"meta\": ..., \"rows\": [...]}})")
    if not data["rows"]:
        raise SystemExit(f"{what} {path}: no rows")
    if not all(isinstance(r, dict) for r in data["rows"]):
        raise SystemExit(f"{what} {path}: rows must be JSON objects")
    if not isinstance(data.get("meta"), dict):
        data["meta"] = {}
    return data


def input_key(r: dict) -> tuple:
    """The input a row ran on (its dense reference has the same key)."""
    return (r["task"], r.get("doc"), r.get("tokens"), r.get("depth"), r.get("decode_positions"))


def lam_key(x) -> float:
    """Lambdas compared across files: rounded so that 0.1 written by two runs is one value."""
    return float(f"{float(x):.12g}")


def _number(r: dict, k: str, what: str, i: int):
    v = r.get(k)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SystemExit(f"{what}: row {i} has {k} = {v!r}, not a number")
    return v


def records(data: dict, model: str, path: str, phase: str, backend: str) -> tuple[list[dict], list[str]]:
    """The model's dense rows and lambda runs of `phase` / `backend` as CSV records (ppl_vs_own_dense added).
    Returns (records, notes); notes say what was left out."""
    what = f"{OPTION[model]} {path}"
    dense_phase = "prefill" if phase == "prefill" else "decode"
    dense, runs = {}, []
    for i, raw in enumerate(data["rows"]):
        if "task" not in raw or "backend" not in raw:
            raise SystemExit(f"{what}: row {i} has no task or backend (not a row of eval/evaluate.py)")
        r = norm(raw)
        if r["task"] not in ("ppl", "passkey"):
            continue
        for k in ("sparsity", "ppl", "kl_mean", "passkey_correct", "lambda", "tokens", "depth"):
            _number(r, k, what, i)
        if r["backend"] == "dense":
            if r["phase"] == dense_phase:
                if r["task"] == "ppl" and not (r.get("ppl") or 0) > 0:
                    raise SystemExit(f"{what}: dense row {i} ({r.get('doc')} {r.get('tokens')}) has no perplexity")
                dense[input_key(r)] = r  # a later row of the same input replaces an earlier one
        elif r["backend"] == backend and r["phase"] == phase and r["method"] == "lambda":
            if r.get("lambda") is None or r.get("sparsity") is None:
                raise SystemExit(f"{what}: lambda row {i} has no lambda or sparsity")
            if r["task"] == "ppl" and not (r.get("ppl") or 0) > 0:
                raise SystemExit(f"{what}: row {i} ({r.get('doc')} {r.get('tokens')}, lambda {r['lambda']:g}) "
                                 "has no perplexity")
            runs.append(r)
    if not runs:
        raise SystemExit(f"{what}: no {backend} rows with method 'lambda' in phase {phase} (run eval/evaluate.py "
                         f"with --backend {backend} --lambdas ...{'' if phase == 'prefill' else ' --phases ' + phase})")
    if not dense:
        raise SystemExit(f"{what}: no dense reference rows for phase {phase}")
    out, notes = [], []
    for d in dense.values():
        out.append(_record(model, d, "dense", d.get("order"), d.get("ppl")))
    latest = {}
    for r in runs:  # a later row of the same input and setting replaces an earlier one
        latest[(input_key(r), r["order"], lam_key(r["lambda"]))] = r
    orphans = 0
    for (key, order, lam), r in latest.items():
        d = dense.get(key)
        if d is None:
            orphans += 1
            continue
        out.append(_record(model, r, lam, order, d.get("ppl")))
    if orphans:
        notes.append(f"{model}: {orphans} lambda row(s) without a dense reference of the same input left out")
    return out, notes


def _record(model: str, r: dict, lam, order, dense_ppl) -> dict:
    ppl = r.get("ppl") if r["task"] == "ppl" else None
    return {"model": model, "task": r["task"], "doc": r.get("doc"), "tokens": r.get("tokens"), "depth": r.get("depth"),
            "order": order, "lambda": lam, "sparsity": 0.0 if lam == "dense" else r["sparsity"], "ppl": ppl,
            "ppl_vs_own_dense": (1.0 if lam == "dense" else ppl / dense_ppl) if ppl is not None else None,
            "kl_mean": None if lam == "dense" else r.get("kl_mean"),
            "passkey_correct": r.get("passkey_correct") if r["task"] == "passkey" else None,
            "_input": input_key(r)}


def _sort_key(rec: dict) -> tuple:
    lam = rec["lambda"]
    return (MODELS.index(rec["model"]), rec["task"], str(rec["doc"]), rec["tokens"] or 0, rec["depth"] or 0,
            lam != "dense", str(rec["order"]), -1.0 if lam == "dense" else lam)


# --------------------------------------------------------------------------- aggregation


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def aggregate(recs: list[dict], inputs: set) -> dict:
    """Per (model, order, lambda), over the records whose input is in `inputs` (the dense row: order None,
    lambda "dense"): sparsity (mean over ppl inputs; over pass key inputs where there are none), geo_ppl,
    rel_ppl (mean ppl_vs_own_dense), passkey (fraction correct), passkey_sparsity, and the counts."""
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        if r["_input"] not in inputs:
            continue
        k = (r["model"], None if r["lambda"] == "dense" else r["order"], r["lambda"])
        groups.setdefault(k, []).append(r)
    out = {}
    for k, g in groups.items():
        p = [r for r in g if r["task"] == "ppl"]
        q = [r for r in g if r["task"] == "passkey" and r["passkey_correct"] is not None]
        a = {"n_ppl": len(p), "n_passkey": len(q), "sparsity": None, "geo_ppl": None, "rel_ppl": None,
             "passkey": None, "passkey_k": sum(int(r["passkey_correct"]) for r in q), "passkey_sparsity": None}
        if p:
            a["sparsity"] = sum(r["sparsity"] for r in p) / len(p)
            a["geo_ppl"] = geomean([r["ppl"] for r in p])
            a["rel_ppl"] = sum(r["ppl_vs_own_dense"] for r in p) / len(p)
        if q:
            a["passkey"] = a["passkey_k"] / len(q)
            a["passkey_sparsity"] = sum(r["sparsity"] for r in q) / len(q)
            if a["sparsity"] is None:
                a["sparsity"] = a["passkey_sparsity"]
        out[k] = a
    return out


def settings(recs_by_model: dict[str, list[dict]]) -> tuple[list[str], list[float], list[float]]:
    """(orders, common lambdas, lambdas left out): the orders and lambdas every model ran."""
    orders, lams = None, None
    for m in MODELS:
        o = {r["order"] for r in recs_by_model[m] if r["lambda"] != "dense"}
        lm = {r["lambda"] for r in recs_by_model[m] if r["lambda"] != "dense"}
        orders = o if orders is None else orders & o
        lams = lm if lams is None else lams & lm
    every = {r["lambda"] for m in MODELS for r in recs_by_model[m] if r["lambda"] != "dense"}
    return sorted(orders, key=lambda o: (o != "ascending", str(o))), sorted(lams), sorted(every - lams)


# --------------------------------------------------------------------------- markdown


def pct(rel) -> str:
    return "-" if rel is None else f"{100.0 * (rel - 1.0):+.2f} %"


def passkey_cell(a: dict) -> str:
    return "-" if a is None or a["passkey"] is None else f"{a['passkey']:.3f} ({a['passkey_k']}/{a['n_passkey']})"


def compare(agg: dict, order, lam) -> tuple[str | None, str]:
    """Which tuned model loses less against its own dense at (order, lambda): the lower mean ppl_vs_own_dense;
    without perplexity rows, the higher pass key accuracy. Returns (winner or None for a tie / no data, text)."""
    d, s, b = (agg.get((m, order, lam)) for m in ("dense-tuned", "sparse-tuned", "base"))
    if d is None or s is None:
        return None, "no runs of both tuned models"
    sp = f"measured sparsity {fmt(s['sparsity'])} (sparse-tuned) / {fmt(d['sparsity'])} (dense-tuned)"
    pk = ""
    if s["passkey"] is not None and d["passkey"] is not None:
        pk = (f"; pass key {s['passkey_k']}/{s['n_passkey']} (sparse-tuned) vs {d['passkey_k']}/{d['n_passkey']} "
              "(dense-tuned)")
    if s["rel_ppl"] is not None and d["rel_ppl"] is not None:
        base = f", base {pct(b['rel_ppl'])}" if b and b["rel_ppl"] is not None else ""
        if math.isclose(s["rel_ppl"], d["rel_ppl"], rel_tol=1e-9, abs_tol=1e-12):
            return None, (f"both tuned models lose the same against their own dense ({pct(s['rel_ppl'])}{base}), "
                          f"at {sp}{pk}")
        win, lose = ("sparse-tuned", "dense-tuned") if s["rel_ppl"] < d["rel_ppl"] else ("dense-tuned", "sparse-tuned")
        a = {"sparse-tuned": s, "dense-tuned": d}
        return win, (f"**{win}** loses less against its own dense: perplexity {pct(a[win]['rel_ppl'])} vs "
                     f"{pct(a[lose]['rel_ppl'])} for {lose}{base}, at {sp}{pk}")
    if s["passkey"] is not None and d["passkey"] is not None:
        if s["passkey"] == d["passkey"]:
            return None, f"no perplexity rows; both tuned models keep the same share of pass keys ({sp}{pk})"
        win = "sparse-tuned" if s["passkey"] > d["passkey"] else "dense-tuned"
        return win, f"no perplexity rows; **{win}** keeps more pass keys, at {sp}{pk}"
    return None, "no perplexity or pass key rows of both tuned models"


def highest_sparsity(agg: dict, orders: list[str], lams: list[float]) -> tuple | None:
    """The (order, lambda) of highest measured sparsity, averaged over the three models."""
    best = None
    for o in orders:
        for lam in lams:
            a = [agg.get((m, o, lam)) for m in MODELS]
            if any(x is None or x["sparsity"] is None for x in a):
                continue
            s = sum(x["sparsity"] for x in a) / len(a)
            if best is None or s > best[0]:
                best = (s, o, lam)
    return best


def meta_lines(evals: dict[str, dict], paths: dict[str, str], train: dict | None, train_path: str | None) -> list[str]:
    out = ["## Sources", ""]
    for m in MODELS:
        meta = evals[m]["meta"]
        out.append(f"- {m}: `{paths[m]}`: commit {str(meta.get('commit', '-'))[:10]}, date {meta.get('date', '-')}, "
                   f"machine {meta.get('machine', '-')}" +
                   (f", {meta.get('device')}, {meta.get('dtype')}" if meta.get("device") else ""))
        cmds = meta.get("commands") or ([meta["command"]] if meta.get("command") else [])
        for c in cmds:
            out.append(f"  - `{c}`")
    out.append("")
    for m in MODELS:
        cmds = " ".join(evals[m]["meta"].get("commands") or [])
        if cmds and ("--state-dict" in cmds) != (m != "base"):
            out += [f"**Note:** the {m} file's commands {'do not load' if m != 'base' else 'load'} a `--state-dict`: "
                    "check that the files were given in the right order.", ""]
    if train is not None:
        args = train.get("args") if isinstance(train.get("args"), dict) else {}
        out += [f"Fine-tuning (`{train_path}`): " + ", ".join(f"{k}={v}" for k, v in args.items()
                                                              if k not in ("no_progress",)) + ".", ""]
        out.append(f"Sparse arm factor: {fmt(train.get('factor'), '.4g')} (the dense arm runs at 0).")
        out += ["", "| arm | first loss | last loss | mean prefill sparsity | seconds |", "|---|---|---|---|---|"]
        for arm, a in (train.get("arms") or {}).items():
            a = a if isinstance(a, dict) else {}
            out.append(f"| {arm} | {fmt(a.get('first_loss'), '.4f')} | {fmt(a.get('last_loss'), '.4f')} | "
                       f"{fmt(a.get('mean_sparsity'))} | {fmt(a.get('seconds'), '.0f')} |")
        out.append("")
    return out


def markdown(evals, paths, recs, agg, orders, lams, dropped, notes, train=None, train_path=None,
             phase="prefill", n_inputs=(0, 0)) -> str:
    model_name = next((evals[m]["meta"].get("model") for m in MODELS if evals[m]["meta"].get("model")),
                      "SmolLM2-135M")
    head = [f"# {model_name}: base vs dense-tuned vs sparse-tuned under the skip rule", "",
            "Generated by `python3 eval/report_finetune.py` from three eval/evaluate.py result files. The models:", "",
            "- **base**: the published weights (no `--state-dict`);",
            "- **dense-tuned**: fine-tuned by eval/finetune_sparsity.py with dense attention (the control arm, "
            "`dense.pt`);",
            "- **sparse-tuned**: the same fine-tuning with the skip rule on, gradients over the kept tiles (the "
            "sparse arm, `sparse.pt`).", "",
            f"Each model is compared with its own dense reference on the same input. Phase {phase}; "
            f"{n_inputs[0]} perplexity input(s) and {n_inputs[1]} pass key input(s) that all three files have a "
            "dense reference for. Sparsity: measured skipped / visited tiles, mean over the perplexity inputs "
            "(over the pass key inputs where there are none). ppl: geometric mean over the perplexity inputs. "
            "ppl / own dense: mean over those inputs of the run's perplexity divided by the same model's dense "
            "perplexity on that input. Pass key: fraction of pass key inputs answered correctly.", ""]
    head += meta_lines(evals, paths, train, train_path)
    for n in notes:
        head.append(f"- {n}")
    if dropped:
        head.append("- lambdas not run by all three models, left out of the tables: "
                    + ", ".join(f"{x:g}" for x in dropped))
    if notes or dropped:
        head.append("")
    body = []
    full = {"ppl": n_inputs[0], "passkey": n_inputs[1]}
    star = False
    for o in orders:
        body += [f"## Order {o}", "", "| lambda | " + " | ".join(
            f"{m} sparsity | {m} ppl | {m} ppl / own dense | {m} pass key" for m in MODELS) + " |",
            "|" + "---|" * (1 + 4 * len(MODELS))]
        for lam in ["dense"] + lams:
            cells = []
            for m in MODELS:
                a = agg.get((m, None, "dense") if lam == "dense" else (m, o, lam))
                if a is None:
                    cells += ["-"] * 4
                    continue
                mark = "" if (a["n_ppl"] == full["ppl"] and a["n_passkey"] == full["passkey"]) else "*"
                star = star or bool(mark)
                cells += [fmt(a["sparsity"]) + mark, fmt(a["geo_ppl"]),
                          fmt(a["rel_ppl"], ".4f"), passkey_cell(a)]
            body.append(f"| {lam if lam == 'dense' else format(lam, 'g')} | " + " | ".join(cells) + " |")
        body.append("")
    if star:
        body += ["\\* fewer inputs than the common set (a run is missing in that file): the cell averages over "
                 "the inputs present.", ""]
    body += ["## Reading", ""]
    for o in orders:
        for lam in lams:
            body.append(f"- {o}, lambda {lam:g}: {compare(agg, o, lam)[1]}.")
    best = highest_sparsity(agg, orders, lams)
    if best is not None:
        s, o, lam = best
        win, text = compare(agg, o, lam)
        sp = ", ".join(f"{m} {fmt(agg[(m, o, lam)]['sparsity'])}" for m in MODELS)
        absol = ", ".join(f"{m} {fmt(agg[(m, o, lam)]['geo_ppl'])}" for m in MODELS
                          if agg[(m, o, lam)]["geo_ppl"] is not None)
        body += ["", f"At the highest measured sparsity ({o}, lambda {lam:g}; mean {s:.3f}: {sp}): {text}"
                 + (f". Perplexity (geometric mean): {absol}" if absol else "") + "."]
    return "\n".join(head + body) + "\n"


# --------------------------------------------------------------------------- outputs


def write_csv(recs: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(recs, key=_sort_key):
            w.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_FIELDS})


def plots(agg: dict, orders: list[str], lams: list[float], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_pk = any(a["passkey"] is not None for a in agg.values())
    fig, axes = plt.subplots(1, 3 if has_pk else 2, figsize=(17 if has_pk else 12, 4.8), squeeze=False)
    axes = axes[0]
    for m in MODELS:
        d = agg.get((m, None, "dense"), {})
        for j, o in enumerate(orders):
            kw = dict(color=COLORS[m], marker=MARKERS[m], linestyle=ORDER_STYLE[j % len(ORDER_STYLE)],
                      label=m + (f", {o}" if len(orders) > 1 else ""))
            pts = [(agg[(m, o, lam)], lam) for lam in lams if (m, o, lam) in agg]
            ppl = sorted((a["sparsity"], a["rel_ppl"], a["geo_ppl"], lam) for a, lam in pts if a["rel_ppl"] is not None)
            if ppl:
                axes[0].plot([0.0] + [p[0] for p in ppl], [1.0] + [p[1] for p in ppl], **kw)
                if m == "sparse-tuned" and j == 0:
                    for x, y, _, lam in ppl:
                        axes[0].annotate(f"{lam:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
                x0 = [0.0] if d.get("geo_ppl") is not None else []
                y0 = [d["geo_ppl"]] if x0 else []
                axes[1].plot(x0 + [p[0] for p in ppl], y0 + [p[2] for p in ppl], **kw)
            if has_pk:
                pk = sorted((a["passkey_sparsity"], a["passkey"]) for a, _ in pts if a["passkey"] is not None)
                x0 = [0.0] if d.get("passkey") is not None else []
                y0 = [d["passkey"]] if x0 else []
                if pk:
                    axes[2].plot(x0 + [p[0] for p in pk], y0 + [p[1] for p in pk], **kw)
    axes[0].axhline(1.0, color="k", lw=0.6, ls=":")
    axes[0].set(xlabel="measured sparsity (mean over perplexity inputs)", ylabel="ppl / own dense ppl (mean over inputs)",
                title="perplexity relative to the model's own dense (labels: lambda)")
    axes[1].set(xlabel="measured sparsity", ylabel="perplexity (geometric mean over inputs)",
                title="absolute perplexity (sparsity 0: the model's dense)")
    if has_pk:
        axes[2].set(xlabel="measured sparsity (mean over pass key inputs)", ylabel="pass key accuracy",
                    ylim=(-0.05, 1.05), title="pass key (sparsity 0: the model's dense)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Base vs dense-tuned vs sparse-tuned: accuracy against measured sparsity (fixed lambdas)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, metavar="JSON", help="evaluate.py result of the base model")
    ap.add_argument("--dense-tuned", required=True, metavar="JSON",
                    help="evaluate.py result of the control arm (--state-dict RUN/dense.pt)")
    ap.add_argument("--sparse-tuned", required=True, metavar="JSON",
                    help="evaluate.py result of the sparse arm (--state-dict RUN/sparse.pt)")
    ap.add_argument("--train-summary", metavar="JSON",
                    help="finetune_sparsity.py's RUN/summary.json: its arguments, factor, per-arm losses and "
                         "sparsity go into the markdown")
    ap.add_argument("--out", required=True, metavar="PATH",
                    help="output path without extension: writes PATH.csv, PATH.md and PATH.png")
    ap.add_argument("--phase", default="prefill", choices=["prefill", "decode", "both"],
                    help="which phase's lambda runs to compare (default prefill)")
    ap.add_argument("--backend", default="blasst", help="the sparse backend of the runs (default blasst)")
    ap.add_argument("--no-plot", action="store_true", help="CSV and markdown only")
    args = ap.parse_args(argv)

    paths = {"base": args.base, "dense-tuned": args.dense_tuned, "sparse-tuned": args.sparse_tuned}
    evals = {m: load_eval(paths[m], m) for m in MODELS}
    seen = {}
    for m in MODELS:
        real = os.path.realpath(paths[m])
        if real in seen:
            print(f"warning: {OPTION[m]} and {OPTION[seen[real]]} name the same file {paths[m]}", file=sys.stderr)
        seen.setdefault(real, m)
    train = None
    if args.train_summary:
        train = load_json(args.train_summary, "--train-summary")
        if not isinstance(train, dict) or not isinstance(train.get("arms"), dict):
            raise SystemExit(f"--train-summary {args.train_summary}: expected finetune_sparsity.py's summary.json "
                             "({\"args\": ..., \"factor\": ..., \"arms\": {...}})")

    by_model, notes = {}, []
    for m in MODELS:
        by_model[m], n = records(evals[m], m, paths[m], args.phase, args.backend)
        notes += n
    orders, lams, dropped = settings(by_model)
    if not lams:
        have = "; ".join(f"{m}: " + ", ".join(f"{x:g}" for x in sorted({r['lambda'] for r in by_model[m]
                                                                        if r["lambda"] != "dense"})) for m in MODELS)
        raise SystemExit(f"the three files have no lambda in common ({have})")
    if not orders:
        have = "; ".join(f"{m}: " + ", ".join(sorted({str(r['order']) for r in by_model[m] if r["lambda"] != "dense"}))
                         for m in MODELS)
        raise SystemExit(f"the three files have no visiting order in common ({have})")
    inputs = None
    for m in MODELS:
        keys = {r["_input"] for r in by_model[m] if r["lambda"] == "dense"}
        inputs = keys if inputs is None else inputs & keys
    if not inputs:
        raise SystemExit("the three files have no input (task, doc, tokens, depth) with a dense reference in common")
    n_inputs = (sum(1 for k in inputs if k[0] == "ppl"), sum(1 for k in inputs if k[0] == "passkey"))
    every = {r["_input"] for m in MODELS for r in by_model[m]}
    if every - inputs:
        notes.append(f"{len(every - inputs)} input(s) without a dense reference in every file left out of the tables")

    recs = [r for m in MODELS for r in by_model[m]]
    agg = aggregate([r for r in recs if r["lambda"] == "dense" or (r["lambda"] in lams and r["order"] in orders)],
                    inputs)
    md = markdown(evals, paths, recs, agg, orders, lams, dropped, notes, train, args.train_summary,
                  args.phase, n_inputs)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_csv(recs, args.out + ".csv")
        with open(args.out + ".md", "w") as f:
            f.write(md)
    except OSError as e:
        raise SystemExit(f"--out {args.out}: cannot write the results ({e})") from None
    print(md)
    print("wrote", args.out + ".csv")
    print("wrote", args.out + ".md")
    if not args.no_plot:
        plots(agg, orders, lams, args.out + ".png")
        print("wrote", args.out + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
