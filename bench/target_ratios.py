"""Ratios shared by prefill_targets.py and decode_targets.py: skip rows against our dense mode,
the bound 2/(2-s) and cuDNN."""

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
