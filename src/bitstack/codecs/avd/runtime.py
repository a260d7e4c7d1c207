"""The ``avd`` codec at run time: its packed form (kernel mode), its product, its repack.

Storage in kernel mode ("packed")
---------------------------------
The packed tensors *are* the storage: ``module.packed`` is one
:class:`~bitstack.kernels.PackedBitStack` holding signs uint8 (J, N, ceil(K/8)) in the kernels'
bit-plane layout (:mod:`bitstack.kernels.avd.layout`), u float16 (J, N, k) and v float16 (J, k, K),
and ``module.blocks[i]`` is a :class:`PackedBlockView` whose ``signs``/``u``/``v`` are the views
``packed.signs[i]``/``packed.u[i]``/``packed.v[i]``.  The signs of a view are in the bit-plane
layout, not the stored one (``view.stored()`` converts).  ``u`` and ``v`` are the stored factors
unchanged: ``input_scale`` is *not* folded into ``v``; the module multiplies x by it (one
elementwise op), so the blocks stay exactly the artifact's values.  The packed layout has exactly
the stored blocks' byte size, and ``bitstack.memory_bytes`` counts each storage once, so the
resident bytes still equal the manifest's prefix bytes.  The operator ``bitstack::avd_linear``
(:mod:`bitstack.kernels.ops`, ``bitstack.kernels.bitstack_linear``) computes the product without a dense Ŵ.

Repacking in parts
------------------
:func:`pack` repacks **one weight** into fresh packed tensors, one part at a time: first the signs
(the views still valid are copied, the new blocks' signs converted to the bit-plane layout), then
u, then v.  After each part, the module's blocks become views that take that part from its new
tensor, which releases the old tensor of that part (a stored block's buffer, whose signs, u and v
are views of it, goes with its last part).  Should a repack fail between parts, the blocks are
valid views (``packed`` None: the pure-PyTorch path) until the next repack.

Transient memory of one repack (measured with ``tests/peak_meter.py``): with J blocks after it,
d = J - (blocks before) and s, u, v one block's bytes of each part, part t adds
J × (its bytes) + d × (the bytes of the parts before it), the largest of
J·s, J·u + d·s, J·v + d·(s + u); so at most J × max(s, u, v) + |d| × (s + u), where packing
the three tensors at once held the whole new weight, J × (s + u + v).  A grow or a load (d > 0)
also converts the new signs, adding uint8 scratch while the new signs tensor exists:
``bitplane_from_standard`` holds about 16 bytes (SmolLM2's shapes) to 26 bytes (tiny ones) per
byte of the sign rows converted at once (one block's, or ``SIGN_CHUNK_BYTES`` of its rows if
smaller; :func:`sign_scratch_bytes` counts it).  :func:`repack_transient` is this formula.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from bitstack.codecs.base import Block, kernel_input_ok, stacked
from bitstack.codecs.avd.decompose import block_dense, reconstruct
from bitstack.kernels.api import decode_max_tokens
from bitstack.kernels.avd.layout import (DEFAULT_GROUP, PackedBitStack, bitplane_from_standard, standard_from_bitplane,
                                     unpack_bitplane)
from bitstack.kernels.avd.reference import dense_weight as packed_dense_weight
from bitstack.kernels.ops import avd_linear_call, prepare_packed

SIGN_CHUNK_BYTES = 8 << 20  # rows of stored signs converted to the bit-plane layout at a time


class PackedBlockView(Block):
    """Block ``i`` of a module's :class:`~bitstack.kernels.PackedBitStack`, as views.

    signs: uint8 (out, ceil(in/8)) in the kernels' **bit-plane** layout with ``group`` bytes per
    full group (see :mod:`bitstack.kernels.avd.layout`).  u: float16 (out, k).  v: float16 (k, in)
    (the stored factors; ``input_scale`` is not folded in).
    """

    stored_layout = False

    def __init__(self, signs: torch.Tensor, u: torch.Tensor, v: torch.Tensor, group: int = DEFAULT_GROUP):
        super().__init__(u=u, v=v, signs=signs)
        object.__setattr__(self, "group", group)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "PackedBlockView":
        return PackedBlockView(fn(self.signs), fn(self.u), fn(self.v), self.group)

    def stored(self) -> Block:
        """The same block in the stored layout (fresh sign tensor; u and v are shared)."""
        return Block(u=self.u, v=self.v, signs=standard_from_bitplane(self.signs, self.v.shape[1], self.group))

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The block's dense contribution S ⊙ (u v), shape (out, in)."""
        sign = unpack_bitplane(self.signs, self.v.shape[1], self.group).to(torch.float32) * 2 - 1
        return (sign * (self.u.to(torch.float32) @ self.v.to(torch.float32))).to(dtype)


