"""Iterated absolute-value decomposition (AVD) of one weight matrix.

Each iteration splits the current residual R into its sign matrix and a rank-k model of its
magnitude:  S = sign(R) (0 -> +1),  |R| ≈ U_k Σ_k V_kᵀ,  u = U_k √Σ_k,  v = √Σ_k V_kᵀ,  then
R <- R - S ⊙ (u v).  One iteration is one block (a :class:`~bitstack.codecs.base.Block` of parts
``u``, ``v``, ``signs``, in that on-disk order).  The factors are rounded to float16 *before* the
residual update, so what is stored is exactly what inference rebuilds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitstack.codecs.avd.lowrank import truncated_svd
from bitstack.codecs.base import Block
from bitstack.core.packing import pack_signs, signs_to_float


def block_dense(block: Block, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A stored block's dense contribution S ⊙ (u v), shape (out, in) (computed in float32).

    block: signs uint8 (out, ceil(in / 8)) packed as in :mod:`bitstack.core.packing`, u float16
    (out, r), v float16 (r, in).
    """
    cols = block.v.shape[1]
    magnitude = block.u.to(torch.float32) @ block.v.to(torch.float32)  # (out, in)
    return (signs_to_float(block.signs, cols) * magnitude).to(dtype)


def reconstruct(blocks: list[Block], dtype: torch.dtype = torch.float32, *, chunk: int = 4) -> torch.Tensor:
    """Sum of the blocks' dense contributions, accumulated in float32, shape (out, in).

    Blocks are processed ``chunk`` at a time: one batched matmul for the magnitudes and one
    table lookup for the signs, so the transient memory is about ``chunk`` dense float32 copies.
    """
    if not blocks:
        raise ValueError("reconstruct needs at least one block")
    cols = blocks[0].v.shape[1]
    total = None
    for start in range(0, len(blocks), chunk):
        part = blocks[start : start + chunk]
        u = torch.stack([b.u for b in part]).to(torch.float32)  # (c, out, r)
        v = torch.stack([b.v for b in part]).to(torch.float32)  # (c, r, in)
        signs = signs_to_float(torch.stack([b.signs for b in part]), cols)  # (c, out, in)
        contribution = (signs * torch.bmm(u, v)).sum(dim=0)  # (out, in)
        total = contribution if total is None else total + contribution
    return total.to(dtype)


@dataclass(frozen=True)
class AvdDecomposition:
    """Result of :func:`avd_decompose`.

    blocks: ``niter`` blocks in load order.
    residual_sq: ``niter + 1`` floats, ``residual_sq[i]`` = ||R_i||_F² after i blocks
    (``residual_sq[0]`` = ||W||_F²), measured on the float16-rounded factors.
    """

    blocks: list[Block]
    residual_sq: list[float]


def avd_decompose(
    weight: torch.Tensor,
    niter: int,
    rank: int,
    *,
    oversample: int = 8,
    power_iters: int = 4,
    seed: int = 0,
) -> AvdDecomposition:
    """Decompose ``weight`` into ``niter`` residual blocks of rank ``rank``.

    Args:
        weight: float32, shape (out, in) — already multiplied by the activation scale if any.
        niter: number of blocks (iterations), >= 1.
        rank: rank of each block's magnitude model, 1 <= rank <= min(out, in).
        oversample, power_iters: truncated-SVD settings (:func:`truncated_svd`).
        seed: seeds the truncated SVD; the result is a pure function of the inputs.
    """
    if weight.dim() != 2 or weight.dtype != torch.float32:
        raise ValueError(f"avd_decompose expects a float32 matrix, got {weight.dtype} of shape {tuple(weight.shape)}")
    if niter < 1:
        raise ValueError(f"niter must be >= 1, got {niter}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight has NaN or infinite entries")
    generator = torch.Generator(device=weight.device).manual_seed(seed)
    residual = weight.clone()
    residual_sq = [float(residual.square().sum())]
    blocks: list[Block] = []
    for _ in range(niter):
        positive = residual >= 0  # (out, in), sign 0 -> +1
        u_full, sigma, vh = truncated_svd(
            residual.abs(), rank, oversample=oversample, power_iters=power_iters, generator=generator
        )
        root = sigma.sqrt()
        u = (u_full * root).to(torch.float16)  # (out, r)
        v = (root[:, None] * vh).to(torch.float16)  # (r, in)
        magnitude = u.to(torch.float32) @ v.to(torch.float32)  # (out, in)
        residual -= torch.where(positive, magnitude, -magnitude)
        blocks.append(Block(u=u, v=v, signs=pack_signs(positive)))
        residual_sq.append(float(residual.square().sum()))
    return AvdDecomposition(blocks=blocks, residual_sq=residual_sq)
