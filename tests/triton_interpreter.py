"""Triton's CPU interpreter for the kernel tests, set up before anything imports Triton.

``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel module is imported, so this must run
before the first test module that imports ``bitstack.kernels`` (directly or through the runtime):
the root ``conftest.py`` calls :func:`setup` first thing.  Test-only.
"""

from __future__ import annotations

import os


def _patch_interpreter_scalar_index() -> None:
    """Triton <= 3.6's interpreter turns a runtime scalar into a Python int with ``int(arr)`` on a
    1-element 1-D array, which NumPy >= 2.3 refuses (``range(n)`` over a kernel argument fails).
    Triton 3.9 squeezes first; do the same for older versions.  Test-only shim."""
    try:
        from triton.runtime import interpreter
    except Exception:  # triton missing: the tests skip themselves
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_bitstack_shim", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._bitstack_shim = True
    interpreter._patch_lang_tensor = patched


def setup() -> None:
    """Turn on the interpreter (unless the caller set TRITON_INTERPRET) and patch old Tritons."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    _patch_interpreter_scalar_index()
