"""The ``avd`` codec: the BitStack paper's blocks, sign × rank-k magnitude (:mod:`.decompose`).

A weight's parameters: ``{"rank": k}`` (k = min(settings rank, out, in)).  A block's parts, in
on-disk order: ``u`` float16 (out, k), ``v`` float16 (k, in), ``signs`` uint8 (out, ceil(in/8)).
No base buffers.  Run time: :mod:`.runtime`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from bitstack.codecs.avd import runtime
from bitstack.codecs.avd.decompose import avd_decompose
from bitstack.codecs.avd.settings import AvdSettings
from bitstack.codecs.base import Block, Codec, Decomposition, Parts, check_positive_params


class AvdCodec(Codec):
    name = "avd"
    description = "the paper's absolute-value decomposition with rank-k magnitudes"
    settings_type = AvdSettings
    scale_power_rule = "1"

    def decompose(self, weight: torch.Tensor, settings: AvdSettings, *, niter: int, hessian: torch.Tensor | None,
                  calib_tokens: int, seed: int) -> Decomposition:
        rank = min(settings.rank, *weight.shape)
        result = avd_decompose(weight, niter, rank, oversample=settings.svd_oversample,
                               power_iters=settings.svd_power_iters, seed=seed)
        return Decomposition({"rank": rank}, result.blocks, {}, result.residual_sq)

    def block_parts(self, weight: Any) -> Parts:
        out_features, in_features, rank = weight.out_features, weight.in_features, weight.params["rank"]
        return (("u", torch.float16, (out_features, rank)), ("v", torch.float16, (rank, in_features)),
                ("signs", torch.uint8, (out_features, (in_features + 7) // 8)))

    def check_params(self, params: Any, what: str) -> None:
        check_positive_params(params, ("rank",), self.name, what)

    def legacy_params(self, entry: dict, version: int) -> tuple[dict, tuple[str, ...]] | None:
        # version 1 knew only this codec; version 2 marked it with group_size 0
        if version == 1 and "rank" in entry and "group_size" not in entry:
            return {"rank": entry["rank"]}, ("rank",)
        group_size = entry.get("group_size")
        if version == 2 and "rank" in entry and type(group_size) is int and group_size == 0:
            return {"rank": entry["rank"]}, ("rank", "group_size")
        return None

    def describe(self, params: Mapping[str, Any]) -> str:
        return f"rank {params['rank']}"

    def contribution(self, weight: Any, block: Block, index: int, base: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return runtime.contribution(block)

    def kernel_supported(self, weight: Any) -> bool:
        return True

    def pack_layout(self, module: Any) -> int:
        return runtime.pack_group(module)

    def pack(self, module: Any) -> None:
        runtime.pack(module)

    def unpack(self, module: Any) -> None:
        runtime.unpack(module)

    def move_packed(self, module: Any, move: Callable[[torch.Tensor], torch.Tensor]) -> None:
        runtime.move_packed(module, move)

    def fast_linear(self, module: Any, x: torch.Tensor) -> torch.Tensor | None:
        return runtime.fast_linear(module, x)

    def dense_weight(self, module: Any, dtype: torch.dtype) -> torch.Tensor:
        return runtime.dense_weight(module, dtype)

    def repack_transient(self, weight: Any, blocks: int, delta: int, layout: int) -> int:
        return runtime.repack_transient(weight.out_features, weight.in_features, weight.params["rank"], blocks, delta,
                                        layout)
