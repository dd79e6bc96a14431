"""Tables, checks and plots from the rows eval/evaluate.py writes (<out>.json).

    python3 eval/report.py --out bench/results/smollm2_eval_targets     # writes <out>.md and the plots

<out>.md holds every sparse run next to its dense reference (perplexity change in %, KL, top-1 agreement,
pass key), then the checks: at measured prefill sparsity >= 0.5, is perplexity within 1 % of dense and the
pass key answer the same as dense's; at >= 0.7, is perplexity within 3 %; where along each curve those
limits are crossed; how much sparsity each visiting order and per-head factors give at equal accuracy.
Plots: <out>.png (accuracy vs measured sparsity, one row per phase) and <out>_perhead.png (per-head
factors against one factor per phase, from the same calibration pass).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PHASE_ORDER = ("prefill", "decode", "both")


def norm(r: dict) -> dict:
    """Rows written before phases and methods existed are prefill runs with a fixed factor."""
    return {"phase": "prefill", "method": "dense" if r.get("backend") == "dense" else "factor", **r}


def input_key(r: dict) -> tuple:
    """The input a row ran on; decode and both rows share the dense reference of their decode input."""
    kind = "prefill" if r["phase"] == "prefill" else "decode"
    return (r["task"], r.get("doc"), r.get("tokens"), r.get("depth"), kind)


def with_reference(rows: list[dict]) -> list[dict]:
    """Sparse rows with the dense reference's ppl / pass key added (ppl_delta_pct, dense_*)."""
    rows = [norm(r) for r in rows]
    dense = {input_key(r): r for r in rows if r["backend"] == "dense"}
    out = []
    for r in rows:
        if r["backend"] == "dense":
            continue
        d = dense.get(input_key(r))
        if d is None or r.get("sparsity") is None:
            continue
        r = dict(r)
        if r["task"] == "ppl":
            r["dense_ppl"] = d["ppl"]
            r["ppl_delta_pct"] = 100.0 * (r["ppl"] / d["ppl"] - 1.0)
        else:
            r["dense_correct"] = d["passkey_correct"]
            r["same_as_dense"] = int(r["passkey_correct"] == d["passkey_correct"])
        out.append(r)
    return out


METHOD_ORDER = ("config", "factor", "lambda", "calib-single", "calib-head")


def method_rank(m: str) -> int:
    return METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)


def label(method: str, order: str, backend: str = "blasst") -> str:
    name = {"config": "target (config formula)", "calib-single": "target, 1 factor/phase (calib.)",
            "calib-head": "target, per-head (calib.)", "factor": "fixed factor", "lambda": "fixed lambda"}
    return f"{name.get(method, method)}, {order}" + ("" if backend == "blasst" else f" [{backend}]")


