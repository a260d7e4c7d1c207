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
size ≥ 8; on the CPU without a gradient, the path :func:`cpu_path` picks from the dispatch table:
the native lookup-table kernel (:mod:`bitstack.native.planes`) for few tokens, the native rebuild
of Ŵ and one matrix product for more, and where the native library is not available or
``BITSTACK_NATIVE=0``, its pure-PyTorch reference: the byte lookup tables of
:mod:`bitstack.codecs.planes.lut` for few tokens, else None, and the module rebuilds Ŵ
(:meth:`~bitstack.codecs.base.Codec.dense_weight`).  Both give the rebuilt weight's product
(docs/cpu.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bitstack.codecs.base import kernel_input_ok, stacked
from bitstack.codecs.planes.grid import sign_only_blocks
from bitstack.codecs.planes.lut import planes_linear_lut, supports_lut
from bitstack.kernels.dispatch import BATCH_MAX_TOKENS, DEFAULT_TABLE, KERNEL_MAX_BLOCKS, DispatchTable
from bitstack.kernels.ops import planes_linear_call, prepare_packed
from bitstack.kernels.planes.layout import PackedPlanes
from bitstack.native.planes import native_applies, planes_dense, planes_lut_linear


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
    if module.blocks and x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled()):
        signs = [b.signs for b in module.blocks]
        path = cpu_path(x.numel() // max(1, x.shape[-1]), module.lut_max_tokens, group_size, native_applies(x),
                        supports_lut(module.in_features, group_size))
        if path == "native_lut":
            return planes_lut_linear(x, signs, module.plane_offset, module.plane_step, group_size, module.bias,
                                     native=True)
        if path == "lut":
            return planes_linear_lut(x, signs, module.plane_offset, module.plane_step, group_size, module.bias)
        if path == "native_dense":
            weight = planes_dense(signs, module.plane_offset, module.plane_step, module.in_features, group_size,
                                  x.dtype, native=True)
            return F.linear(x, weight, module.bias)
    return None


def cpu_path(tokens: int, lut_max_tokens: int, group_size: int, native: bool, lut_ok: bool,
             table: DispatchTable = DEFAULT_TABLE) -> str | None:
    """The CPU product of a planes call of ``tokens`` rows of x (no gradient wanted).

    ``lut_max_tokens``: the module's cap on lookup-table products (0: always rebuild); ``native``:
    the native library takes x (:func:`~bitstack.native.planes.native_applies`); ``lut_ok``: the
    PyTorch lookup tables take the shape.  Returns "native_lut" (tokens ≤ ``table.native_max_tokens``),
    "native_dense" (native, more tokens), "lut" (no native, tokens ≤ ``table.lut_max_tokens``) or
    None (rebuild Ŵ in PyTorch)."""
    if native and group_size % 4 == 0 and tokens <= min(lut_max_tokens, table.native_max_tokens):
        return "native_lut"
    if native:
        return "native_dense"
    if lut_ok and tokens <= min(lut_max_tokens, table.lut_max_tokens):
        return "lut"
    return None


def repack_transient(signs_bytes: int, blocks: int, delta: int) -> int:
    """Bytes above the resident ones while :func:`pack` packs ``blocks`` blocks of ``signs_bytes``
    each, ``delta`` of them new or fewer (any sign): the new signs tensor alone (no conversion, no
    other part), measured to the byte by ``tests/peak_meter.py``."""
    return max(0, blocks * signs_bytes, delta * signs_bytes)
