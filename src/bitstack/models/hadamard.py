"""Orthonormal Hadamard matrices of orders 2^k · (q + 1), and randomized Hadamard rotations.

A Hadamard matrix A of order n has entries ±1 and A Aᵀ = n I, so H = A / √n is orthogonal.  The
orders built here are Kronecker products of Sylvester matrices (orders 2^k) and Paley matrices
(order q + 1 for a prime q ≡ 3 mod 4: 4, 8, 12, 20, 24, 32, 44, 48, 60, …), which covers the
widths of common decoders (576 = 12 · 48, 1536 = 12 · 128, 960 = 20 · 48, 4096 = 2^12 …).

A randomized Hadamard rotation is Q = diag(σ) H with σ a vector of random signs; applied to row
vectors, x Q = (x ⊙ σ) H and x Qᵀ = (x Hᵀ) ⊙ σ.  :func:`rotate` applies it factor by factor (a
(f × f) matrix product per Kronecker factor f), never forming the n × n matrix.

Nothing here does I/O.  The factor matrices are memoised per (order, dtype, device): they are
constants, at most (largest factor)² values each.
"""

from __future__ import annotations

import functools
import math

import torch

from bitstack.errors import UnsupportedModelError


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


_MAX_POWER_FACTOR = 64  # powers of two are split into Sylvester factors of at most this order


def _paley_orders(limit: int) -> list[int]:
    """Orders q + 1 ≤ limit of Paley construction I (q prime, q ≡ 3 mod 4), smallest first."""
    return [q + 1 for q in range(3, limit) if q % 4 == 3 and _is_prime(q)]


def hadamard_orders(n: int) -> tuple[int, ...]:
    """Kronecker factors of the Hadamard matrix of order ``n`` used here: the smallest Paley orders
    (non-powers of two) first, then powers of two of at most 64 (so that applying it costs Σ factors
    multiply-adds per element).  Raises UnsupportedModelError if no factorisation is found."""
    if n >= 1 and n & (n - 1) == 0:
        chunks = []
        while n > 1:
            chunks.append(min(n, _MAX_POWER_FACTOR))
            n //= chunks[-1]
        return tuple(chunks)
    for order in _paley_orders(n + 1):
        if n % order == 0 and order & (order - 1):
            try:
                return (order,) + hadamard_orders(n // order)
            except UnsupportedModelError:
                continue
    raise UnsupportedModelError(f"no Hadamard matrix of order {n} is known to bitstack "
                                "(orders 2^k times a Paley order q + 1): rotations need another width")


def hadamard_factor(order: int) -> torch.Tensor:
    """An unnormalised Hadamard matrix of ``order`` (a power of two, or q + 1 for a prime q ≡ 3 mod 4),
    float64 (order, order) of ±1: Sylvester's construction, or Paley's construction I."""
    if order >= 1 and order & (order - 1) == 0:
        matrix = torch.ones(1, 1, dtype=torch.float64)
        while matrix.shape[0] < order:
            matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
        return matrix
    q = order - 1
    if q % 4 != 3 or not _is_prime(q):
        raise ValueError(f"order {order} is neither a power of two nor a Paley order q + 1 (q prime, q ≡ 3 mod 4)")
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if i in squares else -1.0 for i in range(1, q)], dtype=torch.float64)
    index = torch.arange(q)
    jacobsthal = chi[(index[None, :] - index[:, None]) % q]  # Q[i, j] = χ(j - i), skew-symmetric
    skew = torch.zeros(order, order, dtype=torch.float64)
    skew[0, 1:] = 1.0
    skew[1:, 0] = -1.0
    skew[1:, 1:] = jacobsthal
    return skew + torch.eye(order, dtype=torch.float64)


def hadamard_matrix(n: int) -> torch.Tensor:
    """The orthonormal Hadamard matrix H of order ``n`` that :func:`rotate` applies, float64 (n, n):
    the Kronecker product of :func:`hadamard_factor` over :func:`hadamard_orders`, divided by √n."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    for order in hadamard_orders(n):
        matrix = torch.kron(matrix, hadamard_factor(order))
    return matrix / math.sqrt(n)


def random_signs(n: int, generator: torch.Generator) -> torch.Tensor:
    """n random signs, int8 (n,) of ±1, drawn from ``generator``."""
    return (torch.randint(0, 2, (n,), generator=generator, dtype=torch.int64) * 2 - 1).to(torch.int8)


def rotation_matrix(sigma: torch.Tensor) -> torch.Tensor:
    """Q = diag(σ) H, float64 (n, n), for signs σ (any dtype, (n,)): x Q = :func:`rotate` (x, σ)."""
    return sigma.to(torch.float64)[:, None] * hadamard_matrix(sigma.shape[0])


@functools.lru_cache(maxsize=64)
def _factor(order: int, transpose: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    matrix = hadamard_factor(order)
    return (matrix.T if transpose else matrix).contiguous().to(device=device, dtype=dtype)


def rotate(x: torch.Tensor, sigma: torch.Tensor, *, transpose: bool = False) -> torch.Tensor:
    """x Q (or x Qᵀ with ``transpose``), Q = diag(σ) H, over the last dimension of ``x``.

    x: float (..., n), any float dtype (computed in it; the ±1 factors are exact in every dtype).
    sigma: σ, (n,) of ±1 (int8 as stored, or float).  Returns a tensor of x's dtype and shape.
    """
    n = x.shape[-1]
    if sigma.shape != (n,):
        raise ValueError(f"rotation signs must have shape ({n},), got {tuple(sigma.shape)}")
    sign = sigma.to(device=x.device, dtype=x.dtype)
    y = x if transpose else x * sign
    shape = y.shape
    y = y.reshape(-1, n)
    left = 1
    for order in hadamard_orders(n):
        # (x A)[k] contracts the axis of this factor: rows (batch · left, order, right)
        y = torch.matmul(_factor(order, not transpose, x.dtype, x.device), y.reshape(-1, order, n // (left * order)))
        left *= order
    y = y.reshape(shape) * (1.0 / math.sqrt(n))
    return y * sign if transpose else y