def contribution(block: Block) -> torch.Tensor:
    """S ⊙ (u v) of a stored block or a :class:`PackedBlockView`, float32 (out, in)."""
    return block.dense() if isinstance(block, PackedBlockView) else block_dense(block)


def pack_group(module: Any) -> int:
    """The sign group of the module's bit-plane layout: the current one's, else the default."""
    return module.packed.group if module.packed is not None else DEFAULT_GROUP


def pack(module: Any) -> None:
    """Repack ``module.blocks`` (stored blocks and/or views) into fresh packed tensors, one part at
    a time (module docstring); the packed values are those of an all-at-once pack."""
    N, K, k = module.out_features, module.in_features, module.params["rank"]
    group = pack_group(module)
    signs = bitplane_signs(module.blocks, group, N, K)
    module.set_blocks([PackedBlockView(signs[i], b.u, b.v, group) for i, b in enumerate(module.blocks)])
    u = stacked([b.u for b in module.blocks])
    module.set_blocks([PackedBlockView(signs[i], u[i], b.v, group) for i, b in enumerate(module.blocks)])
    v = stacked([b.v for b in module.blocks])
    views = tuple(PackedBlockView(signs[i], u[i], v[i], group) for i in range(len(v)))
    packed = PackedBitStack(signs, u, v, N, K, k, group)
    packed.validate()  # once per repack: the forward's kernel calls do not check the packed tensors
    prepare_packed((signs, u, v), N, decode_max_tokens(k))
    module.set_packed(packed, views)


def unpack(module: Any) -> None:
    """Fresh stored-layout tensors for every view, so that none keeps the old packed storage alive."""
    module.set_blocks([Block(u=b.u.clone(), v=b.v.clone(), signs=b.stored().signs)
                       if isinstance(b, PackedBlockView) else b for b in module.blocks])


def move_packed(module: Any, move: Callable[[torch.Tensor], torch.Tensor]) -> None:
    p = module.packed
    moved = dataclasses.replace(p, signs=move(p.signs), u=move(p.u), v=move(p.v))
    prepare_packed((moved.signs, moved.u, moved.v), moved.out_features, decode_max_tokens(moved.rank))
    module.set_packed(moved, tuple(PackedBlockView(moved.signs[i], moved.u[i], moved.v[i], moved.group)
                                   for i in range(moved.num_blocks)))


