"""Joint signs (:mod:`bitstack.core.planes`, "Joint signs") of several weights in one column loop.

The joint-sign choice walks the columns of a weight one at a time (GPTQ's order), so on a GPU its
cost is the number of column steps, not their size.  Weights with the same number of input
columns (q, k, v, o and gate, up in a Llama layer: one loop instead of six) are stacked by rows:
every step treats all their rows at once, each row reading the inverse-Hessian factor of its own
weight.  The rows of a weight never mix with another's, and each is computed with exactly the
operations of :func:`bitstack.core.planes._joint_signs`, so the signs are identical.

Shapes: weights float32 (out_w, in), Hessians float32 (in, in); signs bool (J, out_w, in).
"""

from __future__ import annotations

import torch

from bitstack.core.planes import _code_table, expand_groups, inverse_hessian_factor, plane_grid


def joint_signs_batched(targets: list[torch.Tensor], centres: list[torch.Tensor], steps: list[torch.Tensor],
                        factors: list[torch.Tensor], level_weights: tuple[float, ...],
                        block_columns: int = 128) -> list[torch.Tensor]:
    """``_joint_signs`` of each (target, centre, step, factor) — all float32, target/centre/step
    (out_w, in) with columns in the weight's decision order, factor (in, in) — in one loop over the
    ``in`` columns.  Returns positive bool (J, out_w, in) per weight, in the given column order."""
    columns = targets[0].shape[1]
    if any(t.shape[1] != columns for t in targets):
        raise ValueError("joint_signs_batched needs weights with the same number of input columns")
    device = targets[0].device
    rows = [t.shape[0] for t in targets]
    owner = torch.repeat_interleave(torch.arange(len(targets), device=device), torch.tensor(rows, device=device))
    bounds = [0]
    for r in rows:
        bounds.append(bounds[-1] + r)
    target, centre, step = torch.cat(targets), torch.cat(centres), torch.cat(steps)  # (R, in)
    factor = torch.stack(factors)  # (P, in, in)
    joint = len(level_weights)
    positive_codes, coefficient = _code_table(joint, device)
    lam = torch.tensor([w * 4.0 ** (j + 1) for j, w in enumerate(level_weights)], device=device)[:, None, None]
    work = target[None].repeat(joint, 1, 1)  # (J, R, in)
    positive = torch.empty(joint, target.shape[0], columns, dtype=torch.bool, device=device)
    total = target.shape[0]
    for first in range(0, columns, block_columns):
        last = min(first + block_columns, columns)
        w_block = work[:, :, first:last].clone()
        errors = torch.empty_like(w_block)
        for i in range(last - first):
            column = first + i
            w = w_block[:, :, i]  # (J, R)
            values = centre[None, :, column, None] + step[None, :, column, None] * coefficient[:, None, :]
            best = (lam * (w[:, :, None] - values).square()).sum(0).argmin(1)
            positive[:, :, column] = positive_codes[best].T
            chosen = values.gather(2, best[None, :, None].expand(joint, total, 1)).squeeze(2)
            err = (w - chosen) / factor[:, column, column][owner][None, :]
            w_block[:, :, i:] -= err[:, :, None] * factor[:, column, column:last][owner][None, :, :]
            errors[:, :, i] = err
        for p in range(len(targets)):
            lo, hi = bounds[p], bounds[p + 1]
            work[:, lo:hi, last:] -= torch.einsum("lob,bn->lon", errors[:, lo:hi], factor[p, first:last, last:])
    return [positive[:, bounds[p]:bounds[p + 1]] for p in range(len(targets))]


def joint_signs_for(weights: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor], niter: int, group_size: int,
                    level_weights: tuple[float, ...], *, damp: float = 0.01, act_order: bool = True,
                    clip_ratios: tuple[float, ...] = (1.0,)) -> dict[str, torch.Tensor]:
    """The joint signs that :func:`~bitstack.core.planes.plane_decompose` would choose for each
    weight (same grid, order and factor), computed with one column loop per input width.

    weights: name -> float32 (out, in) in the scaled space; hessians: name -> float32 (in, in).
    Returns name -> positive bool (J, out, in), J = len(level_weights[:niter]), natural column order.
    """
    prepared: dict[int, list] = {}
    for name, weight in weights.items():
        hessian = hessians[name]
        in_features = weight.shape[1]
        offset, step = plane_grid(weight, group_size, ratios=clip_ratios, importance=hessian.diagonal().clamp_min(0))
        base_step = expand_groups(step, in_features, group_size)
        centre = expand_groups(offset, in_features, group_size)
        h = hessian.to(torch.float32)
        order = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(in_features, device=h.device)
        h = h[order][:, order]
        factor = inverse_hessian_factor(h, damp)
        prepared.setdefault(in_features, []).append((name, order, weight[:, order], centre[:, order], base_step[:, order], factor))
    out: dict[str, torch.Tensor] = {}
    for group in prepared.values():
        signs = joint_signs_batched([g[2] for g in group], [g[3] for g in group], [g[4] for g in group],
                                    [g[5] for g in group], tuple(level_weights)[:niter])
        for (name, order, *_), s in zip(group, signs):
            out[name] = s[:, :, torch.argsort(order)]
    return out
