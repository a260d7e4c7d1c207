"""Codec ``avd``: the kernels' layout of the residual blocks of one weight (pure PyTorch, no Triton).

The stored block format (see :mod:`bitstack.core.packing`) keeps bit ``b`` of sign byte
``[n, c]`` for column ``8c + b``.  The kernels want the eight columns that share a byte to be far
apart, so that "bit ``b`` of a tile of bytes" is itself a contiguous tile of columns.  ``repack``
therefore re-orders the bits inside each row (the byte count per row is unchanged) and stacks the
``j`` blocks of one weight contiguously.

Bit-plane layout (parameter ``group`` = G bytes, default 32)
------------------------------------------------------------
The ``K = in_features`` columns are cut into groups of ``8G`` columns: group ``g`` covers columns
``[8G·g, min(8G·(g+1), K))``; the last group may be shorter (width ``w``) and then uses
``G_g = ceil(w / 8)`` bytes instead of ``G`` (all full groups use ``G``).  Group ``g`` occupies
bytes ``[G·g, G·g + G_g)`` of the row, and

    bit ``b`` (LSB = 0) of byte ``G·g + c``  is the sign of column  ``8G·g + b·G_g + c``

(1 = +1, 0 = -1); bit positions whose column is ``>= K`` are 0.  Row ``n`` therefore still holds
exactly ``ceil(K / 8)`` bytes, so the repacked signs have the same size as the stored ones.

``PackedBitStack`` fields (``J`` blocks, ``N = out_features``, ``K = in_features``, rank ``k``)
-----------------------------------------------------------------------------------------------
* ``signs``: uint8, shape (J, N, ceil(K/8)), contiguous, bit-plane layout above.
* ``u``: float16, shape (J, N, k), contiguous: ``u[i] = u_i``.
* ``v``: float16, shape (J, k, K), contiguous: ``v[i] = v_i`` — or ``fp16(v_i · input_scale)``
  (computed in float32, rounded once) when ``repack`` was given an ``input_scale``.

Block ``i`` is ``S_i ⊙ (u_i.float() @ v_i.float())`` and Ŵ = Σ_i block_i.  Byte size:
``J · (N·ceil(K/8) + 2·N·k + 2·k·K)`` — exactly the stored blocks' bytes (see ``packed_nbytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from bitstack.kernels._checks import check_parts, check_x_and_bias

__all__ = [
    "DEFAULT_GROUP",
    "PackedBitStack",
    "packed_nbytes",
    "repack",
    "bitplane_from_standard",
    "standard_from_bitplane",
    "unpack_bitplane",
    "check_linear_args",
]

DEFAULT_GROUP = 32
_ALLOWED_GROUPS = (16, 32, 64, 128)


def _check_group(group: int) -> None:
    if group not in _ALLOWED_GROUPS:
        raise ValueError(f"group must be one of {_ALLOWED_GROUPS} bytes, got {group!r}")


def packed_nbytes(out_features: int, in_features: int, rank: int, num_blocks: int) -> int:
    """Exact bytes of a :class:`PackedBitStack` (signs + u + v), same as the stored blocks."""
    for name, val in (("out_features", out_features), ("in_features", in_features), ("rank", rank)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"num_blocks must be a non-negative int, got {num_blocks!r}")
    per_block = out_features * ((in_features + 7) // 8) + 2 * rank * (out_features + in_features)
    return num_blocks * per_block


@dataclass(frozen=True)
class PackedBitStack:
    """The ``J`` loaded residual blocks of one weight, in the kernels' layout (module docstring).

    Attributes:
        signs: uint8 (J, N, ceil(K/8)), bit-plane layout with ``group`` bytes per full group.
        u: float16 (J, N, k).
        v: float16 (J, k, K) (``input_scale`` folded in when given to ``repack``).
        out_features: N.   in_features: K.   rank: k.   group: G (bytes per full group).
    """

    signs: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    out_features: int
    in_features: int
    rank: int
    group: int = DEFAULT_GROUP

    @property
    def num_blocks(self) -> int:
        return int(self.signs.shape[0])

    @property
    def device(self) -> torch.device:
        return self.signs.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the three tensors; equals ``packed_nbytes(N, K, k, J)``."""
        return sum(t.numel() * t.element_size() for t in (self.signs, self.u, self.v))

    def validate(self) -> None:
        """Raise ValueError unless shapes, dtypes, devices and contiguity match the layout."""
        N, K, k, G = self.out_features, self.in_features, self.rank, self.group
        _check_group(G)
        J = self.signs.shape[0] if self.signs.dim() == 3 else -1
        expect = {
            "signs": (self.signs, torch.uint8, (J, N, (K + 7) // 8)),
            "u": (self.u, torch.float16, (J, N, k)),
            "v": (self.v, torch.float16, (J, k, K)),
        }
        check_parts("PackedBitStack", expect, J)

    def to(self, device: torch.device | str) -> "PackedBitStack":
        return PackedBitStack(self.signs.to(device), self.u.to(device), self.v.to(device),
                              self.out_features, self.in_features, self.rank, self.group)


def _group_bounds(K: int, group: int):
    """Yield (first column, width, first byte, bytes) for each group of a row of K columns."""
    width = 8 * group
    col, byte = 0, 0
    while col < K:
        w = min(width, K - col)
        nb = (w + 7) // 8
        yield col, w, byte, nb
        col += w
        byte += nb


def _bits_to_bytes(bits: torch.Tensor) -> torch.Tensor:
    """bits: (..., 8, C) of 0/1 uint8 -> bytes (..., C) with bit b from bits[..., b, :]."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device).view(8, 1)
    return (bits << shifts).sum(dim=-2, dtype=torch.uint8)


def _bytes_to_bits(packed: torch.Tensor) -> torch.Tensor:
    """bytes (..., C) -> bits (..., 8, C), 0/1 uint8, bits[..., b, c] = bit b of byte c."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device).view(8, 1)
    return (packed.unsqueeze(-2) >> shifts) & 1


def _standard_bits(signs: torch.Tensor, K: int) -> torch.Tensor:
    """Stored layout (rows, ceil(K/8)) -> 0/1 uint8 bits (rows, K) in column order."""
    rows, nb = signs.shape
    shifts = torch.arange(8, dtype=torch.uint8, device=signs.device)
    bits = (signs.unsqueeze(-1) >> shifts) & 1  # (rows, nb, 8): column 8c + b
    return bits.reshape(rows, nb * 8)[:, :K]


def bitplane_from_standard(signs: torch.Tensor, in_features: int, group: int = DEFAULT_GROUP) -> torch.Tensor:
    """Re-order the bits of stored sign rows into the bit-plane layout.

    Args:
        signs: uint8 (rows, ceil(in_features/8)), stored layout (bit b of byte c = column 8c+b).
        in_features: K, the number of columns.
        group: G, bytes per full group.
    Returns:
        uint8 (rows, ceil(K/8)), bit-plane layout (module docstring), same device.
    """
    _check_group(group)
    K = in_features
    if signs.dtype != torch.uint8 or signs.dim() != 2 or signs.shape[1] != (K + 7) // 8:
        raise ValueError(f"signs must be uint8 of shape (rows, {(K + 7) // 8}), got {signs.dtype} {tuple(signs.shape)}")
    rows = signs.shape[0]
    bits = _standard_bits(signs, K)
    out = torch.empty(rows, (K + 7) // 8, dtype=torch.uint8, device=signs.device)
    for col, w, byte, nb in _group_bounds(K, group):
        chunk = torch.zeros(rows, 8 * nb, dtype=torch.uint8, device=signs.device)
        chunk[:, :w] = bits[:, col:col + w]
        # column col + b*nb + c  ->  bit b of byte c
        out[:, byte:byte + nb] = _bits_to_bytes(chunk.view(rows, 8, nb))
    return out


def unpack_bitplane(signs: torch.Tensor, in_features: int, group: int = DEFAULT_GROUP) -> torch.Tensor:
    """Bit-plane sign rows -> 0/1 uint8 bits (..., rows, K) in column order (1 = +1)."""
    _check_group(group)
    K = in_features
    if signs.dtype != torch.uint8 or signs.shape[-1] != (K + 7) // 8:
        raise ValueError(f"signs must be uint8 with last dim {(K + 7) // 8}, got {signs.dtype} {tuple(signs.shape)}")
    lead = signs.shape[:-1]
    out = torch.empty(*lead, K, dtype=torch.uint8, device=signs.device)
    for col, w, byte, nb in _group_bounds(K, group):
        bits = _bytes_to_bits(signs[..., byte:byte + nb])  # (..., 8, nb): column col + b*nb + c
        out[..., col:col + w] = bits.reshape(*lead, 8 * nb)[..., :w]
    return out


def standard_from_bitplane(signs: torch.Tensor, in_features: int, group: int = DEFAULT_GROUP) -> torch.Tensor:
    """Inverse of :func:`bitplane_from_standard` (uint8 (rows, ceil(K/8)) both ways)."""
    K = in_features
    bits = unpack_bitplane(signs, K, group)
    rows = bits.shape[0]
    nb = (K + 7) // 8
    padded = torch.zeros(rows, nb * 8, dtype=torch.uint8, device=signs.device)
    padded[:, :K] = bits
    shifts = torch.arange(8, dtype=torch.uint8, device=signs.device)
    return (padded.view(rows, nb, 8) << shifts).sum(dim=-1, dtype=torch.uint8)


def _block_parts(block: Any):
    if isinstance(block, (tuple, list)) and len(block) == 3:
        return block
    if all(hasattr(block, a) for a in ("signs", "u", "v")):
        return block.signs, block.u, block.v
    raise ValueError("each block must be a (signs, u, v) tuple or have .signs/.u/.v attributes")


def repack(blocks: Sequence[Any], input_scale: torch.Tensor | None = None,
           group: int = DEFAULT_GROUP) -> PackedBitStack:
    """Stack ``j`` stored residual blocks of one weight into the kernels' layout.

    Pure function: the inputs are not modified; the result holds fresh contiguous tensors on the
    blocks' device, with byte size ``packed_nbytes(N, K, k, j)`` (identical to the inputs').

    Args:
        blocks: sequence of ``j >= 1`` blocks, each a ``(signs, u, v)`` tuple or an object with
            ``.signs/.u/.v`` (e.g. ``bitstack.codecs.base.Block``):
            signs uint8 (N, ceil(K/8)) in the stored layout, u float16 (N, k), v float16 (k, K),
            all on one device, same N, K, k for every block.
        input_scale: optional (K,) tensor (any float dtype): when given, ``v`` is replaced by
            ``fp16(v.float() * input_scale.float())`` so that the kernels compute
            ``(x ⊙ input_scale) · Ŵᵀ`` with no runtime cost (one extra fp16 rounding of v).
        group: G, bytes per full group of the bit-plane layout (16, 32, 64 or 128).
    Returns:
        :class:`PackedBitStack`.
    Raises:
        ValueError on an empty list, wrong dtypes, or inconsistent shapes/devices.
    """
    _check_group(group)
    if len(blocks) == 0:
        raise ValueError("repack needs at least one block")
    parts = [_block_parts(b) for b in blocks]
    s0, u0, v0 = parts[0]
    if u0.dim() != 2 or v0.dim() != 2:
        raise ValueError(f"u and v must be 2-D, got shapes {tuple(u0.shape)} and {tuple(v0.shape)}")
    N, k = u0.shape
    K = v0.shape[1]
    device = s0.device
    for idx, (s, u, v) in enumerate(parts):
        if s.dtype != torch.uint8 or u.dtype != torch.float16 or v.dtype != torch.float16:
            raise ValueError(f"block {idx}: expected uint8 signs and float16 u, v; got {s.dtype}, {u.dtype}, {v.dtype}")
        if tuple(s.shape) != (N, (K + 7) // 8) or tuple(u.shape) != (N, k) or tuple(v.shape) != (k, K):
            raise ValueError(f"block {idx}: shapes {tuple(s.shape)}, {tuple(u.shape)}, {tuple(v.shape)} do not match "
                             f"signs ({N}, {(K + 7) // 8}), u ({N}, {k}), v ({k}, {K})")
        if s.device != device or u.device != device or v.device != device:
            raise ValueError(f"block {idx}: tensors on different devices")
    if input_scale is not None:
        if input_scale.dim() != 1 or input_scale.shape[0] != K or not input_scale.is_floating_point():
            raise ValueError(f"input_scale must be a float tensor of shape ({K},), got {input_scale.dtype} "
                             f"{tuple(input_scale.shape)}")
        scale = input_scale.to(device=device, dtype=torch.float32)
    J = len(parts)
    signs = torch.empty(J, N, (K + 7) // 8, dtype=torch.uint8, device=device)
    u_all = torch.empty(J, N, k, dtype=torch.float16, device=device)
    v_all = torch.empty(J, k, K, dtype=torch.float16, device=device)
    for i, (s, u, v) in enumerate(parts):
        signs[i] = bitplane_from_standard(s, K, group)
        u_all[i] = u
        v_all[i] = v if input_scale is None else (v.float() * scale).to(torch.float16)
    return PackedBitStack(signs, u_all, v_all, N, K, k, group)


def check_linear_args(x: torch.Tensor, packed: PackedBitStack, bias: torch.Tensor | None, *,
                      need_gpu: bool) -> None:
    """Raise ValueError with a clear message unless ``(x, packed, bias)`` is a valid call.

    x: float16 or bfloat16, shape (..., K) with K = packed.in_features, on packed's device.
    bias: None or a float tensor of shape (N,) on the same device.
    need_gpu: the Triton kernels need CUDA tensors unless ``TRITON_INTERPRET=1``.
    """
    if not isinstance(packed, PackedBitStack):
        raise ValueError(f"packed must be a PackedBitStack (see bitstack.kernels.repack), got {type(packed).__name__}")
    packed.validate()
    check_x_and_bias(x, packed.in_features, packed.out_features, packed.device, bias, need_gpu=need_gpu)