def fmt(x, spec=".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def setting_value(r: dict) -> str:
    if r["method"] in ("config", "calib-single", "calib-head"):
        return f"t={r['target']:g}"
    if r["method"] == "lambda":
        return f"lambda={r['lambda']:g}"
    return f"f={r.get('factor', r.get('factor_prefill')):g}"


def factors_text(r: dict) -> str:
    parts = []
    for p in ("prefill", "decode"):
        if r["phase"] == "prefill" and p == "decode":
            continue
        if r["phase"] == "decode" and p == "prefill":
            continue
        heads = r.get(f"factor_{p}_heads")
        f = r.get(f"factor_{p}")
        lam = r.get(f"lambda_{p}")
        if heads:
            s = f"{heads} (min/med/max)"
        elif f is not None:
            s = f"{f:.4g}"
        else:
            s = fmt(r.get("factor"), ".4g")
        if lam is not None:
            s += f" (lambda {lam:.3g}{', skipping off' if lam >= 1 and not heads else ''})"
        parts.append(s if r["phase"] != "both" else f"{p} {s}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- curves


def sparsity_at(points: list[tuple[float, float]], level: float, log: bool = False) -> str:
    """Where a curve of (sparsity, y) first rises above `level`, interpolated between the measured points
    (in log(y) when `log`). The dense point (0, 0) starts a linear curve. '>x': not reached up to the
    largest measured sparsity x; '<x': already above at the first point x."""
    pts = sorted(p for p in points if p[0] is not None and p[1] is not None)
    if log:
        pts = [p for p in pts if p[1] > 0 and p[0] > 0]
    else:
        pts = [(0.0, 0.0)] + pts
    if not pts:
        return "-"
    if pts[0][1] > level:
        return f"<{pts[0][0]:.3f}"
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y0 <= level < y1:
            if log:
                w = (math.log(level) - math.log(y0)) / (math.log(y1) - math.log(y0))
            else:
                w = (level - y0) / (y1 - y0)
            return f"{x0 + w * (x1 - x0):.3f}"
    return f">{max(p[0] for p in pts):.3f}"


def interp_log(points: list[tuple[float, float]], x: float) -> float | None:
    """y at sparsity x, interpolated in log(y) between the measured points (no extrapolation)."""
    pts = sorted(p for p in points if p[1] and p[1] > 0 and p[0] > 0)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return y0
            w = (x - x0) / (x1 - x0)
            return math.exp(math.log(y0) + w * (math.log(y1) - math.log(y0)))
    return None


# --------------------------------------------------------------------------- markdown


def summary(rows: list[dict]) -> list[str]:
    """One line per (phase, way of choosing factors, order, setting): for every perplexity input the measured
    sparsity, perplexity change and KL; for every pass key length the answers kept at the mean sparsity."""
    sparse = [r for r in with_reference(rows) if r["backend"] == "blasst"]
    ppl_inputs = sorted({(r["phase"] != "prefill", r["tokens"], r["doc"]) for r in sparse if r["task"] == "ppl"})
    steps = sorted({r["decode_positions"] for r in sparse if r["task"] == "ppl" and r.get("decode_positions")})
    decode_note = (f" Decode and both: {' or '.join(map(str, steps))} decoded positions after a prompt of the "
                   "column's length." if steps else "")
    out = ["### Summary", "",
           "Cells: measured sparsity / perplexity change / KL (perplexity inputs), answers equal to dense's at the "
           "mean sparsity (pass key, 3 depths)." + decode_note, ""]
    for phase in PHASE_ORDER:
        ph = [r for r in sparse if r["phase"] == phase]
        if not ph:
            continue
        cols = [(n, d) for dec, n, d in ppl_inputs if dec == (phase != "prefill")
                and any(r["task"] == "ppl" and r["tokens"] == n and r["doc"] == d for r in ph)]
        pk_lengths = sorted({_passkey_length(r) for r in ph if r["task"] == "passkey"})
        out += [f"**{phase}**", "", "| factors, order | setting | " + " | ".join(f"{d} {n}" for n, d in cols) +
                "".join(f" | pass key {n}" for n in pk_lengths) + " |", "|" + "---|" * (2 + len(cols) + len(pk_lengths))]
        keys = sorted({(r["method"], r["order"], setting_value(r)) for r in ph},
                      key=lambda k: (method_rank(k[0]), k[1], k[2]))
        for m, o, sv in keys:
            g = [r for r in ph if (r["method"], r["order"], setting_value(r)) == (m, o, sv)]
            cells = []
            for n, d in cols:
                r = next((r for r in g if r["task"] == "ppl" and r["tokens"] == n and r["doc"] == d), None)
                cells.append("-" if r is None else
                             f"{r['sparsity']:.2f} / {r['ppl_delta_pct']:+.1f} % / {fmt(r.get('kl_mean'), '.1e')}")
            for n in pk_lengths:
                k = [r for r in g if r["task"] == "passkey" and _passkey_length(r) == n]
                cells.append("-" if not k else f"{sum(r['same_as_dense'] for r in k)}/{len(k)} at "
                             f"{sum(r['sparsity'] for r in k) / len(k):.2f}")
            out.append(f"| {label(m, o)} | {sv} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def tables(rows: list[dict]) -> list[str]:
    sparse = with_reference(rows)
    dense_rows = [norm(r) for r in rows if r["backend"] == "dense"]
    lines = []
    ppl = [r for r in sparse if r["task"] == "ppl"]
    if ppl:
        lines += ["### Perplexity and KL (every run)", "",
                  "| phase | doc | tokens | method, order | setting | factor (lambda) | sparsity | ppl | dense ppl | "
                  "ppl change | KL mean | top-1 agree |", "|" + "---|" * 12]
        key = lambda r: (PHASE_ORDER.index(r["phase"]), r["doc"], r["tokens"], method_rank(r["method"]), r["order"],  # noqa: E731
                         r.get("target") or 0, r.get("factor") or 0, r.get("lambda") or 0)
        for r in sorted(ppl, key=key):
            sp = fmt(r["sparsity"])
            if r["phase"] == "both":
                sp += f" (p {fmt(r.get('sparsity_prefill'), '.2f')}, d {fmt(r.get('sparsity_decode'), '.2f')})"
            lines.append(f"| {r['phase']} | {r['doc']} | {r['tokens']}" +
                         (f"+{r['decode_positions']}" if r.get("decode_positions") else "") +
                         f" | {label(r['method'], r['order'], r['backend'])} | {setting_value(r)} | {factors_text(r)} | "
                         f"{sp} | {r['ppl']:.3f} | {r['dense_ppl']:.3f} | {r['ppl_delta_pct']:+.2f} % | "
                         f"{fmt(r.get('kl_mean'), '.2e')} | {fmt(r.get('top1_agree'))} |")
        lines.append("")
    pk = [r for r in sparse if r["task"] == "passkey"]
    if pk:
        lines += ["### Pass key (depths together)", "",
                  "| phase | length | method, order | setting | sparsity (mean) | correct | dense correct | "
                  "answer log-prob (mean) |", "|" + "---|" * 8]
        groups = defaultdict(list)
        for r in pk:
            length = r["tokens"] + (r.get("decode_positions") or 0) + (1 if r["phase"] != "prefill" else 0)
            groups[(r["phase"], length, r["method"], r["order"], r["backend"], setting_value(r))].append(r)
        for k in sorted(groups, key=lambda k: (PHASE_ORDER.index(k[0]), k[1], method_rank(k[2]), k[3], k[5])):
            g = groups[k]
            lines.append(f"| {k[0]} | {k[1]} | {label(k[2], k[3], k[4])} | {k[5]} | "
                         f"{sum(r['sparsity'] for r in g) / len(g):.3f} | {sum(r['passkey_correct'] for r in g)}/{len(g)} | "
                         f"{sum(r['dense_correct'] for r in g)}/{len(g)} | "
                         f"{sum(r['answer_logprob'] for r in g) / len(g):.2f} |")
        lines.append("")
    if dense_rows:
        lines += ["### Dense references", "", "| task | phase (input) | doc | tokens | depth | ppl | pass key | seconds |",
                  "|" + "---|" * 8]
        for r in dense_rows:
            lines.append(f"| {r['task']} | {r['phase']} | {r.get('doc')} | {r['tokens']}" +
                         (f"+{r['decode_positions']}" if r.get("decode_positions") else "") +
                         f" | {fmt(r.get('depth'), 'g')} | {fmt(r.get('ppl'))} | {fmt(r.get('passkey_correct'), 'd')} | "
                         f"{r['seconds']} |")
        lines.append("")
    return lines


SINGLE = ("config", "factor", "lambda")  # one factor per phase, however it was chosen


def checks(rows: list[dict]) -> list[str]:
    sparse = [r for r in with_reference(rows) if r["backend"] == "blasst"]
    out = ["### Checks", ""]
    # 1. accuracy at measured sparsity >= 0.5 and >= 0.7 (perplexity change taken in absolute value: a
    #    run that lowers perplexity by more than the limit is not "within" it either)
    for phase in PHASE_ORDER:
        ph = [r for r in sparse if r["phase"] == phase]
        if not ph:
            continue
        for lo, limit in ((0.5, 1.0), (0.7, 3.0)):
            p = [r for r in ph if r["task"] == "ppl" and r["sparsity"] >= lo]
            k = [r for r in ph if r["task"] == "passkey" and r["sparsity"] >= lo]
            top = max(r["sparsity"] for r in ph)
            if not p and not k:
                out.append(f"- {phase}, measured sparsity >= {lo}: no run got there (largest: {top:.3f}).")
                continue
            s = f"- {phase}, measured sparsity >= {lo}: "
            if p:
                within = [r for r in p if abs(r["ppl_delta_pct"]) <= limit]
                worst = max(p, key=lambda r: abs(r["ppl_delta_pct"]))
                s += (f"perplexity within {limit:g} % of dense in {len(within)}/{len(p)} runs (worst "
                      f"{worst['ppl_delta_pct']:+.2f} % at sparsity {worst['sparsity']:.3f}: {worst['doc']} "
                      f"{worst['tokens']}, {label(worst['method'], worst['order'])}, {setting_value(worst)})")
            else:
                s += "no perplexity run got there"
            if k:
                same = sum(r["same_as_dense"] for r in k)
                s += f"; pass key equal to dense in {same}/{len(k)} runs"
                lost = [r for r in k if not r["same_as_dense"]]
                if lost:
                    s += " (differs: " + ", ".join(
                        f"{_passkey_length(r)} tokens depth {r['depth']:g} at s={r['sparsity']:.2f} ({r['method']}, {r['order']})"
                        for r in lost[:8]) + ")"
            out.append(s + ".")
    # 2. where each curve crosses the limits, per input, order and way of choosing factors
    curves = defaultdict(list)
    for r in sparse:
        if r["task"] == "ppl":
            fam = "one factor" if r["method"] in SINGLE else r["method"]
            curves[(r["phase"], r["doc"], r["tokens"], r["order"], fam)].append(r)
    out += ["", "Measured sparsity at which each curve crosses a limit (interpolated between runs; '>x': not crossed "
            "up to the largest sparsity x reached; 'one factor' pools the config-target, fixed-factor and "
            "fixed-lambda runs of that order):", "",
            "| phase | doc | tokens | order | factors | |ppl change| 1 % | |ppl change| 3 % | KL 1e-3 | KL 1e-2 | "
            "largest sparsity |", "|" + "---|" * 10]
    for k in sorted(curves, key=lambda k: (PHASE_ORDER.index(k[0]),) + k[1:]):
        g = curves[k]
        pp = [(r["sparsity"], abs(r["ppl_delta_pct"])) for r in g]
        kk = [(r["sparsity"], r.get("kl_mean")) for r in g]
        out.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {k[4]} | {sparsity_at(pp, 1.0)} | {sparsity_at(pp, 3.0)} | "
                   f"{sparsity_at(kk, 1e-3, log=True)} | {sparsity_at(kk, 1e-2, log=True)} | "
                   f"{max(r['sparsity'] for r in g):.3f} |")
    # 3. anchored vs ascending at the same setting
    pairs = defaultdict(dict)
    for r in sparse:
        if r["method"] in SINGLE and r["task"] == "ppl":
            pairs[(r["phase"], r["doc"], r["tokens"], setting_value(r))][r["order"]] = r
    both = {k: v for k, v in pairs.items() if "ascending" in v and "anchored" in v}
    if both:
        out += ["", "Anchored vs ascending at the same setting (perplexity inputs):", "",
                "| phase | doc | tokens | setting | sparsity asc | sparsity anch | KL asc | KL anch | ppl change asc | "
                "ppl change anch |", "|" + "---|" * 10]
        for k in sorted(both, key=lambda k: (PHASE_ORDER.index(k[0]),) + k[1:]):
            a, b = both[k]["ascending"], both[k]["anchored"]
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {a['sparsity']:.3f} | {b['sparsity']:.3f} | "
                       f"{fmt(a.get('kl_mean'), '.2e')} | {fmt(b.get('kl_mean'), '.2e')} | {a['ppl_delta_pct']:+.2f} % | "
                       f"{b['ppl_delta_pct']:+.2f} % |")
        out += ["", "KL at equal measured sparsity, anchored / ascending (each interpolated in log space along its "
                "own 'one factor' curve; < 1: anchored more accurate):", ""]
        for k in sorted({k[:3] for k in both}, key=lambda k: (PHASE_ORDER.index(k[0]),) + k[1:]):
            asc = [(r["sparsity"], r.get("kl_mean")) for r in curves.get(k + ("ascending", "one factor"), [])]
            anc = [(r["sparsity"], r.get("kl_mean")) for r in curves.get(k + ("anchored", "one factor"), [])]
            cells = []
            for x in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
                ka, kb = interp_log(asc, x), interp_log(anc, x)
                if ka and kb:
                    cells.append(f"s={x:.1f}: {kb / ka:.2f}")
            out.append(f"- {k[0]} {k[1]} {k[2]}: " + (", ".join(cells) if cells else "no common sparsity range"))
    # 4. per head vs one factor per phase, same calibration pass
    ph = defaultdict(dict)
    for r in sparse:
        if r["method"] in ("calib-single", "calib-head") and r["task"] == "ppl":
            ph[(r["phase"], r["doc"], r["tokens"], r["order"])].setdefault(r["method"], []).append(r)
    if ph:
        out += ["", "Per-head factors vs one factor per phase (both from the same calibration pass): KL at equal "
                "measured sparsity, per-head / single (interpolated in log space; < 1: per-head more accurate):", ""]
        for k in sorted(ph, key=lambda k: (PHASE_ORDER.index(k[0]),) + k[1:]):
            g = ph[k]
            if "calib-single" not in g or "calib-head" not in g:
                continue
            single = [(r["sparsity"], r.get("kl_mean")) for r in g["calib-single"]]
            head = [(r["sparsity"], r.get("kl_mean")) for r in g["calib-head"]]
            cells = []
            for x in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
                a, b = interp_log(single, x), interp_log(head, x)
                if a and b:
                    cells.append(f"s={x:.1f}: {b / a:.2f}")
            top = {m: max(r["sparsity"] for r in v) for m, v in g.items()}
            out.append(f"- {k[0]} {k[1]} {k[2]} {k[3]}: " + (", ".join(cells) if cells else "no common sparsity range")
                       + f" (largest sparsity reached: single {top['calib-single']:.3f}, per-head {top['calib-head']:.3f})")
    return out + [""]


def markdown(rows: list[dict], meta: dict | None = None) -> str:
    head = ["# SmolLM2-135M-Instruct: BLASST accuracy at calibrated targets", "",
            "Generated by `python3 eval/report.py` from the rows of the JSON next to this file. `ppl change` is "
            "relative to the dense reference of the same input; `sparsity` is skipped / visited tiles of the "
            "row's phase (both: prefill and decode calls together).", ""]
    if meta:
        head += [f"Model: {meta.get('model')}; machine: {meta.get('machine')}, {meta.get('threads')} threads, "
                 f"{meta.get('dtype')}; Bm = Bn = {meta.get('block')}; commit {str(meta.get('commit'))[:10]}.", ""]
        runs = meta.get("runs", [])
        if runs:
            total = sum(r.get("seconds", 0) for r in runs)
            head += [f"Runs ({total / 60:.1f} min in all):", ""] + [
                f"- `{r['command']}` ({r.get('seconds', 0) / 60:.1f} min)" for r in runs] + [""]
    return "\n".join(head + summary(rows) + checks(rows) + tables(rows))


# --------------------------------------------------------------------------- plots


def _agg(rows, keyf):
    """Mean (x, y) per setting over the inputs of one series."""
    groups = defaultdict(list)
    for r in rows:
        groups[keyf(r)].append(r)
    return groups


def _passkey_length(r: dict) -> int:
    """The pass key prompt length a row was built from (decode rows carry the prompt and decoded counts)."""
    if r["phase"] == "prefill":
        return r["tokens"]
    return r["tokens"] + (r.get("decode_positions") or 0) + 1


def _panel_row(axes, ph: list[dict], phase: str, series_of, style_of, label_of) -> None:
    """One row of panels: perplexity change, KL, pass key, each against measured sparsity. series_of(r)
    groups rows into lines; within a line the runs of one setting are averaged over the inputs."""
    ppl = [r for r in ph if r["task"] == "ppl"]
    for key, g in sorted(_agg(ppl, series_of).items(), key=lambda kv: str(kv[0])):
        per = _agg(g, setting_value)
        pts = sorted((sum(r["sparsity"] for r in v) / len(v), sum(r["ppl_delta_pct"] for r in v) / len(v),
                      sum(r.get("kl_mean") or 0 for r in v) / len(v)) for v in per.values())
        kw = dict(style_of(key), label=label_of(key, g))
        axes[0].plot([0] + [p[0] for p in pts], [0] + [p[1] for p in pts], **kw)
        # runs that skipped nothing have KL at rounding level (~1e-8): left out of the log plot
        kl_pts = [p for p in pts if p[0] > 0 and p[2] > 0]
        axes[1].plot([p[0] for p in kl_pts], [p[2] for p in kl_pts], **kw)
    for lim in (-1.0, 1.0, 3.0):
        axes[0].axhline(lim, color="k", lw=0.6, ls=":")
    axes[0].set(xlabel="measured sparsity (skipped / visited tiles)", ylabel="perplexity change vs dense (%)",
                title=f"{phase}: perplexity (dotted: -1, +1, +3 %)")
    axes[1].set(xlabel="measured sparsity", ylabel="KL(dense || method), nats/token", yscale="log",
                title=f"{phase}: next-token KL")
    pk = [r for r in ph if r["task"] == "passkey"]
    # series keys end with the context length; pass key rows use the prompt length they were built from
    groups = _agg(pk, lambda r: series_of(r)[:-1] + (_passkey_length(r),))
    dense_ok = {}
    for j, (key, g) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        per = _agg(g, setting_value)
        pts = sorted((sum(r["sparsity"] for r in v) / len(v), sum(r["passkey_correct"] for r in v) / len(v))
                     for v in per.values())
        dense_ok[key[-1]] = (sum(r["dense_correct"] for r in g[:len(g) // len(per)]), len(g) // len(per))
        off = 0.015 * (j - len(groups) / 2)  # small vertical offsets keep overlapping series visible
        axes[2].plot([p[0] for p in pts], [p[1] + off for p in pts], label=label_of(key, g), **style_of(key))
    dense_txt = ", ".join(f"{n}: {c}/{t}" for n, (c, t) in sorted(dense_ok.items()))
    axes[2].set(xlabel="measured sparsity (mean over depths)", ylabel="pass key correct (fraction of depths)",
                ylim=(-0.1, 1.15), title=f"{phase}: pass key (dense correct {dense_txt})" if dense_txt else f"{phase}: pass key")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)


def plots(rows: list[dict], out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sparse = with_reference(rows)
    written = []
    colors = {"ascending": "tab:blue", "anchored": "tab:red"}
    markers = {"config": "o", "factor": "x", "lambda": "D", "calib-single": "s", "calib-head": "^"}
    lstyle = {1024: ":", 2048: "-", 4096: "--", 8192: "-."}

    def phase_figure(rows_of, phases, panel_args, title, path) -> None:
        """One row of panels per phase (_panel_row), saved to path."""
        fig, axes = plt.subplots(len(phases), 3, figsize=(18, 4.6 * len(phases)), squeeze=False)
        for i, phase in enumerate(phases):
            _panel_row(axes[i], [r for r in rows_of if r["phase"] == phase], phase, **panel_args(phase))
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    single = [r for r in sparse if r["method"] in SINGLE]
    phases = [p for p in PHASE_ORDER if any(r["phase"] == p for r in single)]
    if phases:
        phase_figure(
            single, phases,
            lambda phase: dict(
                series_of=lambda r: (r["method"], r["order"], r["backend"], r["tokens"]),
                style_of=lambda k: dict(color=colors.get(k[1], "gray"), marker=markers.get(k[0], "."),
                                        linestyle=lstyle.get(k[3], "-"), alpha=0.85),
                label_of=lambda k, g: f"{label(k[0], k[1], k[2])}, {k[3]}"
                + ("" if phase == "prefill" or g[0]["task"] != "ppl" else f"+{g[0].get('decode_positions')}")
                + (f" (mean of {'/'.join(sorted({r['doc'] for r in g}))})" if g[0]["task"] == "ppl" else "")),
            "SmolLM2-135M-Instruct (Q4_1 GGUF), BLASST vs dense: accuracy vs measured sparsity; one factor per "
            "phase (colour: order, line: context length, marker: how the factor was chosen)",
            out + ".png")

    calib = [r for r in sparse if r["method"] in ("calib-single", "calib-head")]
    cph = [p for p in PHASE_ORDER if any(r["phase"] == p for r in calib)]
    if cph:
        docs = sorted({r["doc"] for r in calib if r["task"] == "ppl"})
        dstyle = {d: s for d, s in zip(docs, ("-", "--", ":", "-."))}
        phase_figure(
            calib, cph,
            lambda phase: dict(
                series_of=lambda r: (r["method"], r["order"], r.get("doc"), r["tokens"]),
                style_of=lambda k: dict(color="tab:green" if k[0] == "calib-head" else "tab:gray",
                                        marker=markers.get(k[0], "."), linestyle=dstyle.get(k[2], "-")),
                label_of=lambda k, g: f"{label(k[0], k[1])}, {k[2]} {k[3]}"),
            "Per-(layer, KV head) factors vs one factor per phase at targets 0.3-0.9, both calibrated on the "
            "same pass over a different text",
            out + "_perhead.png")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "smollm2_eval_targets"),
                    help="results path without extension: reads <out>.json, writes <out>.md and the plots")
    ap.add_argument("--no-plots", action="store_true", help="tables and checks only")
    args = ap.parse_args()
    if not os.path.exists(args.out + ".json"):
        raise SystemExit(f"{args.out}.json does not exist: run eval/evaluate.py (or eval/run_all.sh) first")
    with open(args.out + ".json") as f:
        data = json.load(f)
    md = markdown(data["rows"], data.get("meta"))
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)
    if not args.no_plots:
        for p in plots(data["rows"], args.out):
            print("wrote", p)


if __name__ == "__main__":
    main()
