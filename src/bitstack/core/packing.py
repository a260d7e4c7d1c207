"""Sign bits packed at 1 bit per weight, and its exact inverse.

Layout (the artifact stores it as is):
  packed: uint8, shape (rows, ceil(cols / 8)), row-major.  Bit ``b`` (LSB = bit 0) of byte
  ``[r, c]`` is the sign of element ``(r, 8 * c + b)``: 1 means +1, 0 means -1.  Padding bits
  (column >= cols) are 0.

``unpack_signs(pack_signs(x), x.shape[1])`` equals ``x`` for every bool matrix ``x``, and
``pack_signs(unpack_signs(p, cols))`` equals ``p`` for every ``p`` whose padding bits are 0.
"""

from __future__ import annotations

import torch

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_row_bytes(cols: int) -> int:
    """Bytes per row of a packed sign matrix with ``cols`` columns."""
    return (cols + 7) // 8


def pack_signs(positive: torch.Tensor) -> torch.Tensor:
    """Pack a sign matrix into bits.

    Args:
        positive: bool, shape (rows, cols); True where the sign is +1.
    Returns:
        uint8, shape (rows, ceil(cols / 8)), on the same device (layout in the module docstring).
    """
    if positive.dtype != torch.bool or positive.dim() != 2:
        raise ValueError(f"pack_signs expects a 2-D bool tensor, got {positive.dtype} of shape {tuple(positive.shape)}")
    rows, cols = positive.shape
    nbytes = packed_row_bytes(cols)
    padded = torch.zeros(rows, nbytes * 8, dtype=torch.uint8, device=positive.device)
    padded[:, :cols] = positive
    weights = _BIT_WEIGHTS.to(positive.device)
    # (rows, nbytes, 8) * bit weights, summed per byte; the sum of distinct powers of two fits uint8
    return (padded.view(rows, nbytes, 8) * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_signs(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Unpack bits into a bool sign matrix (True = +1).

    Args:
        packed: uint8, shape (rows, ceil(cols / 8)).
        cols: number of columns of the unpacked matrix.
    Returns:
        bool, shape (rows, cols).
    """
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"unpack_signs expects a 2-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.shape[1] != packed_row_bytes(cols):
        raise ValueError(f"a packed row of {cols} columns has {packed_row_bytes(cols)} bytes, got {packed.shape[1]}")
    rows = packed.shape[0]
    bits = (packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 1  # (rows, nbytes, 8)
    return bits.view(rows, -1)[:, :cols].bool()


def _sign_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(256, 8) table: row b holds the ±1 values of the 8 bits of byte b, LSB first."""
    bits = (torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device)) & 1
    return (bits * 2 - 1).to(dtype)


def signs_to_float(packed: torch.Tensor, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unpack bits into a ±1 matrix of ``dtype``.

    Args:
        packed: uint8, shape (..., rows, ceil(cols / 8)) — any number of leading dims.
        cols: number of columns.
    Returns:
        ``dtype``, shape (..., rows, cols).  One table lookup per byte (faster than shifting).
    """
    if packed.dtype != torch.uint8 or packed.dim() < 2:
        raise ValueError(f"signs_to_float expects a uint8 tensor of at least 2 dims, got {packed.dtype} {tuple(packed.shape)}")
    if packed.shape[-1] != packed_row_bytes(cols):
        raise ValueError(f"a packed row of {cols} columns has {packed_row_bytes(cols)} bytes, got {packed.shape[-1]}")
    table = _sign_table(dtype, packed.device)
    values = table[packed.long()]  # (..., rows, nbytes, 8)
    return values.flatten(-2)[..., :cols]
