"""Choosing the signs of the ``planes`` blocks (:mod:`bitstack.codecs.planes.grid` for the grid).

Rounding to the nearest half of each bin (``feedback=False``) gives round-to-nearest quantization
at every prefix.  With the calibration Hessian H = Σ x xᵀ of the layer's input (``feedback=True``),
block i's signs are chosen column by column as GPTQ chooses its rounding: the error of each column
is spread onto the columns not yet decided through the Cholesky factor of H⁻¹, so the block
minimises the layer's output error ||(W - Ŵ_{i+1}) X||² given the blocks before it.  Every block
targets the original weight, so each prefix's last block compensates the error of all the blocks
before it.  Measured: better at the first block, much worse after three (benchmarks/RESULTS.md): a
block fitted for its own prefix leaves residuals the finer blocks cannot reach.

Joint signs (``level_weights``).  One GPTQ state per prefix length j (the weight as updated by the
error feedback of the j-block model), and one decision per column for all levels together: the
first J = len(level_weights) signs of each weight are the code, out of 2^J, that minimises
Σ_j λ_j (w_j - Ŵ_j)², w_j the weight in state j and λ_j = level_weights[j] · 4^(j+1) (each level's
error relative to its bin size).  Every state then spreads its own error over the columns not yet
decided, so each prefix compensates its own rounding, as GPTQ does at one bit width, while all
prefixes share their signs.  Blocks beyond J round to the nearest half of each bin of the original
weight, so a long stack still converges to W wherever the first J blocks left it in reach.
"""

from __future__ import annotations

import itertools

import torch


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ (U with UᵀU = (H + λI)⁻¹), float32 (in, in).

    λ = ``damp`` × mean(diag H).  A dead input channel (zero diagonal) gets a unit diagonal.
    If the factorisation fails, λ grows tenfold (up to 4 times).
    """
    h = hessian.to(torch.float32).clone()
    diag = h.diagonal()
    dead = diag <= 0
    diag[dead] = 1.0
    mean = float(diag.mean())
    for attempt in range(5):
        damped = h + torch.eye(h.shape[0], device=h.device) * (damp * (10 ** attempt) * mean)
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
    raise ValueError("the calibration Hessian is not positive definite even with 10000x damping")


def feedback_signs(target: torch.Tensor, current: torch.Tensor, magnitude: torch.Tensor, factor: torch.Tensor,
                    block_columns: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's signs with GPTQ-style error feedback.

    Column by column (in the given order), sign = +1 where the (updated) target is at least the
    current approximation; the column's error, divided by U[j, j], is subtracted from the columns
    after it in proportion to U[j, :] (lazy batch updates every ``block_columns`` columns).

    target, current, magnitude: float32 (out, in).  factor: U, float32 (in, in).
    Returns (positive: bool (out, in), new approximation float32 (out, in) = current ± magnitude).
    """
    work = target.clone()
    positive = torch.empty_like(target, dtype=torch.bool)
    updated = torch.empty_like(current)
    columns = target.shape[1]
    for first in range(0, columns, block_columns):
        last = min(first + block_columns, columns)
        w_block = work[:, first:last].clone()  # (out, b)
        errors = torch.empty_like(w_block)
        u_block = factor[first:last, first:last]
        for i in range(last - first):
            column = first + i
            w = w_block[:, i]
            q0 = current[:, column]
            m = magnitude[:, column]
            p = w >= q0
            q = torch.where(p, q0 + m, q0 - m)
            positive[:, column] = p
            updated[:, column] = q
            err = (w - q) / u_block[i, i]
            w_block[:, i:] -= err[:, None] * u_block[i, i:][None, :]
            errors[:, i] = err
        work[:, last:] -= errors @ factor[first:last, last:]
    return positive, updated


def _code_table(levels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All 2^levels sign codes: (positive bool (2^L, L), prefix coefficients float32 (L, 2^L)).

    coefficient[j, code] = Σ_{i<=j} s_i 2^-i, so the value after j + 1 blocks is C + step · coefficient[j].
    """
    signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=levels)), device=device)  # (2^L, L)
    coefficient = torch.cumsum(signs * (0.5 ** torch.arange(levels, device=device))[None, :], dim=1).T
    return signs > 0, coefficient


def joint_signs(target: torch.Tensor, centre: torch.Tensor, base_step: torch.Tensor, factor: torch.Tensor,
                 level_weights: tuple[float, ...], block_columns: int = 128) -> torch.Tensor:
    """The first J = len(level_weights) blocks' signs, chosen jointly with one GPTQ state per prefix
    length (module docstring, "Joint signs").

    target, centre, base_step: float32 (out, in), columns in decision order; factor: U of
    :func:`inverse_hessian_factor` in the same order.  Returns positive: bool (J, out, in).
    """
    out_features, columns = target.shape
    joint = len(level_weights)
    positive_codes, coefficient = _code_table(joint, target.device)  # (2^J, J), (J, 2^J)
    lam = torch.tensor([w * 4.0 ** (j + 1) for j, w in enumerate(level_weights)],
                       device=target.device)[:, None, None]  # (J, 1, 1)
    work = target[None].repeat(joint, 1, 1)  # (J, out, in): one GPTQ state per prefix length
    positive = torch.empty(joint, out_features, columns, dtype=torch.bool, device=target.device)
    for first in range(0, columns, block_columns):
        last = min(first + block_columns, columns)
        w_block = work[:, :, first:last].clone()  # (J, out, b)
        errors = torch.empty_like(w_block)
        for i in range(last - first):
            column = first + i
            w = w_block[:, :, i]  # (J, out)
            values = centre[None, :, column, None] + base_step[None, :, column, None] * coefficient[:, None, :]  # (J, out, 2^J)
            best = (lam * (w[:, :, None] - values).square()).sum(0).argmin(1)  # (out,)
            positive[:, :, column] = positive_codes[best].T
            chosen = values.gather(2, best[None, :, None].expand(joint, out_features, 1)).squeeze(2)  # (J, out)
            err = (w - chosen) / factor[column, column]
            w_block[:, :, i:] -= err[:, :, None] * factor[column, column:last][None, None, :]
            errors[:, :, i] = err
        work[:, :, last:] -= torch.einsum("lob,bn->lon", errors, factor[first:last, last:])
    return positive
