"""Former path of :mod:`bitstack.codecs.avd.decompose`, kept only while ``bitstack.kernels`` and
its tests import these names from it; delete this module once they import the new path."""

from __future__ import annotations

import torch

from bitstack.codecs.avd.decompose import reconstruct  # noqa: F401
from bitstack.codecs.base import Block


def ResidualBlock(signs: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> Block:  # noqa: N802 (the former class)
    """The block of parts u, v, signs (the former dataclass's field order: signs, u, v)."""
    return Block(u=u, v=v, signs=signs)
