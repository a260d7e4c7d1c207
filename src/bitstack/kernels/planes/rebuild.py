"""Codec ``planes``: rows of Ŵ rebuilt densely on the GPU, and the prefill built on it (imports
Triton: load lazily).

* Rebuild (:func:`rebuild_planes_rows`): rows of Ŵ = A' + B·f, A' = C + step·(2^(1-J) - 6),
  B = 4·step, f the weights' codes (:mod:`bitstack.kernels.planes.codes`), a [rows, block_k] tile
  per program, the 8 bits of a sign byte a tensor axis, flattened to contiguous columns for wide
  stores.  float32 arithmetic, rounded once to the output's dtype.
* Prefill (many tokens, :func:`planes_linear_prefill`): rows of Ŵ rebuilt a chunk at a time into a
  bounded scratch (≤ 64 MiB by default, cached per device/dtype/shape,
  :func:`bitstack.kernels._linear.chunked_linear`), each chunk multiplied by cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitstack.kernels._checks import cdiv
from bitstack.kernels._linear import DEFAULT_CHUNK_BYTES, chunked_linear
from bitstack.kernels.planes.codes import rebuild_tile
from bitstack.kernels.planes.layout import PackedPlanes, check_kernel_support, check_planes_args


@triton.jit
def _planes_rebuild_kernel(
    s_ptr, off_ptr, step_ptr, w_ptr, N, K, KB, NG, row0, n_rows, stride_w, coef,
    J: tl.constexpr, GS: tl.constexpr, BN: tl.constexpr, KT: tl.constexpr,
):
    """Ŵ[row0 + local, k0 : k0 + KT] for one [BN, KT] tile (:func:`rebuild_tile`), stored in w's dtype."""
    local = tl.program_id(0) * BN + tl.arange(0, BN)
    lmask = local < n_rows
    k0 = tl.program_id(1) * KT
    byte = k0 // 8 + tl.arange(0, KT // 8)
    w = rebuild_tile(s_ptr, off_ptr, step_ptr, row0 + local, lmask, byte, N, KB, NG, coef, J, GS, BN, KT,
                     w_ptr.dtype.element_ty)
    cols = k0 + tl.arange(0, KT)
    tl.store(w_ptr + local[:, None] * stride_w + cols[None, :], w, mask=lmask[:, None] & (cols < K)[None, :])


def rebuild_planes_rows(packed: PackedPlanes, row0: int, rows: int, out: torch.Tensor, *,
                        block_n: int | None = None, block_k: int | None = None, num_warps: int = 4,
                        return_compiled: bool = False):
    """Write Ŵ[row0 : row0 + rows, :] into ``out[:rows]`` (float32 math, rounded once to out's dtype).

    Args:
        packed: :class:`PackedPlanes` (CUDA, or CPU under TRITON_INTERPRET=1).
        row0, rows: first output feature and number of rows (row0 + rows <= N).
        out: float16 or bfloat16 (or float32), shape (>= rows, K), contiguous rows (last stride 1).
        block_n, block_k: rows and columns (a power of two >= 8) per program; None: 16 x 512 up to
            4 blocks, 32 x 256 above (measured on an H100, benchmarks/kernels/NOTES.md).
        return_compiled: return ``(out, compiled)``, Triton's compiled kernel (registers, PTX, SASS;
            None in the interpreter), instead of out.
    Returns:
        ``out`` (rows beyond ``rows`` untouched).
    """
    packed.validate()
    check_kernel_support(packed)
    N, K, GS, J = packed.out_features, packed.in_features, packed.group_size, packed.num_blocks
    if out.dtype not in (torch.float16, torch.bfloat16, torch.float32) or out.dim() != 2 or out.shape[1] != K \
            or out.shape[0] < rows or out.stride(1) != 1 or out.device != packed.device:
        raise ValueError(f"out must be a float16/bfloat16/float32 (>= {rows}, {K}) tensor with contiguous rows "
                         f"on {packed.device}")
    if not (0 <= row0 and rows >= 1 and row0 + rows <= N):
        raise ValueError(f"rows [{row0}, {row0 + rows}) out of range for {N} output features")
    block_n = block_n or (16 if J <= 4 else 32)
    block_k = block_k or (512 if J <= 4 else 256)
    if block_k < 8 or block_k & (block_k - 1):
        raise ValueError(f"block_k must be a power of two >= 8, got {block_k}")
    grid = (cdiv(rows, block_n), cdiv(K, block_k))
    compiled = _planes_rebuild_kernel[grid](
        packed.signs, packed.offset, packed.step, out, N, K, (K + 7) // 8, packed.num_groups, row0, rows,
        out.stride(0), 2.0 ** (1 - J) - 6.0,
        J=J, GS=GS, BN=block_n, KT=block_k, num_warps=num_warps,
    )
    return (out, compiled) if return_compiled else out


def planes_linear_prefill(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                          chunk_bytes: int = DEFAULT_CHUNK_BYTES, rebuild: dict | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias): rows of Ŵ rebuilt in x's dtype a chunk at a time into a bounded
    scratch (:func:`rebuild_planes_rows`), each chunk multiplied by cuBLAS.

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedPlanes`, same device; group_size a power of two >= 8.
        bias: optional float tensor (N,) (added by cuBLAS in x's dtype).
        chunk_bytes: scratch size bound (``bitstack.kernels._linear.chunk_rows``).
        rebuild: keyword arguments of :func:`rebuild_planes_rows` (launch parameters).
    Returns:
        (..., N) in x's dtype.
    """
    check_planes_args(x, packed, bias, need_gpu=True)
    check_kernel_support(packed)
    rb = dict(rebuild or {})

    def rows_into(n0: int, nr: int, scratch: torch.Tensor) -> None:
        rebuild_planes_rows(packed, n0, nr, scratch, **rb)

    return chunked_linear(x, packed.out_features, bias, rows_into, chunk_bytes, rb.get("block_n") or 32)
