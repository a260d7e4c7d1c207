"""Decomposing one weight into ``planes`` blocks (the grid: :mod:`.grid`; the signs: :mod:`.signs`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitstack.codecs.base import Block
from bitstack.codecs.planes.grid import expand_groups, plane_grid, sign_only_block
from bitstack.codecs.planes.signs import feedback_signs, inverse_hessian_factor, joint_signs, joint_signs_batched
from bitstack.native.signs import joint_signs_block


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
    blocks: list[Block]
    residual_sq: list[float]


def plane_decompose(weight: torch.Tensor, niter: int, group_size: int, *, hessian: torch.Tensor | None = None,
                    feedback: bool = False, level_weights: tuple[float, ...] | None = None,
                    damp: float = 0.01, act_order: bool = True,
                    clip_ratios: tuple[float, ...] = (1.0,),
                    joint: torch.Tensor | None = None,
                    grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> PlaneDecomposition:
    """Decompose ``weight`` into ``niter`` bit-plane blocks (:mod:`.grid`; signs: :mod:`.signs`).

    Args:
        weight: float32 (out, in), already multiplied by the activation scale if any.
        niter: number of blocks, >= 1.
        group_size: input columns per magnitude group, >= 1.
        hessian: float32 (in, in), Σ x xᵀ of the inputs *in the scaled space* (the inputs divided
            by the scale), or None.  It weights the energies ``residual_sq`` (the output error),
            and with ``feedback`` it drives the sign choice.
        feedback: choose signs with GPTQ-style error feedback (needs ``hessian``) instead of
            rounding to the nearest half of each bin.
        level_weights: choose signs jointly for all prefixes (needs ``hessian``; :mod:`.signs`,
            "Joint signs"): the relative weight of each prefix length 1, 2, … in the choice of the
            first len(level_weights) signs, each >= 0 and not all 0.  Exclusive with ``feedback``.
        damp: GPTQ damping, a fraction of the mean diagonal of H.
        act_order: decide the columns in order of decreasing H diagonal (the grid is fixed in
            advance, so the order changes only the error feedback).
        clip_ratios: candidate grid spans for :func:`plane_grid`'s clipping search, weighted by
            the diagonal of ``hessian`` (all ones without it).
        joint: with ``level_weights``, the joint signs already chosen with the same arguments
            (bool (J, out, in), natural column order; :func:`joint_signs_for`), else None.
        grid: :func:`weight_grid` of the same arguments, computed beforehand, else None.
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
    offset, step = grid if grid is not None else weight_grid(weight, group_size, hessian, clip_ratios)
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
    if joint is not None and level_weights is not None and \
            tuple(joint.shape) != (len(tuple(level_weights)[:niter]), out_features, in_features):
        raise ValueError(f"joint signs of shape {tuple(joint.shape)} do not fit the weight and level_weights")
    order = inverse = None
    factor = None
    if feedback or (level_weights is not None and joint is None):
        h = hessian.to(torch.float32)
        if act_order:
            order = torch.argsort(h.diagonal(), descending=True)
            inverse = torch.argsort(order)
            h = h[order][:, order]
        factor = inverse_hessian_factor(h, damp)
    if level_weights is None:
        joint = None
    elif joint is None:
        cols = order if order is not None else slice(None)
        joint = joint_signs(weight[:, cols], current[:, cols], base_step[:, cols], factor,
                            tuple(level_weights)[:niter], block=joint_signs_block)
        if inverse is not None:
            joint = joint[:, :, inverse]
    blocks: list[Block] = []
    for level in range(niter):
        magnitude = base_step * (0.5 ** level)
        if joint is not None and level < joint.shape[0]:
            positive = joint[level]
        elif feedback:
            cols = order if order is not None else slice(None)
            positive, _ = feedback_signs(weight[:, cols], current[:, cols], magnitude[:, cols], factor)
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


def weight_grid(weight: torch.Tensor, group_size: int, hessian: torch.Tensor | None,
                clip_ratios: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid :func:`plane_decompose` decomposes ``weight`` on: :func:`~.grid.plane_grid` with
    the clipping search weighted by the diagonal of ``hessian`` (all ones without it)."""
    return plane_grid(weight, group_size, ratios=clip_ratios,
                      importance=None if hessian is None else hessian.diagonal().clamp_min(0))


def joint_signs_for(weights: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor], niter: int, group_size: int,
                    level_weights: tuple[float, ...], *, damp: float = 0.01, act_order: bool = True,
                    clip_ratios: tuple[float, ...] = (1.0,),
                    grids: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """The joint signs :func:`plane_decompose` would choose for each weight (same grid, order and
    factor), with one column loop per input width (:func:`~.signs.joint_signs_batched`).

    weights: name -> float32 (out, in) in the scaled space; hessians: name -> float32 (in, in);
    grids: name -> :func:`weight_grid` of the same arguments, if already computed.  Returns name -> positive bool (J, out, in), J = len(level_weights[:niter]), natural column order.
    """
    prepared: dict[int, list] = {}
    for name, weight in weights.items():
        hessian = hessians[name]
        in_features = weight.shape[1]
        offset, step = grids[name] if grids is not None else weight_grid(weight, group_size, hessian, clip_ratios)
        base_step = expand_groups(step, in_features, group_size)
        centre = expand_groups(offset, in_features, group_size)
        h = hessian.to(torch.float32)
        order = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(in_features, device=h.device)
        h = h[order][:, order]
        factor = inverse_hessian_factor(h, damp)
        prepared.setdefault(in_features, []).append((name, order, weight[:, order], centre[:, order],
                                                     base_step[:, order], factor))
    out: dict[str, torch.Tensor] = {}
    for group in prepared.values():
        signs = joint_signs_batched([g[2] for g in group], [g[3] for g in group], [g[4] for g in group],
                                    [g[5] for g in group], tuple(level_weights)[:niter], block=joint_signs_block)
        for (name, order, *_), s in zip(group, signs):
            out[name] = s[:, :, torch.argsort(order)]
    return out
