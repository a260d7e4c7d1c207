"""Codec ``avd``: pure-PyTorch references of the kernels, with the kernels' exact signatures.

``bitstack_linear_reference(x, packed, bias=None)`` computes, in float32,

    y = x · Ŵᵀ + bias,   Ŵ = Σ_{i<J} S_i ⊙ (u_i.float() @ v_i.float())

from a :class:`~bitstack.kernels.avd.layout.PackedBitStack` and returns it in ``x.dtype``.  The decode
and prefill references are the same function (the kernels differ only in how they compute it).

``bitstack_linear_naive`` is the "reconstruct then matmul" path used as a benchmark baseline: it
rebuilds Ŵ densely in ``x.dtype`` and calls ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitstack.kernels._linear import linear_float32
from bitstack.kernels.avd.layout import PackedBitStack, check_linear_args, unpack_bitplane

__all__ = [
    "dense_weight",
    "bitstack_linear_reference",
    "bitstack_linear_decode_reference",
    "bitstack_linear_prefill_reference",
    "bitstack_linear_naive",
]


def dense_weight(packed: PackedBitStack, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ŵ = Σ_i S_i ⊙ (u_i v_i), accumulated in float32, returned as ``dtype``, shape (N, K)."""
    packed.validate()
    K = packed.in_features
    total = torch.zeros(packed.out_features, K, dtype=torch.float32, device=packed.device)
    for i in range(packed.num_blocks):
        sign = unpack_bitplane(packed.signs[i], K, packed.group).to(torch.float32) * 2 - 1
        total += sign * (packed.u[i].float() @ packed.v[i].float())
    return total.to(dtype)


def bitstack_linear_reference(x: torch.Tensor, packed: PackedBitStack,
                              bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`bitstack.kernels.bitstack_linear` (float32 math).

    Args:
        x: float16 or bfloat16, shape (..., K), K = packed.in_features.
        packed: the J loaded blocks of the weight (:class:`PackedBitStack`, same device as x).
        bias: optional float tensor (N,), added in float32.
    Returns:
        shape (..., N), dtype of x.
    """
    check_linear_args(x, packed, bias, need_gpu=False)
    return linear_float32(x, dense_weight(packed, torch.float32), bias)


bitstack_linear_decode_reference = bitstack_linear_reference
bitstack_linear_prefill_reference = bitstack_linear_reference


def bitstack_linear_naive(x: torch.Tensor, packed: PackedBitStack,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruct-then-matmul baseline: Ŵ rebuilt densely (float32 sum, cast to x.dtype), then F.linear."""
    check_linear_args(x, packed, bias, need_gpu=False)
    w = dense_weight(packed, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
