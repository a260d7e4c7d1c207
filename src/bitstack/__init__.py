"""bitstack: one compressed artifact, loadable at any memory budget.

The public API is imported lazily, so ``import bitstack`` stays light (no transformers, no
Triton, no CUDA initialisation) until a function is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "compress": ("bitstack.compressor", "compress"),
    "load": ("bitstack.runtime.loader", "load"),
    "load_tokenizer": ("bitstack.runtime.loader", "load_tokenizer"),
    "memory_bytes": ("bitstack.runtime.budget", "memory_bytes"),
    "resize": ("bitstack.runtime.stack", "resize"),
    "AutoResizer": ("bitstack.runtime.auto", "AutoResizer"),
    "CompressConfig": ("bitstack.config", "CompressConfig"),
    "parse_memory": ("bitstack.memory", "parse_memory"),
    "BitstackError": ("bitstack.errors", "BitstackError"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'bitstack' has no attribute {name!r}")


def __dir__():
    return __all__
