"""Prefill kernel (many tokens): rebuild tiles of Ŵ = Σ_i S_i ⊙ (u_i v_i) on chip and multiply.

Imports Triton at module level: import this module lazily (``bitstack.kernels`` does).

Each program owns an output tile of ``BN`` features × ``BM`` tokens, computed transposed
(``Ŵ_tile · x_tileᵀ``) so that the rebuilt weight tile is the MMA's *A* operand and can stay in
registers.  For each group of ``8G`` columns and each bit plane ``b`` (a contiguous run of ``G``
columns in the bit-plane layout) it forms

    W_b = Σ_i  ±(u_i[rows] @ v_i[:, cols_b])      (tensor cores, K = rank; sign from bit b)

in fp32 registers, rounds it to x's dtype and accumulates ``W_b @ x[tokens, cols_b]ᵀ``.  The dense
weight is never written to memory; it is rebuilt once per (feature tile, token tile) pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitstack.kernels._checks import check_linear_args, interpret_mode
from bitstack.kernels._signs import signed_add, signed_add16
from bitstack.kernels.layout import PackedBitStack


@triton.jit
def _prefill_kernel(
    x_ptr, s_ptr, u_ptr, v_ptr, b_ptr, y_ptr,
    M, N, K, RANK, KB,
    stride_xm, stride_ym,
    J: tl.constexpr, G: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, KR: tl.constexpr,
    GROUP_N: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, EVEN_M: tl.constexpr, EVEN_R: tl.constexpr,
    UNPACK: tl.constexpr, PPI: tl.constexpr, ACC16: tl.constexpr,
):
    DT: tl.constexpr = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n_tiles_n = tl.cdiv(N, BN)
    n_tiles_m = tl.cdiv(M, BM)
    # programs that run together share feature tiles (the sign bits, rebuilt from L2) in groups
    per_group = GROUP_N * n_tiles_m
    first_n = (pid // per_group) * GROUP_N
    group_n = tl.minimum(n_tiles_n - first_n, GROUP_N)
    pid_n = first_n + (pid % per_group) % group_n
    pid_m = (pid % per_group) // group_n

    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    offs_m = pid_m * BM + tl.arange(0, BM)
    mmask = offs_m < M
    offs_c = tl.arange(0, G)
    offs_r = tl.arange(0, KR)
    rmask = offs_r < RANK

    acc = tl.zeros([BN, BM], dtype=tl.float32)
    n_groups = tl.cdiv(K, 8 * G)
    # loop over (group, run of PPI bit planes): PPI x tiles per iteration (software-pipelined by
    # Triton); the sign bytes of a group are loaded once per run
    RUNS: tl.constexpr = 8 // PPI
    for it in range(n_groups * RUNS):
        g = it // RUNS
        jb0 = (it % RUNS) * PPI
        base = g * (8 * G)
        if EVEN_K:
            gs = G
        else:
            gs = tl.minimum(G, (K - base + 7) // 8)  # bytes in this group = column stride of a plane
        cmask_b = offs_c < gs
        for p in tl.static_range(PPI):
            jb = jb0 + p
            cols = base + jb * gs + offs_c
            cmask = cmask_b & (cols < K)
            if EVEN_K and EVEN_M:
                xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + cols[:, None])  # (G, BM)
            else:
                xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + cols[:, None],
                             mask=cmask[:, None] & mmask[None, :], other=0.0)
            if ACC16:
                w = tl.zeros([BN, G], dtype=DT)
            else:
                w = tl.zeros([BN, G], dtype=tl.float32)
            for i in tl.static_range(J):
                # sign bytes of block i for this group (identical loads for the PPI planes: CSE'd)
                if EVEN_K and EVEN_N:
                    P = tl.load(s_ptr + i * (N * KB) + offs_n[:, None] * KB + (g * G + offs_c)[None, :])
                else:
                    P = tl.load(s_ptr + i * (N * KB) + offs_n[:, None] * KB + (g * G + offs_c)[None, :],
                                mask=nmask[:, None] & cmask_b[None, :], other=0)
                ut = tl.load(u_ptr + i * (N * RANK) + offs_n[:, None] * RANK + offs_r[None, :],
                             mask=nmask[:, None] & rmask[None, :], other=0.0)  # (BN, KR) fp16
                if EVEN_K and EVEN_R:
                    vt = tl.load(v_ptr + i * (RANK * K) + offs_r[:, None] * K + cols[None, :])  # (KR, G)
                else:
                    vt = tl.load(v_ptr + i * (RANK * K) + offs_r[:, None] * K + cols[None, :],
                                 mask=rmask[:, None] & cmask[None, :], other=0.0)
                if DOT_F32:
                    uv = tl.dot(ut.to(tl.float32), vt.to(tl.float32))
                else:
                    uv = tl.dot(ut, vt)
                if ACC16:  # w += fp16/bf16(±uv), sign from bit jb of P
                    w = signed_add16(w, uv, P, jb, DT, UNPACK)
                else:  # w += ±uv in float32
                    w = signed_add(w, uv, P, jb, UNPACK)
            if DOT_F32:  # interpreter only: it cannot multiply bf16; same values, upcast
                acc = tl.dot(w.to(DT).to(tl.float32), xt.to(tl.float32), acc)
            else:
                acc = tl.dot(w.to(DT), xt, acc)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None], acc.to(DT),
             mask=nmask[:, None] & mmask[None, :])


@dataclass(frozen=True)
class PrefillConfig:
    """Launch parameters of the prefill kernel (feature tile, token tile, warps, stages, grouping)."""

    block_n: int = 128
    block_m: int = 256
    num_warps: int = 8
    num_stages: int = 2
    group_n: int = 8
    unpack: int = 1  # 1: sign flip + add in PTX; 0: plain Triton
    planes: int = 4  # bit planes per loop iteration (1, 2, 4 or 8): x tiles in flight vs sign reloads
    acc16: bool = True  # sum the blocks of a rebuilt tile in x's dtype (packed ops) instead of float32


LAST_COMPILED: dict = {}  # last launched compiled kernel (benchmarks read its registers/IR)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def prefill_launch(x: torch.Tensor, packed: PackedBitStack, bias: torch.Tensor | None = None,
                   config: PrefillConfig | None = None) -> torch.Tensor:
    """:func:`bitstack_linear_prefill` with explicit launch parameters (benchmarks use this)."""
    check_linear_args(x, packed, bias, need_gpu=True)
    cfg = config or PrefillConfig()
    N, K, k, G, J = packed.out_features, packed.in_features, packed.rank, packed.group, packed.num_blocks
    x2 = x.reshape(-1, K)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    M = x2.shape[0]
    if M < 1:
        raise ValueError("x holds no token")
    KR = max(16, _next_pow2(k))
    BM = min(cfg.block_m, max(16, _next_pow2(M)))
    BN = cfg.block_n
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, BN) * triton.cdiv(M, BM),)
    LAST_COMPILED["prefill"] = _prefill_kernel[grid](
        x2, packed.signs, packed.u, packed.v, bias if bias is not None else y, y,
        M, N, K, k, (K + 7) // 8,
        x2.stride(0), y.stride(0),
        J=J, G=G, BN=BN, BM=BM, KR=KR, GROUP_N=cfg.group_n, HAS_BIAS=bias is not None,
        DOT_F32=interpret_mode() and x.dtype == torch.bfloat16,
        EVEN_K=K % (8 * G) == 0, EVEN_N=N % BN == 0, EVEN_M=M % BM == 0, EVEN_R=k == KR,
        UNPACK=0 if interpret_mode() else cfg.unpack, PPI=cfg.planes,
        ACC16=cfg.acc16 and not (interpret_mode() and x.dtype == torch.bfloat16),  # no bf16 math there
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return y.reshape(*x.shape[:-1], N)


def default_prefill_config(M: int, N: int, K: int, rank: int, device: torch.device) -> PrefillConfig:
    """Launch parameters used by :func:`bitstack_linear_prefill` (tuned on an H100; see NOTES.md)."""
    return PrefillConfig()


def bitstack_linear_prefill(x: torch.Tensor, packed: PackedBitStack,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) for many tokens, rebuilding tiles of Ŵ on chip only.

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedBitStack` of the J loaded blocks, same device.
        bias: optional float tensor (N,), added in float32 before the final rounding.
    Returns:
        shape (..., N), x's dtype.  Math: each rebuilt tile is summed over blocks in float32, rounded
        to x's dtype, and multiplied on the tensor cores with float32 accumulation.
        ``input_scale``: fold it into ``v`` with ``repack(blocks, input_scale=...)``.
    Raises:
        ValueError on bad dtypes, shapes or devices.
    """
    check_linear_args(x, packed, bias, need_gpu=True)
    M = x.numel() // x.shape[-1] if x.shape[-1] else 0
    cfg = default_prefill_config(M, packed.out_features, packed.in_features, packed.rank, x.device)
    return prefill_launch(x, packed, bias, cfg)
