"""The warning for a threshold that cannot skip anything.

SPEC section 4: lambda = threshold_scale_factor / Lk, and lambda >= 1 turns skipping off for that
batch entry (the rule would compare against a non-negative log threshold). That is correct, but
a calibrated factor of, say, 2494 silently makes every prompt under 2494 tokens run dense, so a
call where no entry can skip says so once per call site of the user's code.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

import torch


class DenseThresholdWarning(UserWarning):
    """threshold_scale_factor >= the key length: lambda >= 1, skipping is off for the call."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def _user_frame():
    """The innermost frame outside blasst and torch (the call site to attribute a warning to)."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (path.startswith(_PACKAGE_DIR) or path.startswith(_TORCH_DIR)):
            return frame
        frame = frame.f_back
    return sys._getframe(1)


def warn_at_call_site(message: str, category=UserWarning) -> None:
    """warnings.warn attributed to the user's line, so the default filter shows it once per
    call site (not once per blasst-internal line, which would be once per process)."""
    frame = _user_frame()
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__", "<unknown>"), registry=registry)


def _smallest_positive(per_kv_head_factor: Optional[torch.Tensor]) -> Optional[float]:
    """Smallest factor > 0 of a host tensor; None when unknown (device memory: no sync) or none."""
    if per_kv_head_factor is None or per_kv_head_factor.device.type != "cpu":
        return None
    positive = per_kv_head_factor[per_kv_head_factor > 0]
    return float(positive.min()) if positive.numel() else None


def warn_if_dense(threshold_scale_factor: float, per_kv_head_factor: Optional[torch.Tensor],
                  max_seqlen_k: int) -> None:
    """Warns when a threshold was asked for but lambda >= 1 for every entry (Lk <= max_seqlen_k)."""
    if max_seqlen_k <= 0:
        return
    factor = _smallest_positive(per_kv_head_factor) if per_kv_head_factor is not None else threshold_scale_factor
    if factor is None or not factor > 0 or factor < max_seqlen_k:
        return
    warn_at_call_site(
        f"blasst: threshold_scale_factor {factor:g} >= the key length ({max_seqlen_k}), so lambda = factor / Lk >= 1 "
        f"and nothing is skipped (SPEC section 4: skipping is off for such entries); skipping starts at key lengths "
        f"above {factor:g}. (A calibrated factor grows with the target sparsity, so a higher target can mean "
        f"no skipping at short lengths.)",
        DenseThresholdWarning,
    )
