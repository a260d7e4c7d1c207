"""Codec ``planes``: pure-PyTorch references of the kernels, with the kernels' signature (any device).

``planes_linear_reference(x, packed, bias=None)`` computes, in float32,

    y = x · Ŵᵀ + bias,   Ŵ = C + Σ_{i<J} S_i ⊙ expand(step) · 2^-i

from a :class:`~bitstack.kernels.planes.layout.PackedPlanes` (Ŵ rebuilt by
:func:`bitstack.codecs.planes.grid.planes_reconstruct`, the runtime's pure path) and returns it in
``x.dtype``.  ``planes_linear_naive`` is the "reconstruct, then matmul" baseline of the benchmarks:
Ŵ rebuilt densely in ``x.dtype``, then ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitstack.codecs.planes.grid import planes_reconstruct, sign_only_blocks
from bitstack.kernels._linear import linear_float32
from bitstack.kernels.planes.layout import PackedPlanes, check_planes_args

__all__ = ["planes_dense_weight", "planes_linear_reference", "planes_linear_naive"]


def planes_dense_weight(packed: PackedPlanes, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ŵ of the packed blocks, accumulated in float32, returned as ``dtype``, shape (N, K)."""
    packed.validate()
    blocks = list(sign_only_blocks(packed.signs.unbind(0), packed.in_features))
    return planes_reconstruct(blocks, packed.offset, packed.step, packed.group_size, dtype)


def planes_linear_reference(x: torch.Tensor, packed: PackedPlanes,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`bitstack.kernels.planes_linear`: x (float16/bfloat16, (..., K)) times
    Ŵᵀ of ``packed`` (same device), plus ``bias`` (float (N,), optional), all in float32;
    returns (..., N) in x's dtype."""
    check_planes_args(x, packed, bias, need_gpu=False)
    return linear_float32(x, planes_dense_weight(packed, torch.float32), bias)


def planes_linear_naive(x: torch.Tensor, packed: PackedPlanes,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruct-then-matmul baseline: Ŵ rebuilt densely (float32 sum, cast to x.dtype), then F.linear."""
    check_planes_args(x, packed, bias, need_gpu=False)
    w = planes_dense_weight(packed, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
