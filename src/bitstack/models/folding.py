"""Exact, in-place folding of an inverse input scale 1/s into the op that produces the input."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_into_norm(norm: nn.Module, inv_scale: torch.Tensor) -> None:
    """norm(x) / s: multiply the norm's weight (and bias, if any) by ``inv_scale`` (in,)."""
    norm.weight.mul_(inv_scale.to(norm.weight.dtype))
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.mul_(inv_scale.to(bias.dtype))


@torch.no_grad()
def fold_into_rows(linear: nn.Linear, inv_scale: torch.Tensor) -> None:
    """linear(x) / s: scale output row j of the weight (and bias j) by ``inv_scale[j]``."""
    linear.weight.mul_(inv_scale.to(linear.weight.dtype)[:, None])
    if linear.bias is not None:
        linear.bias.mul_(inv_scale.to(linear.bias.dtype))
