"""Products shared by both codecs (pure PyTorch, no Triton): the float32 reference product and the
chunked product of the prefill paths.

``chunked_linear`` walks the output features in chunks: a codec's rebuild kernel writes a chunk of
rows of Ŵ into one bounded scratch buffer, cuBLAS multiplies it (``torch.addmm`` into the matching
columns of y), next chunk.  The whole Ŵ never exists at once; the scratch (``chunk_bytes``, 64 MiB
by default, cached per device/dtype/shape) is the only extra memory.  Rebuilt rows do go through
device memory, but cuBLAS runs at full speed, which on-chip rebuilding in a Triton GEMM did not
reach at prefill sizes (benchmarks/kernels/NOTES.md).
"""

from __future__ import annotations

from typing import Callable

import torch

DEFAULT_CHUNK_BYTES = 64 << 20
_SCRATCH: dict = {}


def linear_float32(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x · wᵀ (+ bias) in float32, returned in x's dtype: x (..., K), w float32 (N, K), bias (N,)."""
    y = x.reshape(-1, w.shape[1]).float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


def _scratch(device, dtype, rows, K):
    key = (str(device), dtype, rows, K)
    buf = _SCRATCH.get(key)
    if buf is None:
        buf = torch.empty(rows, K, dtype=dtype, device=device)
        _SCRATCH[key] = buf
    return buf


def chunk_rows(N: int, K: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES, block_n: int = 64) -> int:
    """Rows rebuilt per chunk: as many as fit in ``chunk_bytes`` of 16-bit scratch (a multiple of
    ``block_n``, at least ``block_n``, at most N rounded up)."""
    rows = max(block_n, (chunk_bytes // (2 * K)) // block_n * block_n)
    return min(rows, -(-N // block_n) * block_n)


def chunked_linear(x: torch.Tensor, N: int, bias: torch.Tensor | None,
                   rebuild: Callable[[int, int, torch.Tensor], None], chunk_bytes: int, block_n: int) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) with the rows of Ŵ rebuilt a chunk at a time into a cached scratch.

    ``rebuild(n0, nr, scratch)`` writes rows ``[n0, n0 + nr)`` of Ŵ (N, K) into ``scratch[:nr]``
    (x's dtype, (rows, K), rows = :func:`chunk_rows`); each chunk is multiplied by cuBLAS
    (``torch.mm``/``addmm`` into the matching columns of y).  x: (..., K), already checked.
    Returns (..., N) in x's dtype.
    """
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    rows = chunk_rows(N, K, chunk_bytes, block_n)
    scratch = _scratch(x.device, x.dtype, rows, K)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    b = bias.to(x.dtype) if bias is not None else None
    for n0 in range(0, N, rows):
        nr = min(rows, N - n0)
        rebuild(n0, nr, scratch)
        w = scratch[:nr]
        if b is None:
            torch.mm(x2, w.t(), out=y[:, n0:n0 + nr])
        else:
            torch.addmm(b[n0:n0 + nr], x2, w.t(), out=y[:, n0:n0 + nr])
    return y.reshape(*x.shape[:-1], N)
