"""Fast truncated SVD for the rank-k magnitude factors of AVD.

A randomized range finder with power iterations (Halko, Martinsson & Tropp, 2011): for the
non-negative matrices |R| that AVD factors, whose spectrum is led by a dominant singular value,
a few power iterations give a rank-k approximation whose error is within a fraction of a percent
of the optimal (full-SVD) one; ``tests/core/test_lowrank.py`` bounds that gap.  Cost per call is
O(m·n·(k + p)·(2q + 2)) instead of the full SVD's O(m·n·min(m, n)).
"""

from __future__ import annotations

import torch


def truncated_svd(
    a: torch.Tensor,
    rank: int,
    *,
    oversample: int = 8,
    power_iters: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Approximate top-``rank`` singular triplets of ``a``.

    Args:
        a: float32, shape (m, n).
        rank: number of triplets r, 1 <= r <= min(m, n).
        oversample: extra random directions p of the range finder.
        power_iters: power iterations q (each re-orthonormalised by QR).
        generator: source of the random test matrix (on ``a.device``); fixes the result.
    Returns:
        (U, S, Vh): float32 of shapes (m, r), (r,), (r, n), singular values descending.
        When r + p >= min(m, n) the exact SVD is used.
    """
    if a.dim() != 2:
        raise ValueError(f"truncated_svd expects a matrix, got shape {tuple(a.shape)}")
    m, n = a.shape
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"rank must be in [1, {min(m, n)}] for a {m}x{n} matrix, got {rank}")
    width = rank + oversample
    if width >= min(m, n):
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    omega = torch.randn(n, width, device=a.device, dtype=a.dtype, generator=generator)  # (n, l)
    q, _ = torch.linalg.qr(a @ omega)  # (m, l)
    for _ in range(power_iters):
        z, _ = torch.linalg.qr(a.T @ q)  # (n, l)
        q, _ = torch.linalg.qr(a @ z)  # (m, l)
    b = q.T @ a  # (l, n)
    ub, s, vh = torch.linalg.svd(b, full_matrices=False)
    return (q @ ub[:, :rank]), s[:rank], vh[:rank]
