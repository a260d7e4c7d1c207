"""Choosing the signs of the ``planes`` blocks (:mod:`bitstack.codecs.planes.grid` for the grid).

Rounding to the nearest half of each bin (``feedback=False``) gives round-to-nearest quantization
at every prefix.  With the calibration Hessian H = Σ x xᵀ of the layer's input (``feedback=True``),
block i's signs are chosen column by column as GPTQ chooses its rounding: the error of each column
is spread onto the columns not yet decided through the Cholesky factor of H⁻¹, so the block
minimises the layer's output error ||(W - Ŵ_{i+1}) X||² given the blocks before it.  Every block
targets the original weight, so each prefix's last block compensates the error of all the blocks
before it.  Measured: better at the first block, much worse after three (docs/results.md): a
block fitted for its own prefix leaves residuals the finer blocks cannot reach.

Joint signs (``level_weights``).  One GPTQ state per prefix length j (the weight as updated by the
error feedback of the j-block model), and one decision per column for all levels together: the
first J = len(level_weights) signs of each weight are the code, out of 2^J, that minimises
Σ_j λ_j (w_j - Ŵ_j)², w_j the weight in state j and λ_j = level_weights[j] · 4^(j+1) (each level's
error relative to its bin size).  Every state then spreads its own error over the columns not yet
decided, so each prefix compensates its own rounding, as GPTQ does at one bit width, while all
prefixes share their signs.  Blocks beyond J round to the nearest half of each bin of the original
weight, so a long stack still converges to W wherever the first J blocks left it in reach.

Batched joint signs.  The column loop costs one step per column whatever its size, so
:func:`joint_signs_batched` runs the loops of several weights with the same number of input columns
(q, k, v, o, gate, up of a Llama layer) as one: their rows are stacked, every row reads the
inverse-Hessian factor of its own weight, rows never mix, and each row sees exactly the operations
of :func:`joint_signs`, so the signs are identical.

The search.  Within a block of columns every row is independent: :func:`joint_block_reference`
decides a block row by row, scoring the 2^J codes over the code tree (:func:`_best_codes`: each
level adds its term to the cost of the node above, the terms of the full table summed level by
level in a third of its arithmetic), and the native ``bitstack::joint_signs_block`` does the same
operations in C++ (``bitstack.native.signs``), bit for bit.  Between blocks, the columns after the
block receive the block's errors in one matrix product (GPTQ's lazy batch update).
"""

from __future__ import annotations

import itertools

import torch

# columns decided between two matrix updates of the columns after them (GPTQ's lazy batch)
JOINT_BLOCK_COLUMNS = 128


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
                level_weights: tuple[float, ...], block_columns: int = JOINT_BLOCK_COLUMNS, *,
                block=None) -> torch.Tensor:
    """The first J = len(level_weights) blocks' signs, chosen jointly with one GPTQ state per prefix
    length (module docstring, "Joint signs").

    target, centre, base_step: float32 (out, in), columns in decision order; factor: U of
    :func:`inverse_hessian_factor` in the same order.  ``block``: as in :func:`joint_signs_batched`.
    Returns positive: bool (J, out, in).
    """
    return joint_signs_batched([target], [centre], [base_step], [factor], level_weights, block_columns, block=block)[0]


def _node_coefficients(coefficient: torch.Tensor) -> list[torch.Tensor]:
    """Per level j, the 2^(j+1) distinct values of coefficient[j] in code order (a code's first
    j + 1 signs fix its value after j + 1 blocks): float32 (2^(j+1),) each, bit-equal to the table's."""
    levels = coefficient.shape[0]
    return [coefficient[j, :: 2 ** (levels - 1 - j)].contiguous() for j in range(levels)]


