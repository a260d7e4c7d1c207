"""Codec ``planes``: the loaded bit-plane blocks of one weight, as the planes kernels read them
(pure PyTorch, no Triton), and the checks of the kernels' arguments.

A ``planes`` weight of ``J`` loaded blocks is

    Ŵ = C + Σ_{i<J} S_i ⊙ expand(step) · 2^-i

(:mod:`bitstack.codecs.planes.grid`): ``C`` = ``offset`` and ``step`` are float16 (N, G) per (row, group
of ``group_size`` input columns), G = ceil(K / group_size), the last group possibly shorter, and
``expand`` repeats each group's value over its columns.  ``S_i`` is block i's sign matrix.

``PackedPlanes`` fields (``J`` blocks, ``N = out_features``, ``K = in_features``)
-------------------------------------------------------------------------------
* ``signs``: uint8, shape (J, N, ceil(K/8)), contiguous, ``signs[i]`` = block i's signs in the
  **stored** layout of :mod:`bitstack.core.packing`, unchanged: bit b (LSB = 0) of byte
  ``[i, n, c]`` is the sign of weight ``(n, 8c + b)``, 1 = +1, 0 = -1; padding bits (column
  ``>= K``) are 0.  So a kernel that loads the bytes ``[BN, BK/8]`` of a tile, expands each into
  its 8 bits (``(byte >> b) & 1`` over b = 0..7, shape [BN, BK/8, 8]) and flattens the last two
  axes has the tile's columns in order.  A 32-bit little-endian word ``w`` of a row (bytes
  4w..4w+3) holds column ``32w + j`` in its bit j.
* ``offset``: float16 (N, G), the group centres C.
* ``step``: float16 (N, G), the first-level magnitudes.  Both are the module's buffers
  (``plane_offset``, ``plane_step``), referenced, not copied.
* ``out_features`` N, ``in_features`` K, ``group_size``.

Byte size: the signs alone, ``J · N · ceil(K/8)`` (:func:`planes_nbytes`) — exactly the stored
blocks' bytes; the grids are base buffers, counted with the non-decomposed weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from bitstack.kernels._checks import check_parts, check_x_and_bias
from bitstack.kernels.dispatch import KERNEL_MAX_BLOCKS

__all__ = ["PackedPlanes", "pack_planes", "planes_nbytes", "planes_group_supported", "check_planes_args",
           "check_kernel_support"]


def planes_nbytes(out_features: int, in_features: int, num_blocks: int) -> int:
    """Exact bytes of a :class:`PackedPlanes`' signs, J · N · ceil(K/8) (the grids are not counted)."""
    for name, val in (("out_features", out_features), ("in_features", in_features)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"num_blocks must be a non-negative int, got {num_blocks!r}")
    return num_blocks * out_features * ((in_features + 7) // 8)


def planes_group_supported(group_size: int) -> bool:
    """Whether the planes kernels take this group size: a power of two, at least 8 (one byte of
    signs never spans two groups)."""
    return isinstance(group_size, int) and group_size >= 8 and group_size & (group_size - 1) == 0


@dataclass(frozen=True)
class PackedPlanes:
    """The ``J`` loaded blocks of one ``planes`` weight (module docstring for the layout).

    Attributes:
        signs: uint8 (J, N, ceil(K/8)), contiguous, stored layout (bit b of byte c = column 8c+b).
        offset: float16 (N, G), group centres C (the module's ``plane_offset``).
        step: float16 (N, G), first-level magnitudes (the module's ``plane_step``).
        out_features: N.   in_features: K.   group_size: columns per group; G = ceil(K / group_size).
    """

    signs: torch.Tensor
    offset: torch.Tensor
    step: torch.Tensor
    out_features: int
    in_features: int
    group_size: int

    @property
    def num_blocks(self) -> int:
        return int(self.signs.shape[0])

    @property
    def num_groups(self) -> int:
        return (self.in_features + self.group_size - 1) // self.group_size

    @property
    def device(self) -> torch.device:
        return self.signs.device

    @property
    def nbytes(self) -> int:
        """Bytes of the signs, ``planes_nbytes(N, K, J)`` (the grids are base buffers)."""
        return self.signs.numel() * self.signs.element_size()

    def validate(self) -> None:
        """Raise ValueError unless shapes, dtypes, devices and contiguity match the layout."""
        N, K, gs = self.out_features, self.in_features, self.group_size
        for name, val in (("out_features", N), ("in_features", K), ("group_size", gs)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"PackedPlanes.{name} must be a positive int, got {val!r}")
        J = self.signs.shape[0] if self.signs.dim() == 3 else -1
        G = self.num_groups
        expect = {
            "signs": (self.signs, torch.uint8, (J, N, (K + 7) // 8)),
            "offset": (self.offset, torch.float16, (N, G)),
            "step": (self.step, torch.float16, (N, G)),
        }
        check_parts("PackedPlanes", expect, J)

    def to(self, device: torch.device | str) -> "PackedPlanes":
        return PackedPlanes(self.signs.to(device), self.offset.to(device), self.step.to(device),
                            self.out_features, self.in_features, self.group_size)


def pack_planes(sign_tensors: Sequence[torch.Tensor], offset: torch.Tensor, step: torch.Tensor,
                group_size: int, *, in_features: int | None = None) -> PackedPlanes:
    """Stack the signs of ``J`` blocks of one ``planes`` weight into a :class:`PackedPlanes`.

    Pure function: the inputs are not modified; the signs are copied into one fresh contiguous
    uint8 (J, N, ceil(K/8)) tensor on the first one's device, bits unchanged; ``offset`` and
    ``step`` are referenced as they are.

    Args:
        sign_tensors: ``J >= 1`` uint8 tensors (N, ceil(K/8)), stored layout, one device.
        offset, step: float16 (N, ceil(K / group_size)) on that device.
        group_size: columns per group, >= 1.
        in_features: K; default ``8 · ceil(K/8)`` (the signs' width in bits), which must then
            give ``G = ceil(K / group_size)`` groups.
    Returns:
        :class:`PackedPlanes` of byte size ``planes_nbytes(N, K, J)``.
    Raises:
        ValueError on an empty list, wrong dtypes, or inconsistent shapes/devices.
    """
    if len(sign_tensors) == 0:
        raise ValueError("pack_planes needs at least one block")
    first = sign_tensors[0]
    if not isinstance(first, torch.Tensor) or first.dim() != 2:
        raise ValueError(f"signs must be 2-D uint8 tensors, got {getattr(first, 'shape', type(first).__name__)}")
    N, nb = first.shape
    for idx, s in enumerate(sign_tensors):
        if s.dtype != torch.uint8 or tuple(s.shape) != (N, nb) or s.device != first.device:
            raise ValueError(f"block {idx}: signs must be uint8 ({N}, {nb}) on {first.device}, "
                             f"got {s.dtype} {tuple(s.shape)} on {s.device}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if offset.dim() != 2 or offset.shape[0] != N:
        raise ValueError(f"offset must have shape ({N}, G), got {tuple(offset.shape)}")
    K = 8 * nb if in_features is None else in_features
    if not isinstance(K, int) or not 8 * (nb - 1) < K <= 8 * nb:
        raise ValueError(f"in_features {K!r} does not fit signs of {nb} bytes per row")
    if offset.shape[1] != (K + group_size - 1) // group_size:
        raise ValueError(f"offset has {offset.shape[1]} groups; {K} columns in groups of {group_size} make "
                         f"{(K + group_size - 1) // group_size} (pass in_features)")
    signs = torch.empty(len(sign_tensors), N, nb, dtype=torch.uint8, device=first.device)
    for i, s in enumerate(sign_tensors):
        signs[i].copy_(s)
    packed = PackedPlanes(signs, offset, step, N, K, group_size)
    packed.validate()
    return packed


def check_planes_args(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None, *,
                      need_gpu: bool) -> None:
    """ValueError unless ``(x, packed, bias)`` is a valid call: ``packed`` a valid
    :class:`PackedPlanes`; x float16/bfloat16 (..., K) on its device; bias None or float (N,);
    CUDA tensors if ``need_gpu`` (unless ``TRITON_INTERPRET=1``)."""
    if not isinstance(packed, PackedPlanes):
        raise ValueError(f"packed must be a PackedPlanes (see bitstack.kernels.pack_planes), got {type(packed).__name__}")
    packed.validate()
    check_x_and_bias(x, packed.in_features, packed.out_features, packed.device, bias, need_gpu=need_gpu)


def check_kernel_support(packed: PackedPlanes) -> None:
    """ValueError unless the planes kernels take ``packed``: a power-of-two group size >= 8 and at
    most ``KERNEL_MAX_BLOCKS`` blocks."""
    if not planes_group_supported(packed.group_size):
        raise ValueError(f"the planes kernels need a power-of-two group_size >= 8, got {packed.group_size}; "
                         "use bitstack.kernels.planes.reference")
    if packed.num_blocks > KERNEL_MAX_BLOCKS:
        raise ValueError(f"the planes kernels take at most {KERNEL_MAX_BLOCKS} blocks, got {packed.num_blocks}; "
                         "use bitstack.kernels.planes.reference")
