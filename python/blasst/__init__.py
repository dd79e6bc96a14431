"""blasst: BLASST (skip-softmax) attention for PyTorch and Hugging Face transformers.

    import blasst
    out, lse = blasst.attention(q, k, v, causal=True, threshold_scale_factor=50.0)

Submodules: blasst.ops (torch custom ops blasst::prefill / blasst::decode), blasst.hf
(attn_implementation="blasst"), blasst.schema (sparse_attention_config), blasst.calibrate.
"""

from __future__ import annotations

import importlib

from ._lib import BlasstError, BlasstInvalidArgument, BlasstUnsupported, built_with_cuda, cuda_available
from ._lib import version as engine_version
from ._core import RunInfo, last_run_info
from ._guard import DenseThresholdWarning
from . import ops
from .api import attention, resolve_phase, run_with_decisions
from .config import BlasstConfig, ConfigError
from .schema import Formula, SchemaError

__version__ = "0.1.0"

__all__ = [
    "attention", "run_with_decisions", "resolve_phase", "ops", "BlasstConfig", "Formula", "RunInfo",
    "last_run_info", "BlasstError", "BlasstInvalidArgument", "BlasstUnsupported", "ConfigError", "SchemaError",
    "DenseThresholdWarning", "cuda_available", "built_with_cuda", "engine_version", "hf", "schema", "calibrate",
]


# attn_implementation="blasst" for transformers: registered now if transformers' attention
# interfaces are loaded, else as soon as they are (transformers itself is not imported here)
from . import _hf_autoregister  # noqa: E402

_hf_autoregister.install()


def __getattr__(name):
    # transformers and the calibration tool are imported only when used
    if name in ("hf", "calibrate", "schema"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'blasst' has no attribute {name!r}")
