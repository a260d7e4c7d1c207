"""A third codec, for tests only: sign blocks with one float16 magnitude per block.

Block i of a weight is S_i · m_i (S_i = sign of the residual, m_i = the mean absolute residual,
rounded to float16 before the residual update).  It has no settings, no parameters, no base
buffers and no packed form: everything else is the :class:`~bitstack.codecs.base.Codec` defaults.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from bitstack.codecs.base import Block, Codec, Decomposition, Parts
from bitstack.core.packing import pack_signs, signs_to_float
from bitstack.errors import ArtifactError


class ToyCodec(Codec):
    name = "toy"
    description = "signs times one float16 magnitude per block"

    def decompose(self, weight: torch.Tensor, settings: Any, *, niter: int, hessian: torch.Tensor | None,
                  calib_tokens: int, seed: int) -> Decomposition:
        residual = weight.clone()
        energies = [float(residual.square().sum())]
        blocks = []
        for _ in range(niter):
            positive = residual >= 0
            magnitude = residual.abs().mean().to(torch.float16).reshape(1)
            m = magnitude.float()
            residual -= torch.where(positive, m, -m)
            blocks.append(Block(magnitude=magnitude, signs=pack_signs(positive)))
            energies.append(float(residual.square().sum()))
        return Decomposition({}, blocks, {}, energies)

    def block_parts(self, weight: Any) -> Parts:
        return (("magnitude", torch.float16, (1,)),
                ("signs", torch.uint8, (weight.out_features, (weight.in_features + 7) // 8)))

    def check_params(self, params: Any, what: str) -> None:
        if params != {}:
            raise ArtifactError(f"{what}: codec toy has no params, got {params!r}"[:200])

    def describe(self, params: Mapping[str, Any]) -> str:
        return "one magnitude per block"

    def contribution(self, weight: Any, block: Block, index: int, base: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return signs_to_float(block.signs, weight.in_features) * block.magnitude.float()
