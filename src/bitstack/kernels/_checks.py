"""Host-side helpers shared by both codecs' kernels and references (pure PyTorch, no Triton):
argument checks, Triton's interpreter mode, ``cdiv``, ``next_pow2``."""

from __future__ import annotations

import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def interpret_mode() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints, on the host (``triton.cdiv`` is a Triton function: slower to call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def check_parts(owner: str, expect: dict, blocks: int) -> None:
    """ValueError unless every ``name: (tensor, dtype, shape)`` of ``expect`` is a contiguous tensor
    of that dtype and shape on the first one's device, and ``blocks`` >= 1 (``owner`` names the
    packed class in the messages)."""
    device = next(iter(expect.values()))[0].device
    for name, (t, dtype, shape) in expect.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{owner}.{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise ValueError(f"{owner}.{name} must be {dtype}, got {t.dtype}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{owner}.{name} must have shape {shape}, got {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"{owner}.{name} must be contiguous")
        if t.device != device:
            raise ValueError(f"{owner}.{name} is on {t.device}, signs on {device}")
    if blocks < 1:
        raise ValueError(f"{owner} holds no block")


def check_x_and_bias(x: torch.Tensor, K: int, N: int, device: torch.device, bias: torch.Tensor | None, *,
                     need_gpu: bool) -> None:
    """ValueError unless x is float16/bfloat16 (..., K) on ``device``, bias None or float (N,) on x's
    device, and both on CUDA if ``need_gpu`` (unless Triton's interpreter is on)."""
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
                         "use the pure-PyTorch references (bitstack.kernels.avd.reference, "
                         "bitstack.kernels.planes.reference) on CPU")