def fast_linear(module: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The kernels (decode kernel for few tokens, chunked prefill otherwise) in kernel mode."""
    return avd_linear_call(x, module.packed, module.bias) if kernel_input_ok(module, x) else None


def dense_weight(module: Any, dtype: torch.dtype) -> torch.Tensor:
    """Ŵ from the packed form, from views, or from stored blocks (:func:`reconstruct`)."""
    if module.packed is not None and module.in_sync():
        return packed_dense_weight(module.packed, dtype)
    if not all(b.stored_layout for b in module.blocks):
        total = contribution(module.blocks[0])
        for block in module.blocks[1:]:
            total += contribution(block)
        return total.to(dtype)
    return reconstruct(module.blocks, dtype)


def bitplane_signs(blocks, group: int, N: int, K: int) -> torch.Tensor:
    """The signs of ``blocks`` (stored blocks, uint8 (N, ceil(K/8)) in the stored layout, and/or
    :class:`PackedBlockView` s) as one fresh uint8 tensor (J, N, ceil(K/8)) in the bit-plane
    layout of ``group``, on the first block's device.  Views of that group are copied; other
    signs are converted ``SIGN_CHUNK_BYTES`` of rows at a time (scratch: module docstring)."""
    nb = (K + 7) // 8
    device = blocks[0].signs.device
    signs = torch.empty(len(blocks), N, nb, dtype=torch.uint8, device=device)
    rows = max(1, SIGN_CHUNK_BYTES // max(1, nb))
    for i, block in enumerate(blocks):
        if isinstance(block, PackedBlockView) and block.group == group:
            signs[i].copy_(block.signs)
            continue
        stored = block.signs
        if isinstance(block, PackedBlockView):
            stored = standard_from_bitplane(stored, K, block.group)
        for r0 in range(0, N, rows):
            signs[i, r0:r0 + rows] = bitplane_from_standard(stored[r0:r0 + rows].to(device), K, group)
    return signs


def part_bytes(out_features: int, in_features: int, rank: int) -> tuple[int, int, int]:
    """Bytes of one block's signs, u and v (uint8 (N, ceil(K/8)), float16 (N, k), float16 (k, K))."""
    return out_features * ((in_features + 7) // 8), out_features * rank * 2, rank * in_features * 2


def sign_scratch_bytes(out_features: int, in_features: int, group: int) -> int:
    """Peak bytes of the uint8 scratch that converting one block's signs to the bit-plane layout
    of ``group`` holds (:func:`bitplane_signs`: ``SIGN_CHUNK_BYTES`` of rows at a time, through
    ``bitstack.kernels.avd.layout.bitplane_from_standard``), counted from that function's tensors.

    With r rows converted at once, c = r × ceil(K/8) bytes of them and c_g = r × (the bytes of
    the widest group): unpacking to bits holds a shift table (8 bytes) and two (r, ceil(K/8), 8)
    tensors, 16c; then the bits (8c), the output (c) and, for one group, its zero-padded bits
    (8c_g), their shifted copy (8c_g), its bytes (c_g) and a shift table (8).  So
    max(16c, 9c + 17c_g) + 8: 26c + 8 at the tiny test shapes (one group), 16.6c + 8 at
    SmolLM2's (K = 576: three groups of 32 bytes in 72)."""
    nb = (in_features + 7) // 8
    rows = min(out_features, max(1, SIGN_CHUNK_BYTES // max(1, nb)))
    c, c_g = rows * nb, rows * min(group, nb)
    return max(16 * c, 9 * c + 17 * c_g) + 8


def repack_transient(out_features: int, in_features: int, rank: int, blocks: int, delta: int, group: int) -> int:
    """Bytes above the resident ones while :func:`pack` packs one weight of ``blocks`` blocks,
    ``delta`` of them new stored blocks (> 0: a load or a grow) or ``-delta`` fewer than before
    (< 0: a shrink), measured from the resident bytes when it starts.

    The parts are packed in turn (signs, u, v; one block's bytes s, u, v: :func:`part_bytes`):
    part t allocates its new tensor, ``blocks`` × its bytes, on top of ``delta`` × the bytes of
    the parts before it (on a grow, the new stored blocks' copies of them, whose buffers go with
    their last part; on a shrink, what the fewer blocks have already freed).  New signs are
    converted through :func:`sign_scratch_bytes` while the new signs tensor exists.  This is the
    module docstring's formula, and what ``tests/peak_meter.py`` measures to the byte."""
    s, u, v = part_bytes(out_features, in_features, rank)
    stages = [blocks * s, blocks * u + delta * s, blocks * v + delta * (s + u)]
    if delta > 0:
        stages[0] += sign_scratch_bytes(out_features, in_features, group)
    return max(0, *stages)
