"""``BitStackLinear``: a linear layer whose weight is a stack of residual blocks.

With blocks B_0 … B_{j-1} loaded, the layer computes

    y = (x ⊙ input_scale) · Ŵᵀ + bias,     Ŵ = Σ_{i<j} S_i ⊙ (u_i v_i)

(``input_scale`` = 1/s when the activation scale could not be folded into a previous op).  No
dense weight is kept: this pure-PyTorch forward rebuilds Ŵ transiently for each call; it is the
reference semantics that the GPU kernels are checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bitstack.core.avd import ResidualBlock, reconstruct


class BitStackLinear(nn.Module):
    """Drop-in replacement of ``nn.Linear`` (``in_features`` → ``out_features``).

    Attributes:
        blocks: loaded residual blocks, in load order (uint8 signs, float16 u/v; see
            :class:`~bitstack.core.avd.ResidualBlock`).  Managed by the loader.
        bias: Parameter (out,) or None.
        input_scale: buffer (in,) in the compute dtype, or None.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool, input_scale: bool,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.blocks: list[ResidualBlock] = []
        factory = {"device": device, "dtype": dtype}
        self.bias = nn.Parameter(torch.empty(out_features, **factory), requires_grad=False) if bias else None
        if input_scale:
            self.register_buffer("input_scale", torch.empty(in_features, **factory))
        else:
            self.input_scale = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"blocks={len(self.blocks)}, bias={self.bias is not None}, input_scale={self.input_scale is not None}")

    @property
    def block_bytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Ŵ of the loaded blocks (zeros if none), shape (out, in) — for checks, not kept."""
        if not self.blocks:
            device = self.bias.device if self.bias is not None else None
            return torch.zeros(self.out_features, self.in_features, dtype=dtype, device=device)
        return reconstruct(self.blocks, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        weight = self.dense_weight(x.dtype).to(x.device)
        return F.linear(x, weight, self.bias)

    def _apply(self, fn, recurse: bool = True):
        # Blocks move with the module but keep their storage dtypes (uint8 signs, float16 u/v).
        super()._apply(fn, recurse)
        moved = []
        for block in self.blocks:
            parts = []
            for t in (block.signs, block.u, block.v):
                new = fn(t)
                parts.append(new if new.dtype == t.dtype else new.to(t.dtype))
            moved.append(ResidualBlock(*parts))
        self.blocks = moved
        return self