def _best_codes(w: torch.Tensor, centre: torch.Tensor, step: torch.Tensor, coefficient: torch.Tensor,
                nodes: list[torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
    """argmin over codes k of Σ_j lam_j (w_j - (c + s coefficient[j, k]))², int64 (R,), for the
    states w float32 (R, J), centre c and step s float32 (R, 1), lam float32 (J,), coefficient
    float32 (J, 2^J) and its ``nodes`` (:func:`_node_coefficients`).  Ties go to the lowest code.

    On a CPU the sum grows level by level over the code tree (2^(j+1) nodes at level j, node n's
    children 2n and 2n + 1), each code's terms added in level order: a third of the arithmetic of
    the full (J, R, 2^J) table of terms, which other devices sum with ``torch.sum`` in fewer,
    larger operations (each launch costs more than its arithmetic there).  The two sums may round
    differently, so where two codes' costs tie within a rounding they may pick different codes.
    """
    if w.device.type == "cpu":
        return _tree_codes(w, centre, step, nodes, lam)
    return _table_codes(w, centre, step, coefficient, lam)


def _table_codes(w, centre, step, coefficient, lam) -> torch.Tensor:
    """:func:`_best_codes` over the full (J, R, 2^J) table of terms."""
    values = centre[None] + step[None] * coefficient[:, None, :]  # (J, R, 2^J)
    return (lam[:, None, None] * (w.T[:, :, None] - values).square()).sum(0).argmin(1)


def _tree_codes(w, centre, step, nodes, lam) -> torch.Tensor:
    """:func:`_best_codes` over the code tree."""
    cost = None
    for j, node in enumerate(nodes):
        term = lam[j] * (w[:, j, None] - (centre + step * node)).square()  # (R, 2^(j+1))
        cost = term if cost is None else (cost[:, :, None] + term.view(term.shape[0], -1, 2)).flatten(1)
    return cost.argmin(1)


def joint_block_reference(w: torch.Tensor, centre: torch.Tensor, step: torch.Tensor, u: torch.Tensor,
                          owner: torch.Tensor, lam: torch.Tensor, coefficient: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of b columns of the joint-sign loop, every row on its own (the reference of the
    native ``bitstack::joint_signs_block``, same signature).

    w: float32 (R, J, b), the J GPTQ states of each row at the block's start (not modified);
    centre, step: float32 (R, b); u: float32 (P, b, b), the factor's diagonal block of each of P
    weights; owner: int64 (R,), the weight of each row; lam: float32 (J,); coefficient: float32
    (J, 2^J) of :func:`_code_table`.  Returns the scaled errors float32 (R, J, b) (what the
    columns after the block receive through the factor) and the chosen codes int64 (R, b).
    """
    state = w.clone()
    rows, _, columns = state.shape
    nodes = _node_coefficients(coefficient)
    errors = torch.empty_like(state)
    best = torch.empty(rows, columns, dtype=torch.long, device=state.device)
    for i in range(columns):
        c, s = centre[:, i, None], step[:, i, None]  # (R, 1)
        code = _best_codes(state[:, :, i], c, s, coefficient, nodes, lam)
        chosen = c + s * coefficient.T[code]  # (R, J): the values, as in the table
        err = (state[:, :, i] - chosen) / u[owner, i, i][:, None]
        if i + 1 < columns:
            state[:, :, i + 1:] -= err[:, :, None] * u[owner, i, i + 1:][:, None, :]
        errors[:, :, i] = err
        best[:, i] = code
    return errors, best


def joint_signs_batched(targets: list[torch.Tensor], centres: list[torch.Tensor], steps: list[torch.Tensor],
                        factors: list[torch.Tensor], level_weights: tuple[float, ...],
                        block_columns: int = JOINT_BLOCK_COLUMNS, *, block=None) -> list[torch.Tensor]:
    """:func:`joint_signs` of each (target, centre, step, factor) in one loop over the columns
    (module docstring, "Batched joint signs").

    targets, centres, steps: float32 (out_w, in) each, the same ``in``, columns in each weight's
    decision order; factors: float32 (in, in) each.  ``block``: the function that decides one
    block of columns (signature of :func:`joint_block_reference`, the default; the native one is
    ``bitstack.native.signs.joint_signs_block``).  Returns positive bool (J, out_w, in) per weight.
    """
    block = joint_block_reference if block is None else block
    columns = targets[0].shape[1]
    if any(t.shape[1] != columns for t in targets):
        raise ValueError("joint_signs_batched needs weights with the same number of input columns")
    device = targets[0].device
    rows = [t.shape[0] for t in targets]
    owner = torch.repeat_interleave(torch.arange(len(targets), device=device), torch.tensor(rows, device=device))
    bounds = [0]
    for r in rows:
        bounds.append(bounds[-1] + r)
    centre, step = torch.cat(centres), torch.cat(steps)  # (R, in)
    factor = torch.stack(factors)  # (P, in, in)
    joint = len(level_weights)
    lam = torch.tensor([w * 4.0 ** (j + 1) for j, w in enumerate(level_weights)], device=device)  # (J,)
    codes, coefficient = _code_table(joint, device)  # (2^J, J), (J, 2^J)
    work = torch.cat(targets)[:, None, :].repeat(1, joint, 1)  # (R, J, in): one GPTQ state per prefix length
    best = torch.empty(work.shape[0], columns, dtype=torch.long, device=device)
    for first in range(0, columns, block_columns):
        last = min(first + block_columns, columns)
        errors, best[:, first:last] = block(work[:, :, first:last], centre[:, first:last], step[:, first:last],
                                            factor[:, first:last, first:last], owner, lam, coefficient)
        if last < columns:  # the lazy batch update of the columns after the block
            for p in range(len(targets)):
                lo, hi = bounds[p], bounds[p + 1]
                work[lo:hi, :, last:] -= (errors[lo:hi].reshape(-1, last - first) @ factor[p, first:last, last:]
                                          ).view(hi - lo, joint, columns - last)
    positive = codes[best].permute(2, 0, 1)  # (J, R, in)
    return [positive[:, bounds[p]:bounds[p + 1]] for p in range(len(targets))]
