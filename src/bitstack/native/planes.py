"""Planes weights on the CPU through the native kernels, with their pure-PyTorch references.

A planes weight of J blocks is Ŵ = C + Σ_{i<J} S_i ⊙ expand(step)·2^-i (:mod:`bitstack.codecs.planes.grid`).
Layouts: signs J uint8 tensors (N, ceil(K/8)) in the stored layout (bit j of byte c is column
8c + j, 1 = +1; the stored layout), or one stacked (J, N, ceil(K/8)) tensor;
offset, step float16 (N, G), G = ceil(K / group_size).

* :func:`planes_lut_linear` — y = x · Ŵᵀ (+ bias) from the packed signs, Ŵ never formed
  (``torch.ops.bitstack.planes_lut_linear``, lookup tables shared by all rows and planes; see
  docs/cpu.md).  For few tokens (decode).
* :func:`planes_dense` — Ŵ rebuilt natively, bit for bit :func:`~bitstack.codecs.planes.grid.planes_reconstruct`
  (``torch.ops.bitstack.planes_dense``).  For many tokens (prefill): rebuild, then one matmul.

Each takes ``native``: None (the native op when it is available and ``BITSTACK_NATIVE`` does not
disable it), False (never: the PyTorch path), True (the native op or NativeBuildError).  Where the
library cannot be built or loaded, the PyTorch path runs after ONE warning line per process.
The ops are registered with fake implementations, so ``torch.compile`` traces them.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import torch.nn.functional as F

from bitstack.codecs.planes.grid import planes_reconstruct, sign_only_blocks
from bitstack.codecs.planes.lut import planes_linear_lut
from bitstack.native.build import NativeBuildError, load_library

NATIVE_ENV = "BITSTACK_NATIVE"  # "0", "off", "false" or "no": never build or use the native kernels
_NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class NativeFallbackWarning(RuntimeWarning):
    """The native CPU kernels are unavailable; the slower PyTorch path is used."""


def native_disabled_by_env() -> bool:
    """True when ``BITSTACK_NATIVE`` is set to 0/off/false/no."""
    return os.environ.get(NATIVE_ENV, "").strip().lower() in ("0", "off", "false", "no")


def _fake_lut(x, signs, offset, step, group_size, bias=None):
    return x.new_empty((*x.shape[:-1], offset.shape[0]))


def _fake_dense(signs, offset, step, in_features, group_size, dtype):
    return offset.new_empty((offset.shape[0], in_features), dtype=dtype)


@functools.lru_cache(maxsize=None)
def _load() -> tuple[str | None, str]:
    """Load the library once per process: (vector back-end name, "") or, after ONE warning line,
    (None, why)."""
    try:
        isa = load_library()
    except NativeBuildError as exc:
        # warn_explicit at a location without source text: the warning prints as one line
        warnings.warn_explicit(f"bitstack: native CPU kernels unavailable ({exc}); using the PyTorch path",
                               NativeFallbackWarning, filename="bitstack", lineno=0)
        return None, str(exc)
    torch.library.register_fake("bitstack::planes_lut_linear")(_fake_lut)
    torch.library.register_fake("bitstack::planes_dense")(_fake_dense)
    return isa, ""


def native_isa(native: bool | None = None) -> str | None:
    """The native back-end in use ("avx512", "avx2", "scalar") or None (disabled or unavailable).

    ``native`` as in the module docstring; True raises NativeBuildError if it cannot load."""
    if native is False or (native is None and native_disabled_by_env()):
        return None
    isa, why = _load()
    if isa is None and native:
        raise NativeBuildError(why)
    return isa


def native_applies(tensor: torch.Tensor, native: bool | None = None) -> bool:
    """Whether the native ops take ``tensor``: a float32/bfloat16/float16 CPU tensor, the library
    available and not disabled (``native`` as in the module docstring)."""
    return tensor.device.type == "cpu" and tensor.dtype in _NATIVE_DTYPES and native_isa(native) is not None


def _as_list(signs) -> list[torch.Tensor]:
    if isinstance(signs, torch.Tensor):
        return list(signs.unbind(0)) if signs.dim() == 3 else [signs]
    return list(signs)


def planes_lut_linear(x: torch.Tensor, signs, offset: torch.Tensor, step: torch.Tensor, group_size: int,
                      bias: torch.Tensor | None = None, *, native: bool | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) for the planes weight of ``signs`` (layouts in the module docstring).

    x: float32, bfloat16 or float16 (..., K) on the CPU; group_size a multiple of 8 (4 natively);
    bias: optional (N,).  Returns (..., N) in x's dtype, computed in float32.  Without the native
    op: :func:`bitstack.codecs.planes.lut.planes_linear_lut` (the same product through
    ``embedding_bag``)."""
    planes = _as_list(signs)
    if native_applies(x, native):
        return torch.ops.bitstack.planes_lut_linear(x, planes, offset, step, group_size, bias)
    return planes_linear_lut(x, planes, offset, step, group_size, bias)


def planes_lut_linear_reference(x: torch.Tensor, signs, offset: torch.Tensor, step: torch.Tensor, group_size: int,
                                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`planes_lut_linear` (same signature): Ŵ rebuilt in float32 by
    :func:`~bitstack.codecs.planes.grid.planes_reconstruct`, the product and bias in float32, cast to x's dtype."""
    planes = _as_list(signs)
    weight = planes_reconstruct(list(sign_only_blocks(planes, x.shape[-1])), offset, step, group_size)
    y = F.linear(x.to(torch.float32), weight, None if bias is None else bias.to(torch.float32))
    return y.to(x.dtype)


def planes_dense(signs, offset: torch.Tensor, step: torch.Tensor, in_features: int, group_size: int,
                 dtype: torch.dtype = torch.float32, *, native: bool | None = None) -> torch.Tensor:
    """Ŵ (N, in_features) as ``dtype``, accumulated in float32 in block order: equal bit for bit to
    :func:`~bitstack.codecs.planes.grid.planes_reconstruct` (which it calls without the native op)."""
    planes = _as_list(signs)
    if dtype in _NATIVE_DTYPES and native_applies(offset, native):
        return torch.ops.bitstack.planes_dense(planes, offset, step, in_features, group_size, dtype)
    return planes_reconstruct(list(sign_only_blocks(planes, in_features)), offset, step, group_size, dtype)
