"""Codec ``avd``, decode kernel (few tokens): y = Σ_i Σ_r u_i[:, r] ⊙ (S_i · (v_i[r] ⊙ x)) — no weight is rebuilt.

Imports Triton at module level: import this module lazily (``bitstack.kernels.api`` does).

Per program: a tile of ``BN`` output rows and a range of column groups (split-K).  For each block
``i`` and each group of ``8G`` columns it loads the ``BN × G`` sign bytes once, and for each bit
plane ``b`` (8 per byte) multiplies the ±1 tile (``BN × G``, built in registers) by
``Z = v_i[:, cols_b]ᵀ ⊙ x[:, cols_b]ᵀ`` (``G × k·M``) on the tensor cores: the only large operand
is the sign matrix, read once.  After its column range, the ``BN × k·M`` accumulator is contracted
with ``u_i`` (``BN × k``) into the ``BN × M`` output tile.

Split-K: programs that share a row tile add their fp32 partials into a workspace with atomics;
the last one to finish writes ``y`` (+ bias) in x's dtype and re-zeroes the workspace
(:mod:`bitstack.kernels._splitk`, shared with the planes kernels), so one launch does everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitstack.kernels._checks import cdiv, interpret_mode, next_pow2
from bitstack.kernels._splitk import split_k, splitk_workspace, store_rows
from bitstack.kernels.avd.layout import PackedBitStack, check_linear_args
from bitstack.kernels.avd.signs import sign_plane
from bitstack.kernels.dispatch import AVD_DECODE_WIDTH_LIMIT


@triton.jit
def _decode_kernel(
    x_ptr, s_ptr, u_ptr, v_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, z_ptr,
    M, N, K, RANK, KB, J,
    stride_xm, stride_ym,
    n_groups, groups_per_split,
    G: tl.constexpr, BN: tl.constexpr, KR: tl.constexpr, MP: tl.constexpr,
    UNPACK: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, EVEN_R: tl.constexpr, ZPRE: tl.constexpr,
    FLAT: tl.constexpr,
):
    DT: tl.constexpr = x_ptr.dtype.element_ty
    NR: tl.constexpr = KR * MP
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_splits = tl.num_programs(1)

    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    offs_c = tl.arange(0, G)
    offs_r = tl.arange(0, KR)
    rmask = offs_r < RANK
    offs_m = tl.arange(0, MP)
    mmask = offs_m < M

    g0 = pid_s * groups_per_split
    g1 = tl.minimum(g0 + groups_per_split, n_groups)

    y_acc = tl.zeros([BN, MP], dtype=tl.float32)
    if FLAT:
        # one flat, software-pipelined loop over (block, group); each iteration's (BN, k*M) partial is
        # contracted with u_i at once, so no pipeline drains between blocks.  Needs ZPRE and EVEN_K.
        gpl = g1 - g0
        for it in range(J * gpl):
            i = it // gpl
            g = g0 + it % gpl
            if EVEN_N:
                P = tl.load(s_ptr + i * (N * KB) + offs_n[:, None] * KB + (g * G + offs_c)[None, :])
            else:
                P = tl.load(s_ptr + i * (N * KB) + offs_n[:, None] * KB + (g * G + offs_c)[None, :],
                            mask=nmask[:, None], other=0)
            part = tl.zeros([BN, NR], dtype=tl.float32)
            for jb in tl.static_range(8):
                z = tl.load(z_ptr + ((i * n_groups + g) * 8 + jb) * (G * NR)
                            + offs_c[:, None] * NR + tl.arange(0, NR)[None, :])
                a = sign_plane(P, jb, DT, UNPACK)
                if DOT_F32:
                    part = tl.dot(a.to(tl.float32), z.to(tl.float32), part)
                else:
                    part = tl.dot(a, z, part)
            ut = tl.load(u_ptr + i * (N * RANK) + offs_n[:, None] * RANK + offs_r[None, :],
                         mask=nmask[:, None] & rmask[None, :], other=0.0).to(tl.float32)  # (BN, KR)
            if MP == 1:
                y_acc += tl.sum(part * ut, axis=1)[:, None]
            else:
                y_acc += tl.sum(tl.reshape(part, [BN, KR, MP]) * ut[:, :, None], axis=1)
    for i in range(0 if FLAT else J):
        s_base = s_ptr + i * (N * KB)
        v_base = v_ptr + i * (RANK * K)
        acc = tl.zeros([BN, NR], dtype=tl.float32)
        for g in range(g0, g1):
            base = g * (8 * G)
            if EVEN_K:  # every group is full: no column masks
                gs = G
                if EVEN_N:
                    P = tl.load(s_base + offs_n[:, None] * KB + (g * G + offs_c)[None, :])
                else:
                    P = tl.load(s_base + offs_n[:, None] * KB + (g * G + offs_c)[None, :],
                                mask=nmask[:, None], other=0)
            else:
                gs = tl.minimum(G, (K - base + 7) // 8)  # bytes in this group = column stride of a plane
                P = tl.load(s_base + offs_n[:, None] * KB + (g * G + offs_c)[None, :],
                            mask=nmask[:, None] & (offs_c < gs)[None, :], other=0)
            for jb in tl.static_range(8):
                if ZPRE:  # Z precomputed by _zprep_kernel: contiguous zero-padded (G, NR) tiles
                    z = tl.load(z_ptr + ((i * n_groups + g) * 8 + jb) * (G * NR)
                                + offs_c[:, None] * NR + tl.arange(0, NR)[None, :])
                else:
                    cols = base + jb * gs + offs_c
                    v_ptrs = v_base + offs_r[None, :] * K + cols[:, None]
                    if EVEN_K:
                        cmask = offs_c < G
                        if EVEN_R:
                            vt = tl.load(v_ptrs).to(tl.float32)  # (G, KR)
                        else:
                            vt = tl.load(v_ptrs, mask=rmask[None, :], other=0.0).to(tl.float32)
                    else:
                        cmask = (offs_c < gs) & (cols < K)
                        vt = tl.load(v_ptrs, mask=cmask[:, None] & rmask[None, :], other=0.0).to(tl.float32)
                    if MP == 1:
                        if EVEN_K:
                            xt = tl.load(x_ptr + cols).to(tl.float32)  # (G,)
                        else:
                            xt = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
                        z = (vt * xt[:, None]).to(DT)  # (G, KR)
                    else:
                        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + cols[:, None],
                                     mask=cmask[:, None] & mmask[None, :], other=0.0).to(tl.float32)  # (G, MP)
                        z = tl.reshape((vt[:, :, None] * xt[:, None, :]).to(DT), [G, NR])
                a = sign_plane(P, jb, DT, UNPACK)  # (BN, G) of ±1
                if DOT_F32:  # interpreter only: it cannot multiply bf16; same values, upcast
                    acc = tl.dot(a.to(tl.float32), z.to(tl.float32), acc)
                else:
                    acc = tl.dot(a, z, acc)
        ut = tl.load(u_ptr + i * (N * RANK) + offs_n[:, None] * RANK + offs_r[None, :],
                     mask=nmask[:, None] & rmask[None, :], other=0.0).to(tl.float32)  # (BN, KR)
        if MP == 1:
            y_acc += tl.sum(acc * ut, axis=1)[:, None]
        else:
            y_acc += tl.sum(tl.reshape(acc, [BN, KR, MP]) * ut[:, :, None], axis=1)

    store_rows(y_acc, offs_n, nmask, offs_m, mmask, N, b_ptr, y_ptr, ws_ptr, cnt_ptr, pid_n, n_splits, stride_ym,
               SPLIT, HAS_BIAS)


@triton.jit
def _zprep_kernel(
    x_ptr, v_ptr, z_ptr, M, K, RANK, n_groups, stride_xm,
    G: tl.constexpr, KR: tl.constexpr, MP: tl.constexpr,
):
    """Z[i, g, b, c, r*MP + m] = v_i[r, col] * x[m, col], col = 8G*g + b*gs + c (0 past the group)."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    NR: tl.constexpr = KR * MP
    pid = tl.program_id(0)  # one (block, group, plane) per program
    i = pid // (n_groups * 8)
    g = (pid // 8) % n_groups
    jb = pid % 8
    offs_c = tl.arange(0, G)
    offs_r = tl.arange(0, KR)
    offs_m = tl.arange(0, MP)
    base = g * (8 * G)
    gs = tl.minimum(G, (K - base + 7) // 8)
    cols = base + jb * gs + offs_c
    cmask = (offs_c < gs) & (cols < K)
    vt = tl.load(v_ptr + i * (RANK * K) + offs_r[None, :] * K + cols[:, None],
                 mask=cmask[:, None] & (offs_r < RANK)[None, :], other=0.0).to(tl.float32)  # (G, KR)
    xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + cols[:, None],
                 mask=cmask[:, None] & (offs_m < M)[None, :], other=0.0).to(tl.float32)  # (G, MP)
    z = tl.reshape((vt[:, :, None] * xt[:, None, :]).to(DT), [G, NR])
    tl.store(z_ptr + pid * (G * NR) + offs_c[:, None] * NR + tl.arange(0, NR)[None, :], z)


@dataclass(frozen=True)
class DecodeConfig:
    """Launch parameters of the decode kernel.

    block_n: output rows per program.  splits: programs along K (None: chosen from the SM count).
    unpack: sign-unpack implementation (0 plain Triton, 1 and 2 PTX; see ``_signs``); None: 2 on
    GPU, 0 in the interpreter.
    zpre: compute Z = v ⊙ x for all blocks first (one small extra launch, ``_zprep_kernel``) instead
    of in every program.  flat (with zpre): one pipelined loop over (block, group) instead of a
    loop per block.
    """

    block_n: int = 128
    splits: int | None = None
    num_warps: int = 8
    num_stages: int = 3
    unpack: int | None = None
    zpre: bool = True
    flat: bool = True
    zprep_warps: int = 1


def decode_launch(x: torch.Tensor, packed: PackedBitStack, bias: torch.Tensor | None = None,
                  config: DecodeConfig | None = None, *, return_compiled: bool = False):
    """:func:`bitstack_linear_decode` with explicit launch parameters (benchmarks use this).

    ``return_compiled``: return ``(y, compiled)``, Triton's compiled decode kernel (registers,
    PTX, SASS; None in the interpreter), instead of y."""
    check_linear_args(x, packed, bias, need_gpu=True)
    cfg = config or DecodeConfig()
    N, K, k, G, J = packed.out_features, packed.in_features, packed.rank, packed.group, packed.num_blocks
    x2 = x.reshape(-1, K)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    M = x2.shape[0]
    if M < 1:
        raise ValueError("x holds no token")
    MP = next_pow2(M)
    KR = max(next_pow2(k), 16 // MP if MP < 16 else 1)
    if KR * MP > AVD_DECODE_WIDTH_LIMIT:
        raise ValueError(f"decode kernel handles rank*tokens <= {AVD_DECODE_WIDTH_LIMIT} (got rank {k}, {M} tokens): "
                         "use bitstack_linear_prefill for more tokens")
    unpack = cfg.unpack if cfg.unpack is not None else (0 if interpret_mode() else 2)
    if interpret_mode():
        unpack = 0  # inline PTX cannot run in the interpreter
    BN = cfg.block_n
    n_tiles = cdiv(N, BN)
    n_groups = cdiv(K, 8 * G)
    splits, gps = split_k(n_tiles, n_groups, cfg.splits, 2, x.device)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if splits > 1:
        ws, cnt = splitk_workspace(x.device, M, N, BN)
    else:
        ws, cnt = y, y  # unused
    NR = KR * MP
    # the 8 Z tiles of a group are buffered per pipeline stage: keep them within ~160 KB
    stages = max(1, min(cfg.num_stages, (160 * 1024) // (8 * G * NR * 2)))
    if cfg.zpre:
        z = torch.empty(J * n_groups * 8 * G * NR, dtype=x.dtype, device=x.device)
        _zprep_kernel[(J * n_groups * 8,)](x2, packed.v, z, M, K, k, n_groups, x2.stride(0),
                                           G=G, KR=KR, MP=MP, num_warps=cfg.zprep_warps)
    else:
        z = y  # unused
    compiled = _decode_kernel[(n_tiles, splits)](
        x2, packed.signs, packed.u, packed.v, bias if bias is not None else y, y, ws, cnt, z,
        M, N, K, k, (K + 7) // 8, J,
        x2.stride(0), y.stride(0),
        n_groups, gps,
        G=G, BN=BN, KR=KR, MP=MP, UNPACK=unpack, SPLIT=splits > 1, HAS_BIAS=bias is not None,
        DOT_F32=interpret_mode() and x.dtype == torch.bfloat16,
        EVEN_K=K % (8 * G) == 0, EVEN_N=N % BN == 0, EVEN_R=k == KR, ZPRE=cfg.zpre,
        FLAT=cfg.flat and cfg.zpre and K % (8 * G) == 0,
        num_warps=cfg.num_warps, num_stages=stages,
    )
    y = y.reshape(*x.shape[:-1], N)
    return (y, compiled) if return_compiled else y


def bitstack_linear_decode(x: torch.Tensor, packed: PackedBitStack,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) for few tokens, without rebuilding Ŵ.

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1); the product
            of its leading dims (tokens M) times the padded rank must be <= 256
            (``bitstack.kernels.dispatch.AVD_DECODE_WIDTH_LIMIT``).
        packed: :class:`PackedBitStack` of the J loaded blocks, same device.
        bias: optional float tensor (N,), added in float32 before the final rounding.
    Returns:
        shape (..., N), x's dtype.  Math: ±1 and ``fp(v·x)`` operands in x's dtype on the tensor
        cores with float32 accumulation.  ``input_scale`` is not an argument: fold it into ``v``
        with ``repack(blocks, input_scale=...)`` or multiply x yourself.
    Raises:
        ValueError on bad dtypes, shapes or devices.
    """
    return decode_launch(x, packed, bias, DecodeConfig())
