"""ctypes mirror of the C ABI in include/blasst/blasst.h and the loader of the native library.

The native library (libblasst_py.so) is the whole blasst core behind its C ABI; it links no
Python and no libtorch. The structs below must match blasst.h field for field: at load time
they are checked against layout values compiled into the library (python/src/abi_layout.cpp).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

# enum values of blasst.h
OK = 0
ERROR_INVALID_ARGUMENT = 1
ERROR_UNSUPPORTED = 2
ERROR_OUT_OF_MEMORY = 3
ERROR_CUDA = 4
ERROR_INTERNAL = 5

DTYPE_FLOAT32 = 0
DTYPE_FLOAT16 = 1
DTYPE_BFLOAT16 = 2
DTYPE_FLOAT8_E4M3 = 3

PHASE_PREFILL = 0
PHASE_DECODE = 1

ORDER_ASCENDING = 0
ORDER_ANCHORED = 1

ENGINE_AUTO = 0
ENGINE_CPU = 1
ENGINE_CUDA = 2

TILE_NOT_VISITED = 0
TILE_KEPT = 1
TILE_SKIPPED = 2

_c_enum = ctypes.c_int  # C enums are int-sized on every ABI the project targets


class BlasstTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", _c_enum),
        ("batch_stride", ctypes.c_int64),
        ("token_stride", ctypes.c_int64),
        ("head_stride", ctypes.c_int64),
        ("numel", ctypes.c_int64),
    ]


class BlasstGeometry(ctypes.Structure):
    _fields_ = [
        ("block_m", ctypes.c_int32),
        ("block_n", ctypes.c_int32),
        ("order", _c_enum),
        ("splits", ctypes.c_int32),
    ]


class BlasstThreshold(ctypes.Structure):
    _fields_ = [
        ("threshold_scale_factor", ctypes.c_float),
        ("per_kv_head_factor", ctypes.c_void_p),
        ("per_request_factor", ctypes.c_void_p),
    ]


class BlasstScales(ctypes.Structure):
    _fields_ = [
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("per_kv_head", ctypes.c_int32),
    ]


class BlasstArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("batch", ctypes.c_int32),
        ("num_q_heads", ctypes.c_int32),
        ("num_kv_heads", ctypes.c_int32),
        ("head_dim_qk", ctypes.c_int32),
        ("head_dim_v", ctypes.c_int32),
        ("max_seqlen_q", ctypes.c_int32),
        ("max_seqlen_k", ctypes.c_int32),
        ("cu_seqlens_q", ctypes.c_void_p),
        ("seqlens_q", ctypes.c_void_p),
        ("cu_seqlens_k", ctypes.c_void_p),
        ("seqlens_k", ctypes.c_void_p),
        ("block_table", ctypes.c_void_p),
        ("block_table_stride", ctypes.c_int32),
        ("page_size", ctypes.c_int32),
        ("num_pages", ctypes.c_int32),
        ("q", BlasstTensor),
        ("k", BlasstTensor),
        ("v", BlasstTensor),
        ("out", BlasstTensor),
        ("lse", BlasstTensor),
        ("scale", ctypes.c_float),
        ("causal", ctypes.c_int32),
        ("threshold", BlasstThreshold),
        ("scales", BlasstScales),
        ("geometry", BlasstGeometry),
        ("engine", _c_enum),
        ("num_threads", ctypes.c_int32),
        ("stream", ctypes.c_void_p),
        ("stats_per_head", ctypes.c_void_p),
        ("decisions", ctypes.c_void_p),
        ("decisions_numel", ctypes.c_int64),
        ("workspace", ctypes.c_void_p),
        ("workspace_bytes", ctypes.c_size_t),
    ]


class BlasstBackwardArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("phase", _c_enum),
        ("geometry", BlasstGeometry),
        ("decisions", ctypes.c_void_p),
        ("decisions_numel", ctypes.c_int64),
        ("dout", BlasstTensor),
        ("dlse", BlasstTensor),
        ("dq", BlasstTensor),
        ("dk", BlasstTensor),
        ("dv", BlasstTensor),
    ]


class BlasstRunInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("engine", _c_enum),
        ("geometry", BlasstGeometry),
        ("visited", ctypes.c_int64),
        ("skipped", ctypes.c_int64),
    ]


def _expected_layout() -> list[int]:
    """The values of abi_layout.cpp's kLayout, computed from the ctypes mirror."""
    return [
        ctypes.sizeof(BlasstArgs),
        ctypes.sizeof(BlasstTensor),
        ctypes.sizeof(BlasstRunInfo),
        ctypes.sizeof(BlasstGeometry),
        BlasstArgs.cu_seqlens_q.offset,
        BlasstArgs.block_table.offset,
        BlasstArgs.q.offset,
        BlasstArgs.lse.offset,
        BlasstArgs.scale.offset,
        BlasstArgs.threshold.offset,
        BlasstArgs.scales.offset,
        BlasstArgs.geometry.offset,
        BlasstArgs.engine.offset,
        BlasstArgs.stream.offset,
        BlasstArgs.stats_per_head.offset,
        BlasstArgs.decisions_numel.offset,
        BlasstArgs.workspace.offset,
        BlasstArgs.workspace_bytes.offset,
        BlasstRunInfo.geometry.offset,
        BlasstRunInfo.visited.offset,
        ctypes.sizeof(BlasstBackwardArgs),
        BlasstBackwardArgs.dout.offset,
    ]


