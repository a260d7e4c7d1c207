"""Bit-plane residual blocks with group-wise magnitudes, signs chosen with error feedback.

The ``planes`` codec is BitStack's residual sign decomposition with a different magnitude model.
Every block is still a sign matrix S_i (1 bit per weight) times a magnitude, but the magnitude of
block i is a per-(row, group) constant that halves from one block to the next:

    Ŵ_j = C + Σ_{i<j} S_i ⊙ M_i,     M_i = expand(step) · 2^-i

where, per row r and group g of ``group_size`` consecutive input columns, ``C[r, g]`` is the
centre of the group's range [lo, hi] and ``step[r, g] = (hi - lo) / 4``.  Each prefix of the
blocks is a uniform quantization grid of 2^j levels over the group's range (the centres of 2^j
equal bins), and every grid refines the previous one, so every prefix is a valid model: block j
halves each weight's bin.  ``C`` and ``step`` (float16, (out, G)) belong to the weight, not to a
block; they are loaded with the non-decomposed weights.  A block is its packed signs only:
exactly 1 bit per weight.

Choosing the signs.  Rounding to the nearest half of each bin (``feedback=False``) gives
round-to-nearest quantization at every prefix.  With the calibration Hessian H = Σ x xᵀ of the
layer's input (``feedback=True``), block i's signs are chosen column by column as GPTQ chooses
its rounding: the error of each column is spread onto the columns not yet decided through the
Cholesky factor of H⁻¹, so the block minimises the layer's output error ||(W - Ŵ_{i+1}) X||²
given the blocks before it.  Every block targets the original weight, so each prefix's last block
compensates the error of all the blocks before it.  Measured: better at the first block, much
worse after three (benchmarks/RESULTS.md): a block fitted for its own prefix leaves residuals the
finer blocks cannot reach.

Joint signs (``level_weights``).  One GPTQ state per prefix length j (the weight as updated by the
error feedback of the j-block model), and one decision per column for all levels together: the
first J = len(level_weights) signs of each weight are the code, out of 2^J, that minimises
Σ_j λ_j (w_j - Ŵ_j)², w_j the weight in state j and λ_j = level_weights[j] · 4^(j+1) (each level's
error relative to its bin size).  Every state then spreads its own error over the columns not yet
decided, so each prefix compensates its own rounding, as GPTQ does at one bit width, while all
prefixes share their signs.  Blocks beyond J round to the nearest half of each bin of the original
weight, so a long stack still converges to W wherever the first J blocks left it in reach.

Shapes: weight (out, in) float32; G = ceil(in / group_size) groups, the last one possibly
shorter.  Nothing here does I/O.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from bitstack.core.avd import ResidualBlock
from bitstack.core.packing import pack_signs, signs_to_float

_TINY_STEP = 2.0 ** -24  # the smallest positive float16: a constant group still gets a valid grid


def num_groups(in_features: int, group_size: int) -> int:
    """G = ceil(in / group_size)."""
    return (in_features + group_size - 1) // group_size


def expand_groups(values: torch.Tensor, in_features: int, group_size: int) -> torch.Tensor:
    """Per-group values (any float dtype, (out, G)) -> float32 (out, in), column c taking group c // group_size."""
    return values.to(torch.float32).repeat_interleave(group_size, dim=1)[:, :in_features]


CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _grouped(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """float32 (out, G, group_size) view of ``weight``; the last group is padded with its own first column."""
    out_features, in_features = weight.shape
    groups = num_groups(in_features, group_size)
    pad = groups * group_size - in_features
    if pad:  # a copy of an existing column changes neither min nor max
        weight = torch.cat([weight, weight[:, -group_size:][:, :1].expand(out_features, pad)], dim=1)
    return weight.reshape(out_features, groups, group_size), pad


def _nearest_grid_values(grouped: torch.Tensor, offset: torch.Tensor, step: torch.Tensor, level: int) -> torch.Tensor:
    """Round-to-nearest values after ``level`` blocks, (out, G, g): the centres of 2^level bins of
    [offset - 2 step, offset + 2 step], values outside the range going to the end bins."""
    bins = 2 ** level
    width = 4 * step / bins  # (out, G, 1)
    low = offset - 2 * step
    index = torch.floor((grouped - low) / width).clamp(0, bins - 1)
    return low + (index + 0.5) * width


def plane_grid(weight: torch.Tensor, group_size: int, *, importance: torch.Tensor | None = None,
               ratios: tuple[float, ...] = (1.0,), levels: tuple[int, ...] = (2, 3, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid of each (row, group): centre and first-level magnitude, rounded to float16.

    Args:
        weight: float32 (out, in).
        group_size: columns per group, >= 1.
        importance: float32 (in,) >= 0, the weight of each input column's squared error (e.g. the
            Hessian diagonal), for the clipping search; None = all ones.
        ratios: candidate fractions of the group's range [lo, hi] that the grid spans (around its
            centre).  With several, each (row, group) takes the one whose round-to-nearest values
            after ``levels`` blocks have the least importance-weighted squared error, summed over
            those levels (each relative to the full range's error).  Clipping the few extreme
            weights buys finer bins for all the others; a clipped weight keeps its clipping error
            at every later block, which is why only the first few levels are weighed.
    Returns:
        (offset, step): float16 (out, G) each; offset = (lo + hi) / 2 and step = ratio · (hi - lo) / 4
        (at least the smallest float16), lo/hi the group's min/max.
    """
    grouped, pad = _grouped(weight, group_size)
    lo, hi = grouped.amin(dim=2), grouped.amax(dim=2)  # (out, G)
    offset = ((lo + hi) / 2).to(torch.float16)
    candidates = [((hi - lo) / 4 * ratio).clamp_min(_TINY_STEP).to(torch.float16) for ratio in ratios]
    if len(candidates) == 1:
        return offset, candidates[0]
    columns = torch.ones(weight.shape[1], device=weight.device) if importance is None else importance.to(torch.float32)
    columns = torch.cat([columns, torch.zeros(pad, device=weight.device)]).reshape(1, -1, group_size)  # (1, G, g)
    centre = offset.to(torch.float32)[..., None]
    errors = []
    for step in candidates:
        step32 = step.to(torch.float32)[..., None]
        errors.append(torch.stack([((grouped - _nearest_grid_values(grouped, centre, step32, level)).square() * columns).sum(2)
                                   for level in levels]))  # (levels, out, G)
    reference = errors[0].clamp_min(1e-30)
    scores = torch.stack([(e / reference).sum(0) for e in errors])  # (ratios, out, G)
    best = scores.argmin(dim=0)  # (out, G); ties -> the first (widest) ratio
    step = torch.stack(candidates).gather(0, best[None]).squeeze(0)
    return offset, step


def level_magnitude(step: torch.Tensor, level: int, in_features: int, group_size: int) -> torch.Tensor:
    """M_level = expand(step) · 2^-level, float32 (out, in) (exact: a power-of-two scaling)."""
    return expand_groups(step, in_features, group_size) * (0.5 ** level)


def plane_block_contribution(block: ResidualBlock, level: int, offset: torch.Tensor, step: torch.Tensor,
                             group_size: int) -> torch.Tensor:
    """Block ``level``'s term of :func:`planes_reconstruct` (level 0 includes C), float32 (out, in)."""
    in_features = block.v.shape[1]
    term = signs_to_float(block.signs, in_features) * (expand_groups(step, in_features, group_size) * (0.5 ** level))
    if level == 0:
        term = expand_groups(offset, in_features, group_size) + term
    return term


def planes_reconstruct(blocks: list[ResidualBlock], offset: torch.Tensor, step: torch.Tensor, group_size: int,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ŵ = C + Σ_i S_i ⊙ M_i over the given blocks: the sum of :func:`plane_block_contribution`
    in block order, accumulated in float32.

    blocks: sign-only blocks (uint8 signs (out, ceil(in/8))), in load order.
    offset, step: float16 (out, G).  Returns ``dtype`` (out, in).
    """
    if not blocks:
        raise ValueError("planes_reconstruct needs at least one block")
    total = plane_block_contribution(blocks[0], 0, offset, step, group_size)
    for level in range(1, len(blocks)):
        total = total + plane_block_contribution(blocks[level], level, offset, step, group_size)
    return total.to(dtype)


def sign_only_block(positive: torch.Tensor) -> ResidualBlock:
    """A block that is packed signs only: u float16 (out, 0), v float16 (0, in) are empty."""
    return sign_only_blocks([pack_signs(positive)], positive.shape[1])[0]


def sign_only_blocks(signs, in_features: int) -> tuple[ResidualBlock, ...]:
    """Sign-only blocks over the given packed signs (each uint8 (out, ceil(in/8)), used as they are,
    e.g. views of a stacked tensor), sharing one empty float16 u (out, 0) and v (0, in)."""
    first = signs[0]
    empty = {"dtype": torch.float16, "device": first.device}
    u, v = torch.zeros(first.shape[0], 0, **empty), torch.zeros(0, in_features, **empty)
    return tuple(ResidualBlock(signs=s, u=u, v=v) for s in signs)


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


def _feedback_signs(target: torch.Tensor, current: torch.Tensor, magnitude: torch.Tensor, factor: torch.Tensor,
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


def _joint_signs(target: torch.Tensor, centre: torch.Tensor, base_step: torch.Tensor, factor: torch.Tensor,
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


def output_error(residual: torch.Tensor, hessian: torch.Tensor | None) -> float:
    """tr(R H Rᵀ) (the summed squared output error on the calibration inputs), or ||R||_F² without H."""
    if hessian is None:
        return float(residual.square().sum())
    return float(((residual @ hessian) * residual).sum())


@dataclass(frozen=True)
class PlaneDecomposition:
    """Result of :func:`plane_decompose`.

    offset, step: float16 (out, G).  blocks: ``niter`` sign-only blocks, in load order.
    residual_sq: ``niter + 1`` floats; [0] is the weight's own energy tr(W H Wᵀ) (||W||² without
    H), [i] the energy of W - Ŵ_i after i blocks.
    """

    offset: torch.Tensor
    step: torch.Tensor
    blocks: list[ResidualBlock]
    residual_sq: list[float]


def plane_decompose(weight: torch.Tensor, niter: int, group_size: int, *, hessian: torch.Tensor | None = None,
                    feedback: bool = False, level_weights: tuple[float, ...] | None = None,
                    damp: float = 0.01, act_order: bool = True,
                    clip_ratios: tuple[float, ...] = (1.0,), joint_signs: torch.Tensor | None = None) -> PlaneDecomposition:
    """Decompose ``weight`` into ``niter`` bit-plane blocks (see the module docstring).

    Args:
        weight: float32 (out, in), already multiplied by the activation scale if any.
        niter: number of blocks, >= 1.
        group_size: input columns per magnitude group, >= 1.
        hessian: float32 (in, in), Σ x xᵀ of the inputs *in the scaled space* (the inputs divided
            by the scale), or None.  It weights the energies ``residual_sq`` (the output error),
            and with ``feedback`` it drives the sign choice.
        feedback: choose signs with GPTQ-style error feedback (needs ``hessian``) instead of
            rounding to the nearest half of each bin.
        level_weights: choose signs jointly for all prefixes (needs ``hessian``; module docstring,
            "Joint signs"): the relative weight of each prefix length 1, 2, … in the choice of the
            first len(level_weights) signs, each >= 0 and not all 0.  Exclusive with ``feedback``.
        damp: GPTQ damping, a fraction of the mean diagonal of H.
        act_order: decide the columns in order of decreasing H diagonal (the grid is fixed in
            advance, so the order changes only the error feedback).
        clip_ratios: candidate grid spans for :func:`plane_grid`'s clipping search, weighted by
            the diagonal of ``hessian`` (all ones without it).
        joint_signs: with ``level_weights``, the joint signs already chosen (bool (J, out, in), e.g.
            by :func:`bitstack.core.planes_batched.joint_signs_for` with the same arguments).
    """
    if weight.dim() != 2 or weight.dtype != torch.float32:
        raise ValueError(f"plane_decompose expects a float32 matrix, got {weight.dtype} of shape {tuple(weight.shape)}")
    if niter < 1 or group_size < 1:
        raise ValueError(f"niter and group_size must be >= 1, got {niter} and {group_size}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight has NaN or infinite entries")
    out_features, in_features = weight.shape
    if hessian is not None and tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(f"hessian must be ({in_features}, {in_features}), got {tuple(hessian.shape)}")
    offset, step = plane_grid(weight, group_size, ratios=clip_ratios,
                              importance=None if hessian is None else hessian.diagonal().clamp_min(0))
    base_step = expand_groups(step, in_features, group_size)  # (out, in)
    current = expand_groups(offset, in_features, group_size)  # Ŵ_0 = C
    energy_h = hessian.to(torch.float32) if hessian is not None else None
    residual_sq = [output_error(weight, energy_h)]
    if (feedback or level_weights is not None) and hessian is None:
        raise ValueError("feedback and level_weights need the calibration hessian")
    if feedback and level_weights is not None:
        raise ValueError("choose one of feedback and level_weights")
    if level_weights is not None and (not level_weights or any(not 0 <= w < float("inf") for w in level_weights)
                                      or not any(level_weights)):
        raise ValueError(f"level_weights must be finite numbers >= 0, not all 0, got {level_weights!r}")
    if level_weights is not None and not any(level_weights[:niter]):
        raise ValueError(f"level_weights {tuple(level_weights)!r} give no weight to the first {niter} blocks")
    order = inverse = None
    factor = None
    if feedback or (level_weights is not None and joint_signs is None):
        h = hessian.to(torch.float32)
        if act_order:
            order = torch.argsort(h.diagonal(), descending=True)
            inverse = torch.argsort(order)
            h = h[order][:, order]
        factor = inverse_hessian_factor(h, damp)
    joint = joint_signs
    if level_weights is not None and joint is None:
        cols = order if order is not None else slice(None)
        joint = _joint_signs(weight[:, cols], current[:, cols], base_step[:, cols], factor,
                             tuple(level_weights)[:niter])
        if inverse is not None:
            joint = joint[:, :, inverse]
    blocks: list[ResidualBlock] = []
    for level in range(niter):
        magnitude = base_step * (0.5 ** level)
        if joint is not None and level < joint.shape[0]:
            positive = joint[level]
        elif feedback:
            cols = order if order is not None else slice(None)
            positive, _ = _feedback_signs(weight[:, cols], current[:, cols], magnitude[:, cols], factor)
            if inverse is not None:
                positive = positive[:, inverse]
        else:  # nearest (also the blocks after the joint ones)
            positive = weight >= current
        # the same float32 ops as planes_reconstruct, so the energies are those of the stored model
        current = current + torch.where(positive, magnitude, -magnitude)
        blocks.append(sign_only_block(positive))
        residual_sq.append(output_error(weight - current, energy_h))
    return PlaneDecomposition(offset=offset, step=step, blocks=blocks, residual_sq=residual_sq)


def nearest_energies(weight: torch.Tensor, group_size: int, levels: int, hessian: torch.Tensor | None) -> list[float]:
    """Output errors tr(R_j H R_jᵀ) of the round-to-nearest prefixes j = 1 … ``levels`` (no blocks kept).

    weight: float32 (out, in) in the scaled space; hessian: float32 (in, in) of the scaled inputs.
    """
    offset, step = plane_grid(weight, group_size)
    current = expand_groups(offset, weight.shape[1], group_size)
    base_step = expand_groups(step, weight.shape[1], group_size)
    energies = []
    for level in range(levels):
        magnitude = base_step * (0.5 ** level)
        current = current + torch.where(weight >= current, magnitude, -magnitude)
        energies.append(output_error(weight - current, hessian))
    return energies


def search_scale_power(weights: list[torch.Tensor], hessians: list[torch.Tensor], scale: torch.Tensor,
                       powers: tuple[float, ...], group_size: int, levels: tuple[int, ...] = (2, 3, 4),
                       max_rows: int = 256) -> float:
    """The exponent p of the activation scale s that minimises the summed output error.

    Every weight W (float32 (out, in), unscaled) that reads the same input (one shared scale s,
    float32 (in,), mean 1) is decomposed as W·diag(s^p) with round-to-nearest planes; the error
    tr(R H_p Rᵀ), H_p = diag(s^-p) H diag(s^-p) (the Hessian of the scaled inputs), is summed over
    the weights and over the prefixes of ``levels`` blocks, each prefix weighted equally in
    relative terms (divided by the error of the first power).  Ties go to the first power.  Only
    ``max_rows`` evenly spaced rows of each weight are used (the error is a sum over rows).
    """
    top = max(levels)
    # the error is a sum over rows: an evenly spaced subset of rows estimates it at a fraction of the cost
    weights = [w[torch.linspace(0, w.shape[0] - 1, min(w.shape[0], max_rows), device=w.device).long()] for w in weights]
    totals: list[float] = []
    reference: list[list[float]] | None = None
    for power in powers:
        s = scale ** power
        errors = [nearest_energies(w * s[None, :], group_size, top, h / s[:, None] / s[None, :])
                  for w, h in zip(weights, hessians)]
        if reference is None:
            reference = errors
        total = 0.0
        for err, ref in zip(errors, reference):
            total += sum(err[j - 1] / max(ref[j - 1], 1e-30) for j in levels)
        totals.append(total)
    return powers[min(range(len(powers)), key=totals.__getitem__)]
