"""Codec ``planes``, decode kernel: y = x · Ŵᵀ (+ bias) for 1 to ``DECODE_MAX_M`` tokens, Ŵ never
formed (imports Triton: load lazily).  The dispatcher (:mod:`bitstack.kernels.api`) sends it
single tokens that the one-token kernel does not take (J > 8 blocks, groups of 8 or 16).

The code of a weight is f = 1 + Σ_i b_i 2^-(i+1) (:mod:`bitstack.kernels.planes.codes`).  A
program covers ``block_n`` rows and loops over tiles of ``block_k`` columns (split-K over the
tiles when the row tiles alone do not give ``programs_per_sm`` programs per SM: fp32 atomics into
a cached workspace, the last program of a row tile writes y, :mod:`bitstack.kernels._splitk`).
The signs are read as 32-bit words (int32 view of the stored bytes when ceil(K/8) % 4 == 0, else
four bytes assembled): word w of a row holds columns 32w..32w+31, one word per thread and row, so
that a thread serves many rows with the x values it loads.  For J ≥ 2 (and groups of ≥ 32
columns) the J words are first bit-transposed (``transpose4``/``transpose8``: 4 or 8 blocks, 0.5
or 1.5 operations per weight) into words of 4- or 8-bit codes, so that a weight's code costs one
shift and one masked OR into the float instead of two operations per block.  x is read from
``x_by_word_bit`` (float32, x[m, 32w + j] at [m, j, w], zero-padded): consecutive words' bit j are
consecutive floats.  Per (row, word): F = Σ f·x, X = Σ x, then ``y += A·X + B·(F - X)`` with
A = C + step·(2^(1-J) - 2), B = 4·step (a word lies in one group).  All arithmetic is float32 (x
upcast), rounded once to x's dtype.

Scratch (not weight memory): the split-K workspace and x's float32 copy (4 bytes per token and
column, per call).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from bitstack.kernels._checks import cdiv, next_pow2
from bitstack.kernels._splitk import split_k, splitk_workspace, store_rows
from bitstack.kernels.planes.codes import block_words, grid_coeffs, place, transpose4, transpose8
from bitstack.kernels.planes.layout import PackedPlanes, check_kernel_support, check_planes_args

DECODE_MAX_M = 8  # the decode kernel's largest token count (per-token accumulators in registers)


@triton.jit
def _word_code(w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15,
               p: tl.constexpr, J: tl.constexpr):
    """f = 1 + Σ_{i<J} b_i 2^-(i+1), float32, of bit ``p`` of the words w_i of blocks i (block i's
    bit goes to mantissa bit 22 - i)."""
    q = place(w0, 22 - p, 0x400000) | 0x3F800000
    if J > 1:
        q |= place(w1, 21 - p, 0x200000)
    if J > 2:
        q |= place(w2, 20 - p, 0x100000)
    if J > 3:
        q |= place(w3, 19 - p, 0x80000)
    if J > 4:
        q |= place(w4, 18 - p, 0x40000)
    if J > 5:
        q |= place(w5, 17 - p, 0x20000)
    if J > 6:
        q |= place(w6, 16 - p, 0x10000)
    if J > 7:
        q |= place(w7, 15 - p, 0x8000)
    if J > 8:
        q |= place(w8, 14 - p, 0x4000)
    if J > 9:
        q |= place(w9, 13 - p, 0x2000)
    if J > 10:
        q |= place(w10, 12 - p, 0x1000)
    if J > 11:
        q |= place(w11, 11 - p, 0x800)
    if J > 12:
        q |= place(w12, 10 - p, 0x400)
    if J > 13:
        q |= place(w13, 9 - p, 0x200)
    if J > 14:
        q |= place(w14, 8 - p, 0x100)
    if J > 15:
        q |= place(w15, 7 - p, 0x80)
    return q.to(tl.float32, bitcast=True)


@triton.jit
def _accum_fields(F, X, o_a, o_b, r: tl.constexpr, GB: tl.constexpr, TWO: tl.constexpr, xt_ptrs, KWP):
    """Add f·x and x of the bits GB·m + r (m < 32 / GB) of the words to F and X: field m of the
    code word ``o_a`` (blocks 0..GB-1) goes to mantissa bits 22..23-GB of f, field m of ``o_b``
    (blocks GB..2GB-1, when TWO) below it.  ``xt_ptrs``: xt of bit 0 of each word, per token."""
    for m in tl.static_range(32 // GB):
        t = place(o_a, 23 - GB - GB * m, ((1 << GB) - 1) << (23 - GB))
        if TWO:
            t = t | place(o_b, 23 - 2 * GB - GB * m, ((1 << GB) - 1) << (23 - 2 * GB))
        f = (t | 0x3F800000).to(tl.float32, bitcast=True)
        xp = tl.load(xt_ptrs + (GB * m + r) * KWP)
        F += f * xp
        X += xp
    return F, X


@triton.jit
def _planes_decode_kernel(
    xt_ptr, s_ptr, off_ptr, step_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, KB, NG, KWP, n_ktiles, tiles_per_split, stride_ym, coef,
    J: tl.constexpr, GS: tl.constexpr, NS: tl.constexpr, BN: tl.constexpr, MP: tl.constexpr,
    WORDS: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    SUB: tl.constexpr = 32 // GS if GS < 32 else 1  # groups per word
    PPS: tl.constexpr = 32 // SUB  # word bits per group piece
    # codes built bit by bit (1), or from words bit-transposed into 4- or 8-bit codes (blocks
    # 0..3 or 0..7, and 8..15 beside them), which costs fewer operations per weight from J = 2 on
    CODE: tl.constexpr = 1 if (J == 1 or GS < 32) else (4 if J <= 4 else 8)
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    # the NS words of a tile in an order the compiler cannot prove contiguous (an odd multiplier
    # permutes 0..NS-1): one word per thread and row, so that a thread holds many rows and the
    # x values it loads serve all of them
    perm = (tl.arange(0, NS) * 5) % NS
    offs_m = tl.arange(0, MP)
    EVEN: tl.constexpr = EVEN_N and EVEN_K
    # partial sums per (row, word slot) [BN, NS], or per (token, row, word slot) [MP, BN, NS] for
    # several tokens: every tensor of the loop is (a broadcast of) one layout, the sign words';
    # the slots are summed once, after the loop
    if MP == 1:
        rows = offs_n[:, None]  # [BN, 1]
        rmask = nmask[:, None]
        slot = perm[None, :]  # [1, NS]
        mcol = 0
        acc = tl.zeros([BN, NS], dtype=tl.float32)
        xz = tl.zeros([1, NS], dtype=tl.float32)  # the shape of x's sums
    else:
        rows = offs_n[None, :, None]  # [1, BN, 1]
        rmask = nmask[None, :, None]
        slot = perm[None, None, :]  # [1, 1, NS]
        mcol = offs_m[:, None, None]  # [MP, 1, 1]
        acc = tl.zeros([MP, BN, NS], dtype=tl.float32)
        xz = tl.zeros([MP, 1, NS], dtype=tl.float32)
    t0 = pid_s * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_ktiles)
    for t in range(t0, t1):
        word = t * NS + slot
        wmask = rmask & (word * 32 < K)
        w0, w1, w2, w3, w4, w5, w6, w7 = block_words(s_ptr, 0, rows, wmask, word, N, KB, J, WORDS, EVEN)
        w8, w9, w10, w11, w12, w13, w14, w15 = block_words(s_ptr, 8, rows, wmask, word, N, KB, J, WORDS, EVEN)
        if CODE == 1:  # one code bit at a time (few blocks, or groups narrower than a word)
            for sub in tl.static_range(SUB):
                col0 = word * 32 + sub * PPS  # first column of this piece of each word
                A, B = grid_coeffs(off_ptr, step_ptr, rows, rmask, col0 // GS, NG, coef)  # like acc
                F = tl.zeros_like(acc)
                X = tl.zeros_like(xz)
                for p in tl.static_range(sub * PPS, (sub + 1) * PPS):
                    f = _word_code(w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15, p, J)
                    xp = tl.load(xt_ptr + mcol * (32 * KWP) + p * KWP + word)  # like xz
                    F += f * xp
                    X += xp
                acc += A * X + B * (F - X)
        else:  # the words bit-transposed into CODE-bit codes first (a word lies in one group)
            col0 = word * 32
            A, B = grid_coeffs(off_ptr, step_ptr, rows, rmask, col0 // GS, NG, coef)  # like acc
            F = tl.zeros_like(acc)
            X = tl.zeros_like(xz)
            xt_ptrs = xt_ptr + mcol * (32 * KWP) + word  # like xz: bit 0 of each word
            if CODE == 4:
                o0, o1, o2, o3 = transpose4(w0, w1, w2, w3)
                F, X = _accum_fields(F, X, o0, o0, 0, 4, False, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o1, o1, 1, 4, False, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o2, o2, 2, 4, False, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o3, o3, 3, 4, False, xt_ptrs, KWP)
            else:
                o0, o1, o2, o3, o4, o5, o6, o7 = transpose8(w0, w1, w2, w3, w4, w5, w6, w7)
                p0, p1, p2, p3, p4, p5, p6, p7 = transpose8(w8, w9, w10, w11, w12, w13, w14, w15)
                F, X = _accum_fields(F, X, o0, p0, 0, 8, J > 8, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o1, p1, 1, 8, J > 8, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o2, p2, 2, 8, J > 8, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o3, p3, 3, 8, J > 8, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o4, p4, 4, 8, J > 8, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o5, p5, 5, 8, J > 8, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o6, p6, 6, 8, J > 8, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o7, p7, 7, 8, J > 8, xt_ptrs, KWP)
            acc += A * X + B * (F - X)
    if MP == 1:
        y_acc = tl.sum(acc, axis=1)[:, None]
    else:
        y_acc = tl.trans(tl.sum(acc, axis=2))
    store_rows(y_acc, offs_n, nmask, offs_m, offs_m < M, N, b_ptr, y_ptr, ws_ptr, cnt_ptr,
               pid_n, n_splits, stride_ym, SPLIT, HAS_BIAS)


def x_by_word_bit(x2: torch.Tensor, MP: int, words: int) -> torch.Tensor:
    """The decode kernel's copy of x: float32 (MP, 32, words), ``xt[m, j, w] = x[m, 32·w + j]``,
    zero past x's tokens and columns, so that the programs reading bit j of consecutive sign words
    read consecutive floats (one torch copy; a pad first when x is not (MP, 32·words))."""
    M, K = x2.shape
    if (M, K) != (MP, 32 * words):
        x2 = F.pad(x2, (0, 32 * words - K, 0, MP - M))
    return x2.view(MP, words, 32).transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)



@dataclass(frozen=True)
class PlanesDecodeConfig:
    """Launch parameters of the planes decode kernel.

    block_n: rows per program.  block_k: columns per loop step (a power of two >= 32: block_k / 32
    sign words of each row).  splits: programs along K (None: enough for ``programs_per_sm``
    programs per SM, at most one per column tile).
    """

    block_n: int = 32
    block_k: int = 256
    splits: int | None = None
    programs_per_sm: int = 4
    num_warps: int = 4
    num_stages: int = 1


def planes_decode_launch(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                         config: PlanesDecodeConfig | None = None, *, return_compiled: bool = False):
    """y = x · Ŵᵀ (+ bias) by the decode kernel with explicit launch parameters (module docstring).

    Args:
        x: float16 or bfloat16, shape (..., K) with 1 to ``DECODE_MAX_M`` tokens, CUDA (or CPU
            under TRITON_INTERPRET=1).
        packed: :class:`PackedPlanes`, same device; group_size a power of two >= 8, at most 16 blocks.
        bias: optional float tensor (N,), added in float32 before the final rounding.
        config: launch parameters (None: :class:`PlanesDecodeConfig`'s defaults; :func:`decode_config`
            gives the measured ones).
        return_compiled: return ``(y, compiled)``, Triton's compiled kernel (registers, PTX, SASS;
            None in the interpreter), instead of y.
    Returns:
        shape (..., N), x's dtype.
    Raises:
        ValueError on bad dtypes, shapes, devices, group sizes, block or token counts.
    """
    check_planes_args(x, packed, bias, need_gpu=True)
    check_kernel_support(packed)
    cfg = config or PlanesDecodeConfig()
    N, K, GS, J = packed.out_features, packed.in_features, packed.group_size, packed.num_blocks
    x2 = x.reshape(-1, K)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    M = x2.shape[0]
    if not 1 <= M <= DECODE_MAX_M:
        raise ValueError(f"the planes decode kernel takes 1 to {DECODE_MAX_M} tokens, got {M}: "
                         "use planes_linear_prefill for more")
    BN = cfg.block_n
    if cfg.block_k < 32 or cfg.block_k & (cfg.block_k - 1):
        raise ValueError(f"block_k must be a power of two >= 32, got {cfg.block_k}")
    NS = cfg.block_k // 32
    KB = (K + 7) // 8
    n_tiles = cdiv(N, BN)
    n_ktiles = cdiv(K, cfg.block_k)
    splits, tps = split_k(n_tiles, n_ktiles, cfg.splits, cfg.programs_per_sm, x.device)
    MP = next_pow2(M)
    words = KB % 4 == 0 and packed.signs.data_ptr() % 4 == 0
    signs = packed.signs.view(torch.int32) if words else packed.signs
    xt = x_by_word_bit(x2, MP, n_ktiles * NS)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    ws, cnt = splitk_workspace(x.device, M, N, BN) if splits > 1 else (y, y)
    compiled = _planes_decode_kernel[(n_tiles, splits)](
        xt, signs, packed.offset, packed.step, bias if bias is not None else y, y, ws, cnt,
        M, N, K, KB, packed.num_groups, n_ktiles * NS, n_ktiles, tps, y.stride(0), 2.0 ** (1 - J) - 2.0,
        J=J, GS=GS, NS=NS, BN=BN, MP=MP, WORDS=words, SPLIT=splits > 1, HAS_BIAS=bias is not None,
        EVEN_N=N % BN == 0, EVEN_K=K % cfg.block_k == 0 and words,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    y = y.reshape(*x.shape[:-1], N)
    return (y, compiled) if return_compiled else y


def decode_config(tokens: int, num_blocks: int) -> PlanesDecodeConfig:
    """The decode kernel's launch parameters for a call, the fastest measured on an H100 at
    14336x4096 (benchmarks/kernels/NOTES.md): 1 block: 64 rows x 128 columns per program, 16
    programs per SM; more blocks (more sign words held per row) or tokens: 32 rows x 256 columns."""
    if num_blocks == 1 and tokens == 1:
        return PlanesDecodeConfig(block_n=64, block_k=128, programs_per_sm=16)
    return PlanesDecodeConfig(block_n=32, block_k=256)