class BlasstError(RuntimeError):
    """A blasst call failed; .status is the blasst_status code, the message names the argument."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BlasstInvalidArgument(BlasstError, ValueError):
    """BLASST_ERROR_INVALID_ARGUMENT."""


class BlasstUnsupported(BlasstError, NotImplementedError):
    """BLASST_ERROR_UNSUPPORTED: valid, but no engine of this build can run it."""


_ERROR_CLASSES = {ERROR_INVALID_ARGUMENT: BlasstInvalidArgument, ERROR_UNSUPPORTED: BlasstUnsupported}

_LIB_NAME = "libblasst_py.so" if sys.platform != "darwin" else "libblasst_py.dylib"
_lib = None
_lock = threading.Lock()


def _candidates() -> list[Path]:
    env = os.environ.get("BLASST_LIBRARY")
    paths = [Path(env)] if env else []
    paths.append(Path(__file__).resolve().parent / _LIB_NAME)
    return paths


def _bind(lib: ctypes.CDLL) -> None:
    args_p = ctypes.POINTER(BlasstArgs)
    info_p = ctypes.POINTER(BlasstRunInfo)
    for name, restype, argtypes in [
        ("blasst_args_init", None, [args_p]),
        ("blasst_run_info_init", None, [info_p]),
        ("blasst_prefill", ctypes.c_int, [args_p, info_p]),
        ("blasst_decode", ctypes.c_int, [args_p, info_p]),
        ("blasst_workspace_size", ctypes.c_int, [args_p, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t)]),
        ("blasst_backward_args_init", None, [ctypes.POINTER(BlasstBackwardArgs)]),
        ("blasst_backward", ctypes.c_int, [args_p, ctypes.POINTER(BlasstBackwardArgs)]),
        ("blasst_last_error", ctypes.c_char_p, []),
        ("blasst_status_name", ctypes.c_char_p, [ctypes.c_int]),
        ("blasst_version", ctypes.c_char_p, []),
        ("blasst_cuda_available", ctypes.c_int, []),
        ("blasst_py_abi_layout", ctypes.c_int32, [ctypes.POINTER(ctypes.c_int64), ctypes.c_int32]),
        ("blasst_py_built_with_cuda", ctypes.c_int32, []),
    ]:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _check_layout(lib: ctypes.CDLL, path: Path) -> None:
    expected = _expected_layout()
    buf = (ctypes.c_int64 * 64)()
    n = lib.blasst_py_abi_layout(buf, 64)
    got = list(buf[: min(n, 64)])
    if got != expected:
        raise ImportError(
            f"blasst: the native library {path} does not match this Python package's view of "
            f"blasst.h (layout {got} != {expected}); reinstall the package"
        )


def lib() -> ctypes.CDLL:
    """The loaded native library (loaded on first use)."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        errors = []
        for path in _candidates():
            if not path.exists():
                errors.append(f"{path}: not found")
                continue
            try:
                loaded = ctypes.CDLL(str(path))
            except OSError as e:
                errors.append(f"{path}: {e}")
                continue
            _bind(loaded)
            _check_layout(loaded, path)
            _lib = loaded
            return _lib
        raise ImportError("blasst: cannot load the native library: " + "; ".join(errors))


def check(status: int) -> None:
    """Raises the BlasstError subclass of a failed status, with blasst_last_error's message."""
    if status == OK:
        return
    lb = lib()
    message = (lb.blasst_last_error() or b"").decode(errors="replace")
    name = (lb.blasst_status_name(status) or b"").decode(errors="replace")
    raise _ERROR_CLASSES.get(status, BlasstError)(status, f"blasst: {name}: {message}")


def new_args() -> BlasstArgs:
    args = BlasstArgs()
    lib().blasst_args_init(ctypes.byref(args))
    return args


def new_backward_args() -> BlasstBackwardArgs:
    grads = BlasstBackwardArgs()
    lib().blasst_backward_args_init(ctypes.byref(grads))
    return grads


def new_run_info() -> BlasstRunInfo:
    info = BlasstRunInfo()
    lib().blasst_run_info_init(ctypes.byref(info))
    return info


def version() -> str:
    return lib().blasst_version().decode()


def cuda_available() -> bool:
    """A CUDA engine is built in and a device is usable."""
    return bool(lib().blasst_cuda_available())


def built_with_cuda() -> bool:
    return bool(lib().blasst_py_built_with_cuda())
