"""Codec ``avd``: rebuild rows of Ŵ densely on the GPU, and the prefill built on it (imports Triton).

``rebuild_rows(packed, row0, rows, out)`` writes Ŵ[row0 : row0 + rows] (x's dtype) into ``out``;
``bitstack_linear_prefill`` rebuilds Ŵ a chunk of rows at a time into a bounded scratch and
multiplies each chunk with cuBLAS (:func:`bitstack.kernels._linear.chunked_linear`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitstack.kernels._checks import cdiv, interpret_mode, next_pow2
from bitstack.kernels._linear import DEFAULT_CHUNK_BYTES, chunked_linear
from bitstack.kernels.avd.layout import PackedBitStack, check_linear_args
from bitstack.kernels.avd.signs import signed_add, signed_add16


@triton.jit
def _rebuild_kernel(
    s_ptr, u_ptr, v_ptr, w_ptr, N, K, RANK, KB, row0, n_rows, stride_w,
    J: tl.constexpr, G: tl.constexpr, BN: tl.constexpr, KR: tl.constexpr, UNPACK: tl.constexpr,
    ACC16: tl.constexpr, DOT_F32: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
    EVEN_R: tl.constexpr, WIDE: tl.constexpr,
):
    DT: tl.constexpr = w_ptr.dtype.element_ty
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    local = pid_n * BN + tl.arange(0, BN)
    lmask = local < n_rows
    offs_n = row0 + local
    offs_c = tl.arange(0, G)
    offs_r = tl.arange(0, KR)
    rmask = offs_r < RANK
    base = g * (8 * G)
    if WIDE:
        # full group (K % 8G == 0): its 8G columns are contiguous, column c = plane c // G, byte c % G.
        # One MMA per block gives u_i @ v_i for the whole group; the sign byte of every column is
        # loaded directly (8 columns share a byte) and shifted by its plane index.
        offs_w = tl.arange(0, 8 * G)
        cols = base + offs_w
        shift = (offs_w // G)[None, :]
        if ACC16:
            w = tl.zeros([BN, 8 * G], dtype=DT)
        else:
            w = tl.zeros([BN, 8 * G], dtype=tl.float32)
        for i in tl.static_range(J):
            p_ptrs = s_ptr + i * (N * KB) + offs_n[:, None] * KB + (g * G + offs_w % G)[None, :]
            if EVEN_N:
                Pw = tl.load(p_ptrs)
            else:
                Pw = tl.load(p_ptrs, mask=lmask[:, None], other=0)
            ut = tl.load(u_ptr + i * (N * RANK) + offs_n[:, None] * RANK + offs_r[None, :],
                         mask=lmask[:, None] & rmask[None, :], other=0.0)
            if EVEN_R:
                vt = tl.load(v_ptr + i * (RANK * K) + offs_r[:, None] * K + cols[None, :])
            else:
                vt = tl.load(v_ptr + i * (RANK * K) + offs_r[:, None] * K + cols[None, :],
                             mask=rmask[:, None], other=0.0)
            if DOT_F32:
                uv = tl.dot(ut.to(tl.float32), vt.to(tl.float32))
            else:
                uv = tl.dot(ut, vt)
            flip = (((Pw.to(tl.int32) >> shift) & 1) << 31) ^ -2147483648
            sv = (uv.to(tl.int32, bitcast=True) ^ flip).to(tl.float32, bitcast=True)
            if ACC16:
                w += sv.to(DT)
            else:
                w += sv
        w_ptrs = w_ptr + local[:, None] * stride_w + cols[None, :]
        if EVEN_N:
            tl.store(w_ptrs, w.to(DT))
        else:
            tl.store(w_ptrs, w.to(DT), mask=lmask[:, None])
    else:
        if EVEN_K:
            gs = G
        else:
            gs = tl.minimum(G, (K - base + 7) // 8)
        cmask_b = offs_c < gs
        for jb in tl.static_range(8):
            cols = base + jb * gs + offs_c
            cmask = cmask_b & (cols < K)
            if ACC16:
                w = tl.zeros([BN, G], dtype=DT)
            else:
                w = tl.zeros([BN, G], dtype=tl.float32)
            for i in tl.static_range(J):
                if EVEN_K and EVEN_N:
                    P = tl.load(s_ptr + i * (N * KB) + offs_n[:, None] * KB + (g * G + offs_c)[None, :])
                else:
                    P = tl.load(s_ptr + i * (N * KB) + offs_n[:, None] * KB + (g * G + offs_c)[None, :],
                                mask=lmask[:, None] & cmask_b[None, :], other=0)
                ut = tl.load(u_ptr + i * (N * RANK) + offs_n[:, None] * RANK + offs_r[None, :],
                             mask=lmask[:, None] & rmask[None, :], other=0.0)
                if EVEN_K and EVEN_R:
                    vt = tl.load(v_ptr + i * (RANK * K) + offs_r[:, None] * K + cols[None, :])
                else:
                    vt = tl.load(v_ptr + i * (RANK * K) + offs_r[:, None] * K + cols[None, :],
                                 mask=rmask[:, None] & cmask[None, :], other=0.0)
                if DOT_F32:
                    uv = tl.dot(ut.to(tl.float32), vt.to(tl.float32))
                else:
                    uv = tl.dot(ut, vt)
                if ACC16:
                    w = signed_add16(w, uv, P, jb, DT, UNPACK)
                else:
                    w = signed_add(w, uv, P, jb, UNPACK)
            w_ptrs = w_ptr + local[:, None] * stride_w + cols[None, :]
            if EVEN_K and EVEN_N:
                tl.store(w_ptrs, w.to(DT))
            else:
                tl.store(w_ptrs, w.to(DT), mask=lmask[:, None] & cmask[None, :])


def rebuild_rows(packed: PackedBitStack, row0: int, rows: int, out: torch.Tensor, *, block_n: int = 64,
                 num_warps: int = 4, unpack: int = 1, acc16: bool = True, wide: bool = False) -> torch.Tensor:
    """Write Ŵ[row0 : row0 + rows, :] into ``out[:rows]``.

    Args:
        packed: :class:`PackedBitStack` (CUDA, or CPU under TRITON_INTERPRET=1).
        row0, rows: first output feature and number of rows (row0 + rows <= N).
        out: float16 or bfloat16, shape (>= rows, K), row stride >= K, last dim contiguous.
    Returns:
        ``out`` (rows beyond ``rows`` untouched).  Blocks are summed in out's dtype when ``acc16``
        (packed adds) else in float32, then rounded.  ``wide``: when K is a multiple of 8G, one MMA
        per block covers a whole group of 8G columns (otherwise one per bit plane).
    """
    packed.validate()
    N, K, k, G, J = packed.out_features, packed.in_features, packed.rank, packed.group, packed.num_blocks
    if out.dtype not in (torch.float16, torch.bfloat16) or out.dim() != 2 or out.shape[1] != K \
            or out.shape[0] < rows or out.stride(1) != 1:
        raise ValueError(f"out must be float16/bfloat16 of shape (>= {rows}, {K}) with contiguous rows")
    if not (0 <= row0 and rows >= 1 and row0 + rows <= N):
        raise ValueError(f"rows [{row0}, {row0 + rows}) out of range for {N} output features")
    KR = max(16, next_pow2(k))
    interp = interpret_mode()
    grid = (cdiv(rows, block_n), cdiv(K, 8 * G))
    _rebuild_kernel[grid](
        packed.signs, packed.u, packed.v, out, N, K, k, (K + 7) // 8, row0, rows, out.stride(0),
        J=J, G=G, BN=block_n, KR=KR, UNPACK=0 if interp else unpack,
        ACC16=acc16 and not (interp and out.dtype == torch.bfloat16),
        DOT_F32=interp and out.dtype == torch.bfloat16,
        EVEN_K=K % (8 * G) == 0, EVEN_N=rows % block_n == 0, EVEN_R=k == KR,
        WIDE=wide and K % (8 * G) == 0,
        num_warps=num_warps,
    )
    return out


def bitstack_linear_prefill(x: torch.Tensor, packed: PackedBitStack, bias: torch.Tensor | None = None,
                            chunk_bytes: int = DEFAULT_CHUNK_BYTES, rebuild: dict | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias): rebuild Ŵ a chunk of rows at a time into a bounded scratch, cuBLAS multiply.

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedBitStack`, same device.
        bias: optional float tensor (N,).
        chunk_bytes: scratch size bound (the scratch holds ``_linear.chunk_rows(N, K, chunk_bytes)`` rows).
        rebuild: keyword arguments of :func:`rebuild_rows` (launch parameters; benchmarks use it).
    Returns:
        (..., N) in x's dtype.
    """
    check_linear_args(x, packed, bias, need_gpu=True)
    rb = dict(rebuild or {})

    def rows_into(n0: int, nr: int, scratch: torch.Tensor) -> None:
        rebuild_rows(packed, n0, nr, scratch, **rb)

    return chunked_linear(x, packed.out_features, bias, rows_into, chunk_bytes, rb.get("block_n", 64))
