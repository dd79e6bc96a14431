"""What prefill_targets.py and decode_targets.py share: reading the CSV, skip rows against our
dense mode, the bound 2/(2-s) and cuDNN, and the table of target checks."""

import csv
import sys

# Sparsity below which a skip row counts as "nothing skipped".
SPARSITY_ZERO = 0.005


def skip_ratios(dense, skips, cudnn):
    """(dense / first skip row with nothing skipped, or None; per skip row in sparsity order:
    sparsity, speedup over dense, its ratio to 2/(2-s), speedup over cuDNN or None). Rows are
    dicts with 'sparsity' and 'ms'."""
    skips = sorted(skips, key=lambda e: e["sparsity"])
    zero = [e for e in skips if e["sparsity"] < SPARSITY_ZERO]
    points = []
    for e in skips:
        s = e["sparsity"]
        speedup = dense["ms"] / e["ms"]
        points.append({"sparsity": s, "speedup": speedup, "of_bound": speedup / (2.0 / (2.0 - s)),
                       "vs_cudnn": cudnn["ms"] / e["ms"] if cudnn else None})
    return (dense["ms"] / zero[0]["ms"] if zero else None), points


def fmt(x, pattern):
    return "-" if x is None else pattern.format(x)


def format_skip_points(points):
    """The skip rows that skipped something, as 's: speedup, of bound, vs cuDNN;' table cells."""
    return " ".join(f"{p['sparsity']:.2f}: {p['speedup']:.2f}x, {p['of_bound']:.2f}, {fmt(p['vs_cudnn'], '{:.2f}x')};"
                    for p in points if p["sparsity"] >= SPARSITY_ZERO)


def add_check(checks, name, values, threshold):
    """Appends (name, worst value, threshold, met, count) to `checks` for a target every value
    must reach (None values left out); nothing without values."""
    values = [v for v in values if v is not None]
    if values:
        worst = min(values)
        checks.append((name, worst, threshold, worst >= threshold, len(values)))


def point_values(summaries, key, low, high=float("inf")):
    """`key` ('of_bound' or 'vs_cudnn') of every skip point of `summaries` with sparsity in [low, high]."""
    return [p[key] for s in summaries for p in s["points"] if low <= p["sparsity"] <= high]


def print_checks(checks, empty=None):
    """The table of checks; with `empty`, that line instead of a table when there are none."""
    if not checks and empty is not None:
        print(empty)
        return
    print("\n| target | worst | needs | met | points |\n| --- | --- | --- | --- | --- |")
    for name, worst, threshold, met, n in checks:
        print(f"| {name} | {worst:.3f} | {threshold:.2f} | {'yes' if met else 'no'} | {n} |")


def read_rows(path):
    """The rows of a benchmark CSV as dicts; exits with a message when it cannot be read or is empty."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        sys.exit(f"cannot read {path}: {e}")
    if not rows:
        sys.exit(f"{path} has no rows")
    return rows


def of_commit(rows, commit):
    """(commit, its rows): the given commit, or the newest in the file (the last row's)."""
    commit = commit or rows[-1]["commit"]
    return commit, [r for r in rows if r["commit"] == commit]


def print_rows_line(label, commit, rows):
    print(f"{label}: commit {commit}, {len(rows)} rows ({', '.join(sorted({r['gpu'] for r in rows}))})")


def print_commit_header(rows, commit):
    gpus = sorted({r["gpu"] for r in rows if r["commit"] == commit})
    print(f"## commit {commit} ({', '.join(gpus)})")


def exit_no_rows(rows, phase, commit, path):
    known = sorted({r["commit"] for r in rows})
    sys.exit(f"no {phase} rows of commit {commit} in {path} (commits there: {', '.join(known)})")
