"""The ``planes`` codec at run time: its packed form (kernel mode), its products, its repack.

Kernel mode stores a weight's J blocks as one :class:`~bitstack.kernels.PackedPlanes`: the signs
stacked into one fresh uint8 (J, N, ceil(K/8)) tensor in the stored layout (no conversion) and
the module's grid buffers ``plane_offset``/``plane_step`` referenced, not copied.  The module's
blocks are then :class:`~bitstack.codecs.base.Block` s whose signs are views ``packed.signs[i]``
(u, v: shared empty tensors), so the resident bytes are still the stored blocks'.  A repack is one
part: the new signs (J × one block's) coexist with the old blocks until the views replace them.

Products (``fast_linear``): in kernel mode the operator ``bitstack::planes_linear``
(:mod:`bitstack.kernels.ops`: ``bitstack.kernels.planes_linear``'s one-token,
few-token and prefill kernels) for at most ``KERNEL_MAX_BLOCKS`` blocks and a power-of-two group
size ≥ 8; on the CPU, for at most ``module.lut_max_tokens`` tokens and no gradient, the byte lookup
tables of :mod:`bitstack.codecs.planes.lut` (measured faster there: benchmarks/RESULTS.md, "CPU
decode"); else None, and the module rebuilds Ŵ (:meth:`~bitstack.codecs.base.Codec.dense_weight`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from bitstack.codecs.base import kernel_input_ok, stacked
from bitstack.codecs.planes.grid import sign_only_blocks
from bitstack.codecs.planes.lut import planes_linear_lut, supports_lut
from bitstack.kernels.dispatch import BATCH_MAX_TOKENS, KERNEL_MAX_BLOCKS
from bitstack.kernels.ops import planes_linear_call, prepare_packed
from bitstack.kernels.planes.layout import PackedPlanes


def pack(module: Any) -> None:
    """Stack ``module.blocks``' signs (stored blocks and/or views) into a fresh PackedPlanes of the
    module's grids; its views become the module's blocks."""
    signs = stacked([b.signs for b in module.blocks])
    packed = PackedPlanes(signs, module.plane_offset, module.plane_step, module.out_features, module.in_features,
                          module.params["group_size"])
    packed.validate()  # once per repack: the forward's kernel calls do not check the packed tensors
    prepare_packed((packed.signs,), packed.out_features, BATCH_MAX_TOKENS)
    module.set_packed(packed, sign_only_blocks(packed.signs.unbind(0), packed.in_features))


def move_packed(module: Any, move: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """The packed signs moved with ``move``, the grids the module's (already moved) buffers."""
    p = module.packed
    moved = dataclasses.replace(p, signs=move(p.signs), offset=module.plane_offset, step=module.plane_step)
    prepare_packed((moved.signs,), moved.out_features, BATCH_MAX_TOKENS)
    module.set_packed(moved, sign_only_blocks(moved.signs.unbind(0), moved.in_features))


def fast_linear(module: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The kernels or the CPU lookup tables when they apply to ``x`` (module docstring), else None."""
    group_size = module.params["group_size"]
    packed = module.packed
    if kernel_input_ok(module, x) and packed.num_blocks <= KERNEL_MAX_BLOCKS:
        if packed.offset is not module.plane_offset or packed.step is not module.plane_step:
            # the grid buffers were replaced (e.g. assigned anew): refer to the current ones
            packed = dataclasses.replace(packed, offset=module.plane_offset, step=module.plane_step)
            packed.validate()
            module.set_packed(packed, tuple(module.blocks))
        return planes_linear_call(x, packed, module.bias)
    if (module.blocks and x.device.type == "cpu" and x.numel() <= module.lut_max_tokens * x.shape[-1]
            and supports_lut(module.in_features, group_size) and not (x.requires_grad and torch.is_grad_enabled())):
        return planes_linear_lut(x, [b.signs for b in module.blocks], module.plane_offset, module.plane_step,
                                 group_size, module.bias)
    return None


def repack_transient(signs_bytes: int, blocks: int, delta: int) -> int:
    """Bytes above the resident ones while :func:`pack` packs ``blocks`` blocks of ``signs_bytes``
    each, ``delta`` of them new or fewer (any sign): the new signs tensor alone (no conversion, no
    other part), measured to the byte by ``tests/peak_meter.py``."""
    return max(0, blocks * signs_bytes, delta * signs_bytes)
