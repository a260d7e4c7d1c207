"""The grids of the ``planes`` codec: per (row, group) a centre and a first-level magnitude.

The ``planes`` codec is BitStack's residual sign decomposition with a different magnitude model.
Every block is still a sign matrix S_i (1 bit per weight) times a magnitude, but the magnitude of
block i is a per-(row, group) constant that halves from one block to the next:

    Ŵ_j = C + Σ_{i<j} S_i ⊙ M_i,     M_i = expand(step) · 2^-i

where, per row r and group g of ``group_size`` consecutive input columns, ``C[r, g]`` is the
centre of the group's range [lo, hi] and ``step[r, g] = (hi - lo) / 4``.  Each prefix of the
blocks is a uniform quantization grid of 2^j levels over the group's range (the centres of 2^j
equal bins), and every grid refines the previous one, so every prefix is a valid model: block j
halves each weight's bin.  ``C`` and ``step`` (float16, (out, G)) belong to the weight, not to a
block; they are loaded with the non-decomposed weights (base buffers ``plane_offset`` and
``plane_step``).  A block is its packed signs: exactly 1 bit per weight (its stored parts ``u``
float16 (out, 0) and ``v`` float16 (0, in) are empty; they keep the shards of every format version
byte-identical).

Shapes: weight (out, in) float32; G = ceil(in / group_size) groups, the last one possibly
shorter.  Nothing here does I/O.
"""

from __future__ import annotations

import torch

from bitstack.codecs.base import Block
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


def plane_block_contribution(block: Block, level: int, offset: torch.Tensor, step: torch.Tensor,
                             group_size: int) -> torch.Tensor:
    """Block ``level``'s term of :func:`planes_reconstruct` (level 0 includes C), float32 (out, in)."""
    in_features = block.v.shape[1]
    term = signs_to_float(block.signs, in_features) * (expand_groups(step, in_features, group_size) * (0.5 ** level))
    if level == 0:
        term = expand_groups(offset, in_features, group_size) + term
    return term


def prefix_grid(offset: torch.Tensor, step: torch.Tensor, group_size: int, blocks: int, in_features: int,
                block: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """A prefix of ``blocks`` planes as the grid m + d·q per run of ``block`` inputs, or None.

    Ŵ_j = C + step · Σ_{i<j} s_i 2^-i with s_i = 2k_i - 1 (k_i the sign bits) is
    m + d·q with d = step · 2^(2-j), m = C - step · (2 - 2^(1-j)) and q = Σ_i k_i 2^(j-1-i), an
    integer in [0, 2^j).  One (d, m) per run needs the runs inside groups: ``group_size`` and
    ``in_features`` multiples of ``block``.  offset, step: (out, G); returns d, m float32
    (out, in / block) and j.
    """
    if blocks < 1 or group_size % block or in_features % block:
        return None
    runs = in_features // block
    step = step.to(torch.float32).repeat_interleave(group_size // block, dim=1)[:, :runs]
    offset = offset.to(torch.float32).repeat_interleave(group_size // block, dim=1)[:, :runs]
    return step * 2.0 ** (2 - blocks), offset - step * (2 - 2.0 ** (1 - blocks)), blocks


def planes_reconstruct(blocks: list[Block], offset: torch.Tensor, step: torch.Tensor, group_size: int,
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


def sign_only_block(positive: torch.Tensor) -> Block:
    """The block of a bool sign matrix (out, in) (True = +1): packed signs, u float16 (out, 0) and v
    float16 (0, in) empty."""
    return sign_only_blocks([pack_signs(positive)], positive.shape[1])[0]


def sign_only_blocks(signs, in_features: int) -> tuple[Block, ...]:
    """Sign-only blocks over the given packed signs (each uint8 (out, ceil(in/8)), used as they are,
    e.g. views of a stacked tensor), sharing one empty float16 u (out, 0) and v (0, in)."""
    first = signs[0]
    empty = {"dtype": torch.float16, "device": first.device}
    u, v = torch.zeros(first.shape[0], 0, **empty), torch.zeros(0, in_features, **empty)
    return tuple(Block(u=u, v=v, signs=s) for s in signs)
