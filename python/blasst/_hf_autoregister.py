"""Registers attn_implementation="blasst" with transformers on `import blasst`, without importing
transformers (seconds) when the program does not use it.

transformers checks an attn_implementation name against its AttentionInterface when a model is
built, so the name must be registered before that. Both interfaces transformers keeps live in
modules that every model imports (transformers.modeling_utils: AttentionInterface;
transformers.masking_utils: AttentionMaskInterface). If both are already imported, blasst.hf
registers at once; otherwise a finder on sys.meta_path waits for them to finish loading and
imports blasst.hf then, before any model class can be used.
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import warnings

_MODULES = ("transformers.modeling_utils", "transformers.masking_utils")
_lock = threading.Lock()
_done = False


def _loaded(name: str, loading: str = "") -> bool:
    module = sys.modules.get(name)
    if module is None:
        return False
    # a module is in sys.modules while it runs; only the one whose loading just ended counts
    return name == loading or not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _register(loading: str = "") -> None:
    global _done
    with _lock:
        if _done or not all(_loaded(name, loading) for name in _MODULES):
            return
        _done = True
    _remove_finder()
    try:
        import blasst.hf  # noqa: F401  (registers on import)
    except Exception as e:  # never break the program's import of transformers
        warnings.warn(f"blasst: could not register attn_implementation='blasst' with transformers ({e!r}); "
                      "import blasst.hf to see the error", stacklevel=2)


class _Finder:
    """Finds nothing itself: for the two watched modules it asks the other finders and wraps
    the loader's exec_module so that registration runs once the module has loaded."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if isinstance(loader, (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)):
            # the path finders make one loader per spec, so patching the instance is local to it
            loader.exec_module = _then_register(loader.exec_module, fullname)
        elif loader is not None and hasattr(loader, "exec_module"):
            spec.loader = _Loader(loader, fullname)
        return spec


def _then_register(exec_module, name):
    def exec_then_register(module):
        exec_module(module)
        _register(loading=name)

    return exec_then_register


class _Loader:
    """Another finder's loader, with registration after exec_module; everything else is its."""

    def __init__(self, inner, name: str):
        self._inner = inner
        self.exec_module = _then_register(inner.exec_module, name)

    def create_module(self, spec):
        return self._inner.create_module(spec) if hasattr(self._inner, "create_module") else None

    def __getattr__(self, name):
        return getattr(self._inner, name)


_finder = _Finder()


def _remove_finder() -> None:
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


def install() -> None:
    """Registers now if transformers' interfaces are loaded, else when they are."""
    if all(_loaded(name) for name in _MODULES):
        _register()
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
