"""Argument checks shared by the kernels and their references (pure PyTorch)."""

from __future__ import annotations

import os

import torch

from bitstack.kernels.layout import PackedBitStack
from bitstack.kernels.planes_layout import PackedPlanes

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def interpret_mode() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_linear_args(x: torch.Tensor, packed: PackedBitStack, bias: torch.Tensor | None, *,
                      need_gpu: bool) -> None:
    """Raise ValueError with a clear message unless ``(x, packed, bias)`` is a valid call.

    x: float16 or bfloat16, shape (..., K) with K = packed.in_features, on packed's device.
    bias: None or a float tensor of shape (N,) on the same device.
    need_gpu: the Triton kernels need CUDA tensors unless ``TRITON_INTERPRET=1``.
    """
    if not isinstance(packed, PackedBitStack):
        raise ValueError(f"packed must be a PackedBitStack (see bitstack.kernels.repack), got {type(packed).__name__}")
    packed.validate()
    _check_x_and_bias(x, packed.in_features, packed.out_features, packed.device, bias, need_gpu=need_gpu)


def check_planes_args(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None, *,
                      need_gpu: bool) -> None:
    """:func:`check_linear_args` for the planes kernels: ``packed`` a valid :class:`PackedPlanes`."""
    if not isinstance(packed, PackedPlanes):
        raise ValueError(f"packed must be a PackedPlanes (see bitstack.kernels.pack_planes), got {type(packed).__name__}")
    packed.validate()
    _check_x_and_bias(x, packed.in_features, packed.out_features, packed.device, bias, need_gpu=need_gpu)


def _check_x_and_bias(x: torch.Tensor, K: int, N: int, device: torch.device, bias: torch.Tensor | None, *,
                      need_gpu: bool) -> None:
    """x: float16/bfloat16 (..., K) on ``device``; bias None or float (N,) on x's device; CUDA if
    ``need_gpu`` (unless Triton's interpreter is on)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x must be float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"x must have shape (..., {K}), got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"x is on {x.device} but the packed blocks are on {device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise ValueError("bias must be a floating-point tensor or None")
        if tuple(bias.shape) != (N,):
            raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
    if need_gpu and not interpret_mode() and x.device.type != "cuda":
        raise ValueError("the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter); "
                         "use the pure-PyTorch references (bitstack.kernels.reference, planes_reference) on CPU")
