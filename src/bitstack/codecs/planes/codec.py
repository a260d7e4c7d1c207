"""The ``planes`` codec: bit planes on per-(row, group) grids, signs chosen jointly (:mod:`.grid`).

A weight's parameters: ``{"group_size": g}``.  A block's parts, in on-disk order: ``u`` float16
(out, 0) and ``v`` float16 (0, in), both empty, then ``signs`` uint8 (out, ceil(in/8)).  Base
buffers: ``plane_offset`` and ``plane_step``, float16 (out, ceil(in / g)).  Run time: :mod:`.runtime`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from bitstack.codecs.base import Block, Codec, Decomposition, Parts, check_positive_params
from bitstack.codecs.planes import runtime
from bitstack.codecs.planes.decompose import joint_signs_for, plane_decompose, search_scale_power, weight_grid
from bitstack.codecs.planes.grid import CLIP_RATIOS, num_groups, plane_block_contribution, prefix_grid
from bitstack.codecs.planes.settings import AUTO_SCALE_POWERS, FEEDBACK_TOKENS_PER_INPUT, PlanesSettings
from bitstack.kernels.planes.layout import planes_group_supported


class PlanesCodec(Codec):
    name = "planes"
    description = "bit planes with group-wise magnitudes, 1 bit per weight per block"
    settings_type = PlanesSettings
    scale_power_rule = ("per input, the p in 0, 0.25, 0.5, 0.75, 1 whose round-to-nearest planes have the least "
                        "output error at 2-4 blocks")

    def needs_hessian(self, settings: PlanesSettings) -> bool:
        return True  # the energies are output errors; the signs and the scale search use it too

    def auto_scale_power(self, weights: Sequence[torch.Tensor], hessians: Sequence[torch.Tensor | None],
                         scale: torch.Tensor, settings: PlanesSettings) -> float:
        return search_scale_power(list(weights), list(hessians), scale, AUTO_SCALE_POWERS, settings.group_size)

    def decompose(self, weight: torch.Tensor, settings: PlanesSettings, *, niter: int, hessian: torch.Tensor | None,
                  calib_tokens: int, seed: int) -> Decomposition:
        return self._decompose(weight, settings, niter, hessian, calib_tokens, None)

    def decompose_many(self, weights: Mapping[str, torch.Tensor], settings: PlanesSettings, *, niter: int,
                       hessians: Mapping[str, torch.Tensor | None], calib_tokens: int,
                       seeds: Mapping[str, int]) -> dict[str, Decomposition]:
        # the joint signs of all weights with one column loop per input width: the same signs;
        # each weight's grid is computed once, for its signs and its blocks
        grids = {n: weight_grid(w, settings.group_size, hessians[n], _clip_ratios(settings)) for n, w in weights.items()}
        joint = {}
        if settings.signs == "joint":
            chosen = {n: w for n, w in weights.items() if self._feedback_ok(settings, w, calib_tokens)
                      and hessians[n] is not None}
            joint = joint_signs_for(chosen, {n: hessians[n] for n in chosen}, niter, settings.group_size,
                                    settings.level_weight_values(), damp=settings.damp, clip_ratios=_clip_ratios(settings),
                                    grids=grids)
        return {n: self._decompose(w, settings, niter, hessians[n], calib_tokens, joint.get(n), grids[n])
                for n, w in weights.items()}

    def _feedback_ok(self, settings: PlanesSettings, weight: torch.Tensor, calib_tokens: int) -> bool:
        return not self.settings_used(settings, calib_tokens=calib_tokens, in_features=weight.shape[1])

    def _decompose(self, weight: torch.Tensor, settings: PlanesSettings, niter: int, hessian: torch.Tensor | None,
                   calib_tokens: int, joint: torch.Tensor | None, grid=None) -> Decomposition:
        feedback_ok = self._feedback_ok(settings, weight, calib_tokens)
        result = plane_decompose(weight, niter, settings.group_size, hessian=hessian,
                                 feedback=settings.signs == "hessian" and feedback_ok, damp=settings.damp,
                                 level_weights=(settings.level_weight_values()
                                                if settings.signs == "joint" and feedback_ok else None),
                                 clip_ratios=_clip_ratios(settings), joint=joint, grid=grid)
        return Decomposition({"group_size": settings.group_size}, result.blocks,
                             {"plane_offset": result.offset, "plane_step": result.step}, result.residual_sq)

    def settings_used(self, settings: PlanesSettings, *, calib_tokens: int, in_features: int) -> dict[str, Any]:
        # error feedback needs a well-determined Hessian: with fewer calibration tokens than
        # FEEDBACK_TOKENS_PER_INPUT x in_features, round to nearest instead
        if settings.signs != "nearest" and calib_tokens < FEEDBACK_TOKENS_PER_INPUT * in_features:
            return {"signs": "nearest"}
        return {}

    def block_parts(self, weight: Any) -> Parts:
        out_features, in_features = weight.out_features, weight.in_features
        return (("u", torch.float16, (out_features, 0)), ("v", torch.float16, (0, in_features)),
                ("signs", torch.uint8, (out_features, (in_features + 7) // 8)))

    def base_buffers(self, weight: Any) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        shape = (weight.out_features, num_groups(weight.in_features, weight.params["group_size"]))
        return {"plane_offset": (torch.float16, shape), "plane_step": (torch.float16, shape)}

    def check_params(self, params: Any, what: str) -> None:
        check_positive_params(params, ("group_size",), self.name, what)

    def legacy_params(self, entry: dict, version: int) -> tuple[dict, tuple[str, ...]] | None:
        # version 2 marked this codec with a group_size > 0 and rank 0 (empty u and v)
        group_size, rank = entry.get("group_size"), entry.get("rank")
        if version == 2 and type(group_size) is int and group_size > 0 and type(rank) is int and rank == 0:
            return {"group_size": group_size}, ("rank", "group_size")
        return None

    def describe(self, params: Mapping[str, Any]) -> str:
        return f"groups of {params['group_size']}"

    def contribution(self, weight: Any, block: Block, index: int, base: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return plane_block_contribution(block, index, base["plane_offset"], base["plane_step"],
                                        weight.params["group_size"])

    def uniform_grid(self, module: Any, block: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        return prefix_grid(module.plane_offset, module.plane_step, module.params["group_size"], len(module.blocks),
                           module.in_features, block)

    def kernel_supported(self, weight: Any) -> bool:
        return planes_group_supported(weight.params["group_size"])

    def pack(self, module: Any) -> None:
        runtime.pack(module)

    def move_packed(self, module: Any, move: Callable[[torch.Tensor], torch.Tensor]) -> None:
        runtime.move_packed(module, move)

    def fast_linear(self, module: Any, x: torch.Tensor) -> torch.Tensor | None:
        return runtime.fast_linear(module, x)

    def repack_transient(self, weight: Any, blocks: int, delta: int, layout: int) -> int:
        return runtime.repack_transient(weight.out_features * ((weight.in_features + 7) // 8), blocks, delta)


def _clip_ratios(settings: PlanesSettings) -> tuple[float, ...]:
    return CLIP_RATIOS if settings.clip == "search" else (1.0,)
