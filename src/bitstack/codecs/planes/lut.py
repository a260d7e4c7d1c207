"""``y = x · Ŵᵀ`` for a planes weight without rebuilding Ŵ: byte lookup tables (the CPU decode path).

A planes weight of J blocks is Ŵ = C + Σ_{i<J} S_i ⊙ expand(step)·2^-i (:mod:`bitstack.codecs.planes.grid`).
For one group g of input columns and S_i = 2·B_i − 1 (B_i the stored bits),

    Σ_{k∈g} Ŵ[n, k] x_k = (C − c_J·step)[n, g] · X_g + 2 · step[n, g] · Σ_i 2^-i (B_i x)_{n,g}

with X_g = Σ_{k∈g} x_k and c_J = Σ_{i<J} 2^-i.  The bit products (B_i x)_{n,g} come from lookup
tables: for every byte position c of a row (the 8 columns 8c … 8c+7) the 256 subset sums of those
8 inputs, T[c, b] = Σ_{bit j of b set} x_{8c+j}.  Then (B_i x)_{n,g} is the sum, over the bytes c of
group g, of T[c, byte_i[n, c]]: one table read per 8 weights instead of rebuilding 8 weights, which is
``torch.nn.functional.embedding_bag`` with the tables as its rows and each (row, group) a bag.

Cost per token: building the tables, ceil(K/8) × 256 sums, plus per block one uint8 → int64 index
conversion and one gathered sum over N × ceil(K/8) entries; the rebuild path touches N × K floats
several times per block.  Used for few tokens (its cost grows with the token count); nothing here
keeps state.

Layout: signs uint8 (N, ceil(K/8)), bit j (LSB = 0) of byte c is column 8c + j, 1 = +1 (the stored
layout, :mod:`bitstack.core.packing`).  The group size must be a multiple of 8, so that a group is
whole bytes (SmolLM2 and every artifact of the default 128 qualify).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitstack.codecs.planes.grid import num_groups


def supports_lut(in_features: int, group_size: int) -> bool:
    """Whether :func:`planes_linear_lut` handles this shape (a group is whole bytes)."""
    return group_size > 0 and group_size % 8 == 0 and in_features > 0


def _subset_tables(x: torch.Tensor, row_bytes: int) -> torch.Tensor:
    """float32 (row_bytes · 256 + 1, T): row c·256 + b is Σ_{bit j of b} x[:, 8c + j]; the last row
    is 0 (the index of padding bytes).  x: float32 (T, K), K <= 8 · row_bytes."""
    tokens, in_features = x.shape
    padded = F.pad(x, (0, row_bytes * 8 - in_features)).view(tokens, row_bytes, 8)
    bits = ((torch.arange(256, device=x.device)[None, :] >> torch.arange(8, device=x.device)[:, None]) & 1)
    tables = padded @ bits.to(torch.float32)  # (T, row_bytes, 256)
    return torch.cat([tables.reshape(tokens, -1).T, x.new_zeros(1, tokens)])


def planes_linear_lut(x: torch.Tensor, signs: list[torch.Tensor], offset: torch.Tensor, step: torch.Tensor,
                      group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) for the planes weight of the given blocks' signs.

    Args:
        x: float tensor (..., K).
        signs: J >= 1 uint8 tensors (N, ceil(K/8)), block order (stored layout, module docstring).
        offset, step: float16 (N, G) group grids, G = ceil(K / group_size).
        group_size: a multiple of 8.
        bias: optional (N,).
    Returns:
        (..., N) in x's dtype; computed in float32.
    """
    if not signs:
        raise ValueError("planes_linear_lut needs at least one block")
    in_features = x.shape[-1]
    if not supports_lut(in_features, group_size):
        raise ValueError(f"planes_linear_lut needs a group size that is a multiple of 8, got {group_size}")
    out_features, row_bytes = signs[0].shape
    groups = num_groups(in_features, group_size)
    if row_bytes != (in_features + 7) // 8 or tuple(offset.shape) != (out_features, groups) or offset.shape != step.shape:
        raise ValueError(f"signs {tuple(signs[0].shape)}, offset {tuple(offset.shape)} and step {tuple(step.shape)} "
                         f"do not fit a weight of {in_features} input columns in groups of {group_size}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features).to(torch.float32)  # (T, K)
    tokens = x2.shape[0]
    group_bytes = group_size // 8
    tables = _subset_tables(x2, row_bytes)  # (row_bytes·256 + 1, T)
    # byte position of every (row, byte) as a table row base; padding bytes of the last group read row "zero"
    padded_bytes = groups * group_bytes
    base = torch.arange(row_bytes, device=x.device) * 256  # (row_bytes,)
    zero_row = row_bytes * 256
    sums = torch.zeros(out_features * groups, tokens, dtype=torch.float32, device=x.device)
    for level, plane in enumerate(signs):
        index = plane.to(torch.int64) + base  # (N, row_bytes)
        if padded_bytes != row_bytes:
            index = F.pad(index, (0, padded_bytes - row_bytes), value=zero_row)
        bag = F.embedding_bag(index.view(out_features * groups, group_bytes), tables, mode="sum")  # (N·G, T)
        sums.add_(bag, alpha=0.5 ** level)
    group_x = F.pad(x2, (0, padded_bytes * 8 - in_features)).view(tokens, groups, group_size).sum(-1)  # (T, G)
    step32 = step.to(torch.float32)
    scale = 1.0 - 0.5 ** len(signs)  # c_J / 2 = Σ_{i<J} 2^-i / 2
    centre = offset.to(torch.float32) - 2.0 * scale * step32  # C − c_J·step, (N, G)
    y = group_x @ centre.T + 2.0 * torch.einsum("ngt,ng->tn", sums.view(out_features, groups, tokens), step32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.reshape(*lead, out_features).to(x.dtype)
