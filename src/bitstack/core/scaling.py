"""Activation-aware input-channel scales (the BitStack paper's, Sec. 3.1).

For a linear layer with input activations X_i (tokens × in) of calibration sample i, the scale
of input channel j is  s_j = mean_i ||X_i[:, j]||_2.  The weight is decomposed as W·diag(s); the
inverse 1/s is folded into the op that produces the input (see
:mod:`bitstack.models.folding`) or applied to the input at run time.

The statistics are accumulated online, one batch at a time, so no activations are kept.
"""

from __future__ import annotations

import torch


def channel_norm_sum(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-sample L2 norms of each input channel, summed over the samples of a batch.

    Args:
        x: activations, any float dtype, shape (batch, tokens, in) — one row of ``batch`` per
           calibration sample — or (tokens, in) for a single sample.
    Returns:
        (sums, count): float32 (in,) = Σ_i ||x[i, :, j]||_2, and the number of samples.
    """
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"expected activations of shape (batch, tokens, in), got {tuple(x.shape)}")
    norms = torch.linalg.vector_norm(x.to(torch.float32), dim=1)  # (batch, in)
    return norms.sum(dim=0), x.shape[0]


def activation_scale(norm_sum: torch.Tensor, count: int, *, floor: float = 1e-3, power: float = 1.0) -> torch.Tensor:
    """The scale s from accumulated statistics, normalised to mean 1.

    Args:
        norm_sum: float32 (in,), Σ over samples of per-channel L2 norms.
        count: number of samples summed.
        floor: channels are clamped to at least ``floor`` × mean, so that dead channels do not
            produce an infinite 1/s.  Normalising to mean 1 keeps the scaled weight and the folded
            norm weights in a range float16 holds; AVD itself is invariant to a global factor.
        power: the scale is raised to this exponent after the floor (1: the paper's scale; 0: no
            scaling, all ones; values in between soften it, as AWQ's searched exponent does).
    Returns:
        float32 (in,), all entries > 0.
    """
    if count < 1:
        raise ValueError("activation_scale needs statistics from at least one sample")
    s = norm_sum.to(torch.float32) / count
    if not torch.isfinite(s).all():
        raise ValueError("activation statistics contain NaN or infinite values")
    mean = s.mean()
    if mean <= 0:
        return torch.ones_like(s)
    s = (s / mean).clamp_min(floor)
    return s if power == 1 else s ** power
