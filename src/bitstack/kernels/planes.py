"""Triton kernels for codec ``planes``: y = x · Ŵᵀ (+ bias), Ŵ = C + Σ_{i<J} S_i ⊙ expand(step)·2^-i.

Imports Triton at module level: import this module lazily (``bitstack.kernels`` does).

The J sign bits of a weight are one J-bit code.  With b_i ∈ {0, 1} (1 = +1) and
``f = 1 + Σ_i b_i 2^-(i+1)`` ∈ [1, 2),

    Σ_i S_i 2^-i = 4 (f - 1) - 2 + 2^(1-J),   so   Ŵ = C + step · (2^(1-J) - 6) + 4 step · f.

``f`` is built directly as the bits of a float32: 1.0 (0x3F800000) with block i's bit ORed into
mantissa bit 22 - i (J ≤ 16, ``KERNEL_MAX_BLOCKS``); no conversion instruction.  The group
size must be a power of two ≥ 8 (``planes_group_supported``).  All arithmetic is float32 (x
upcast), rounded once to x's dtype.

* **Decode** (1 to ``DECODE_MAX_M`` tokens, :func:`planes_linear_decode`; Ŵ never formed).  A
  program covers ``block_n`` rows and loops over tiles of ``block_k`` columns (split-K over the
  tiles when the row tiles alone do not give ``programs_per_sm`` programs per SM: fp32 atomics
  into a cached workspace, the last program of a row tile writes y, :mod:`bitstack.kernels._splitk`).
  The signs are read as 32-bit words (int32 view of the stored bytes when ceil(K/8) % 4 == 0,
  else four bytes assembled): word w of a row holds columns 32w..32w+31, one word per thread and
  row, so that a thread serves many rows with the x values it loads.  For J ≥ 2 (and groups of
  ≥ 32 columns) the J words are first bit-transposed (``_transpose4``/``_transpose8``: 4 or 8
  blocks, 0.5 or 1.5 operations per weight) into words of 4- or 8-bit codes, so that a weight's
  code costs one shift and one masked OR into the float instead of two operations per block.  x
  is read from ``x_by_word_bit`` (float32, x[m, 32w + j] at [m, j, w], zero-padded): consecutive
  words' bit j are consecutive floats.  Per (row, word): F = Σ f·x, X = Σ x, then
  ``y += A·X + B·(F - X)`` with A = C + step·(2^(1-J) - 2), B = 4·step (a word lies in one group).
* **Rebuild** (:func:`rebuild_planes_rows`): rows of Ŵ = A' + B·f, A' = C + step·(2^(1-J) - 6), a
  [rows, block_k] tile per program, the 8 bits of a sign byte a tensor axis, flattened to
  contiguous columns for wide stores.
* **Prefill** (many tokens, :func:`planes_linear_prefill`): rows of Ŵ rebuilt a chunk at a time
  into a bounded scratch (≤ 64 MiB by default, cached per device/dtype/shape,
  :func:`bitstack.kernels.rebuild.chunked_linear`), each chunk multiplied by cuBLAS.

Scratch (not weight memory): the split-K workspace, x's float32 copy (4 bytes per token and
column, per call) and the prefill's row scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from bitstack.kernels._checks import check_planes_args
from bitstack.kernels._splitk import split_k, splitk_workspace, store_rows
from bitstack.kernels.planes_layout import KERNEL_MAX_BLOCKS, PackedPlanes, planes_group_supported
from bitstack.kernels.rebuild import DEFAULT_CHUNK_BYTES, chunked_linear

DECODE_MAX_M = 8  # the decode kernel's largest token count (per-token accumulators in registers)


@triton.jit
def _grid_coeffs(off_ptr, step_ptr, rows, nmask, g, NG, coef):
    """(C + coef·step, 4·step), float32, of the rows ``rows`` and groups ``g`` (broadcastable
    index tensors; ``nmask`` the rows in range; 0 where masked)."""
    gmask = nmask & (g < NG)
    idx = rows * NG + g
    c = tl.load(off_ptr + idx, mask=gmask, other=0.0).to(tl.float32)
    s = tl.load(step_ptr + idx, mask=gmask, other=0.0).to(tl.float32)
    return c + coef * s, 4.0 * s


@triton.jit
def _load_words(s_ptr, i: tl.constexpr, rows, wmask, word, N, KB, WORDS: tl.constexpr, EVEN: tl.constexpr):
    """Block i's sign words (int32, [BN, NS] or [1, BN, NS]) of the rows ``rows`` ([BN, 1] or
    [1, BN, 1]) and the words ``word`` of a row: bit j of word w is column 32·w + j.  WORDS: ``s_ptr`` is the
    signs viewed as int32 (KB % 4 == 0); else four bytes are loaded and assembled (bytes past KB
    read as 0).  ``wmask``: rows and words in range."""
    if WORDS:
        KW = KB // 4
        ptrs = s_ptr + i * N * KW + rows * KW + word
        if EVEN:
            w = tl.load(ptrs)
        else:
            w = tl.load(ptrs, mask=wmask, other=0)
    else:
        ptrs = s_ptr + i * N * KB + rows * KB + 4 * word
        w = tl.load(ptrs, mask=wmask & (4 * word < KB), other=0).to(tl.int32)
        for c in tl.static_range(1, 4):
            byte = tl.load(ptrs + c, mask=wmask & (4 * word + c < KB), other=0)
            w = w | (byte.to(tl.int32) << (8 * c))
    return w


@triton.jit
def _block_words(s_ptr, first: tl.constexpr, rows, wmask, word, N, KB, J: tl.constexpr, WORDS: tl.constexpr,
                 EVEN: tl.constexpr):
    """The sign words (:func:`_load_words`) of blocks first .. first + 7, zero for blocks >= J."""
    zero = tl.zeros_like(rows + word)
    w0 = zero
    w1 = zero
    w2 = zero
    w3 = zero
    w4 = zero
    w5 = zero
    w6 = zero
    w7 = zero
    if J > first:
        w0 = _load_words(s_ptr, first, rows, wmask, word, N, KB, WORDS, EVEN)
    if J > first + 1:
        w1 = _load_words(s_ptr, first + 1, rows, wmask, word, N, KB, WORDS, EVEN)
    if J > first + 2:
        w2 = _load_words(s_ptr, first + 2, rows, wmask, word, N, KB, WORDS, EVEN)
    if J > first + 3:
        w3 = _load_words(s_ptr, first + 3, rows, wmask, word, N, KB, WORDS, EVEN)
    if J > first + 4:
        w4 = _load_words(s_ptr, first + 4, rows, wmask, word, N, KB, WORDS, EVEN)
    if J > first + 5:
        w5 = _load_words(s_ptr, first + 5, rows, wmask, word, N, KB, WORDS, EVEN)
    if J > first + 6:
        w6 = _load_words(s_ptr, first + 6, rows, wmask, word, N, KB, WORDS, EVEN)
    if J > first + 7:
        w7 = _load_words(s_ptr, first + 7, rows, wmask, word, N, KB, WORDS, EVEN)
    return w0, w1, w2, w3, w4, w5, w6, w7


@triton.jit
def _place(w, s: tl.constexpr, bit: tl.constexpr):
    """(w shifted left by s, right by -s if s < 0) & bit: one word bit moved to the code bit ``bit``."""
    if s >= 0:
        t = w << s
    else:
        t = w >> (-s)
    return t & bit


@triton.jit
def _word_code(w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15,
               p: tl.constexpr, J: tl.constexpr):
    """f = 1 + Σ_{i<J} b_i 2^-(i+1), float32, of bit ``p`` of the words w_i of blocks i (block i's
    bit goes to mantissa bit 22 - i)."""
    q = _place(w0, 22 - p, 0x400000) | 0x3F800000
    if J > 1:
        q |= _place(w1, 21 - p, 0x200000)
    if J > 2:
        q |= _place(w2, 20 - p, 0x100000)
    if J > 3:
        q |= _place(w3, 19 - p, 0x80000)
    if J > 4:
        q |= _place(w4, 18 - p, 0x40000)
    if J > 5:
        q |= _place(w5, 17 - p, 0x20000)
    if J > 6:
        q |= _place(w6, 16 - p, 0x10000)
    if J > 7:
        q |= _place(w7, 15 - p, 0x8000)
    if J > 8:
        q |= _place(w8, 14 - p, 0x4000)
    if J > 9:
        q |= _place(w9, 13 - p, 0x2000)
    if J > 10:
        q |= _place(w10, 12 - p, 0x1000)
    if J > 11:
        q |= _place(w11, 11 - p, 0x800)
    if J > 12:
        q |= _place(w12, 10 - p, 0x400)
    if J > 13:
        q |= _place(w13, 9 - p, 0x200)
    if J > 14:
        q |= _place(w14, 8 - p, 0x100)
    if J > 15:
        q |= _place(w15, 7 - p, 0x80)
    return q.to(tl.float32, bitcast=True)


@triton.jit
def _zip(u, v, d: tl.constexpr, hi: tl.constexpr, lo: tl.constexpr):
    """Interleave fields of d bits of two words (hi/lo: the masks of the upper/lower d bits of each
    2d-bit field): returns ((u & hi) | (v >> d & lo), (u << d & hi) | (v & lo))."""
    return (u & hi) | ((v >> d) & lo), ((u << d) & hi) | (v & lo)


@triton.jit
def _transpose4(w0, w1, w2, w3):
    """The words of blocks 0..3 (bit c = column c) as 4 words of 4-bit codes: output r's field m
    (bits 4m..4m+3) is the code of column 4m + r, block 0 in its top bit."""
    a_odd, a_even = _zip(w0, w1, 1, -1431655766, 0x55555555)  # 0xAAAAAAAA as int32
    b_odd, b_even = _zip(w2, w3, 1, -1431655766, 0x55555555)
    o3, o1 = _zip(a_odd, b_odd, 2, -858993460, 0x33333333)  # 0xCCCCCCCC as int32
    o2, o0 = _zip(a_even, b_even, 2, -858993460, 0x33333333)
    return o0, o1, o2, o3


@triton.jit
def _transpose8(w0, w1, w2, w3, w4, w5, w6, w7):
    """The words of blocks 0..7 as 8 words of 8-bit codes: output r's field m (bits 8m..8m+7) is
    the code of column 8m + r, block 0 in its top bit."""
    l0, l1, l2, l3 = _transpose4(w0, w1, w2, w3)
    h0, h1, h2, h3 = _transpose4(w4, w5, w6, w7)
    o4, o0 = _zip(l0, h0, 4, -252645136, 0x0F0F0F0F)  # 0xF0F0F0F0 as int32
    o5, o1 = _zip(l1, h1, 4, -252645136, 0x0F0F0F0F)
    o6, o2 = _zip(l2, h2, 4, -252645136, 0x0F0F0F0F)
    o7, o3 = _zip(l3, h3, 4, -252645136, 0x0F0F0F0F)
    return o0, o1, o2, o3, o4, o5, o6, o7


@triton.jit
def _accum_fields(F, X, o_a, o_b, r: tl.constexpr, GB: tl.constexpr, TWO: tl.constexpr, xt_ptrs, KWP):
    """Add f·x and x of the bits GB·m + r (m < 32 / GB) of the words to F and X: field m of the
    code word ``o_a`` (blocks 0..GB-1) goes to mantissa bits 22..23-GB of f, field m of ``o_b``
    (blocks GB..2GB-1, when TWO) below it.  ``xt_ptrs``: xt of bit 0 of each word, per token."""
    for m in tl.static_range(32 // GB):
        t = _place(o_a, 23 - GB - GB * m, ((1 << GB) - 1) << (23 - GB))
        if TWO:
            t = t | _place(o_b, 23 - 2 * GB - GB * m, ((1 << GB) - 1) << (23 - 2 * GB))
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
    KT: tl.constexpr = NS * 32  # columns per tile: NS words of each row
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
        w0, w1, w2, w3, w4, w5, w6, w7 = _block_words(s_ptr, 0, rows, wmask, word, N, KB, J, WORDS, EVEN)
        w8, w9, w10, w11, w12, w13, w14, w15 = _block_words(s_ptr, 8, rows, wmask, word, N, KB, J, WORDS, EVEN)
        if CODE == 1:  # one code bit at a time (few blocks, or groups narrower than a word)
            for sub in tl.static_range(SUB):
                col0 = word * 32 + sub * PPS  # first column of this piece of each word
                A, B = _grid_coeffs(off_ptr, step_ptr, rows, rmask, col0 // GS, NG, coef)  # like acc
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
            A, B = _grid_coeffs(off_ptr, step_ptr, rows, rmask, col0 // GS, NG, coef)  # like acc
            F = tl.zeros_like(acc)
            X = tl.zeros_like(xz)
            xt_ptrs = xt_ptr + mcol * (32 * KWP) + word  # like xz: bit 0 of each word
            if CODE == 4:
                o0, o1, o2, o3 = _transpose4(w0, w1, w2, w3)
                F, X = _accum_fields(F, X, o0, o0, 0, 4, False, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o1, o1, 1, 4, False, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o2, o2, 2, 4, False, xt_ptrs, KWP)
                F, X = _accum_fields(F, X, o3, o3, 3, 4, False, xt_ptrs, KWP)
            else:
                o0, o1, o2, o3, o4, o5, o6, o7 = _transpose8(w0, w1, w2, w3, w4, w5, w6, w7)
                p0, p1, p2, p3, p4, p5, p6, p7 = _transpose8(w8, w9, w10, w11, w12, w13, w14, w15)
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


@triton.jit
def _rebuild_tile(s_ptr, off_ptr, step_ptr, offs_n, nmask, byte, N, KB, NG, coef, J: tl.constexpr,
                  GS: tl.constexpr, BN: tl.constexpr, KT: tl.constexpr, DT: tl.constexpr):
    """Ŵ's [BN, KT] tile of the rows ``offs_n`` ([BN]; ``nmask`` those in range) and the sign bytes
    ``byte`` ([KT/8]) in ``DT``: A + B·f, the bytes of each block expanded to [BN, KT/8, 8] codes
    (the 8 bits of a byte a tensor axis, block i's bit b in mantissa bit 22 - i of f), flattened
    to [BN, KT] columns in order.  Bytes past KB read as 0."""
    bits = tl.arange(0, 8)
    bmask = nmask[:, None] & (byte < KB)[None, :]
    q = tl.full([BN, KT // 8, 8], 0x3F800000, tl.int32)  # 1.0f
    for i in tl.static_range(J):
        p = tl.load(s_ptr + i * N * KB + offs_n[:, None] * KB + byte[None, :], mask=bmask, other=0).to(tl.int32)
        q = q | ((p[:, :, None] << (22 - i - bits)[None, None, :]) & (0x400000 >> i))
    A, B = _grid_coeffs(off_ptr, step_ptr, offs_n[:, None, None], nmask[:, None, None],
                        ((8 * byte) // GS)[None, :, None], NG, coef)  # [BN, KT/8, 1]
    return tl.reshape((A + B * q.to(tl.float32, bitcast=True)).to(DT), [BN, KT])


@triton.jit
def _planes_rebuild_kernel(
    s_ptr, off_ptr, step_ptr, w_ptr, N, K, KB, NG, row0, n_rows, stride_w, coef,
    J: tl.constexpr, GS: tl.constexpr, BN: tl.constexpr, KT: tl.constexpr,
):
    """Ŵ[row0 + local, k0 : k0 + KT] for one [BN, KT] tile (:func:`_rebuild_tile`), stored in w's dtype."""
    local = tl.program_id(0) * BN + tl.arange(0, BN)
    lmask = local < n_rows
    k0 = tl.program_id(1) * KT
    byte = k0 // 8 + tl.arange(0, KT // 8)
    w = _rebuild_tile(s_ptr, off_ptr, step_ptr, row0 + local, lmask, byte, N, KB, NG, coef, J, GS, BN, KT,
                      w_ptr.dtype.element_ty)
    cols = k0 + tl.arange(0, KT)
    tl.store(w_ptr + local[:, None] * stride_w + cols[None, :], w, mask=lmask[:, None] & (cols < K)[None, :])


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _check_group(packed: PackedPlanes) -> None:
    if not planes_group_supported(packed.group_size):
        raise ValueError(f"the planes kernels need a power-of-two group_size >= 8, got {packed.group_size}; "
                         "use bitstack.kernels.planes_reference")
    if packed.num_blocks > KERNEL_MAX_BLOCKS:
        raise ValueError(f"the planes kernels take at most {KERNEL_MAX_BLOCKS} blocks, got {packed.num_blocks}; "
                         "use bitstack.kernels.planes_reference")


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


LAST_COMPILED: dict = {}  # last launched compiled kernel (benchmarks read its registers/IR)


def planes_decode_launch(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                         config: PlanesDecodeConfig | None = None) -> torch.Tensor:
    """:func:`planes_linear_decode` with explicit launch parameters (benchmarks use this)."""
    check_planes_args(x, packed, bias, need_gpu=True)
    _check_group(packed)
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
    n_tiles = triton.cdiv(N, BN)
    n_ktiles = triton.cdiv(K, cfg.block_k)
    splits, tps = split_k(n_tiles, n_ktiles, cfg.splits, cfg.programs_per_sm, x.device)
    MP = _next_pow2(M)
    words = KB % 4 == 0 and packed.signs.data_ptr() % 4 == 0
    signs = packed.signs.view(torch.int32) if words else packed.signs
    xt = x_by_word_bit(x2, MP, n_ktiles * NS)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    ws, cnt = splitk_workspace(x.device, M, N, BN) if splits > 1 else (y, y)
    LAST_COMPILED["planes_decode"] = _planes_decode_kernel[(n_tiles, splits)](
        xt, signs, packed.offset, packed.step, bias if bias is not None else y, y, ws, cnt,
        M, N, K, KB, packed.num_groups, n_ktiles * NS, n_ktiles, tps, y.stride(0), 2.0 ** (1 - J) - 2.0,
        J=J, GS=GS, NS=NS, BN=BN, MP=MP, WORDS=words, SPLIT=splits > 1, HAS_BIAS=bias is not None,
        EVEN_N=N % BN == 0, EVEN_K=K % cfg.block_k == 0 and words,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return y.reshape(*x.shape[:-1], N)


def default_decode_config(M: int, N: int, K: int, J: int) -> PlanesDecodeConfig:
    """Launch parameters of :func:`planes_linear_decode`, the fastest measured on an H100 at
    14336x4096 (benchmarks/kernels/NOTES.md): 1 block: 64 rows x 128 columns per program, 16
    programs per SM; more blocks (more sign words held per row) or tokens: 32 rows x 256 columns."""
    if J == 1 and M == 1:
        return PlanesDecodeConfig(block_n=64, block_k=128, programs_per_sm=16)
    return PlanesDecodeConfig(block_n=32, block_k=256)


GEMV_LOOP_MAX_TOKENS = 2  # up to this many tokens, one planes_gemv launch per token (measured, NOTES.md)


def planes_linear_decode(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) for few tokens (1 to ``BATCH_MAX_TOKENS`` = 16), Ŵ never written to memory.

    The fastest measured on an H100 (benchmarks/kernels/NOTES.md): up to ``GEMV_LOOP_MAX_TOKENS``
    tokens, where :func:`~bitstack.kernels.planes_gemv.planes_gemv_supported` (J ≤ 8, group_size
    ≥ 32), the one-token kernel once per token; other single tokens, the decode kernel
    (:func:`planes_decode_launch`); 2 to 16 tokens otherwise, the few-token kernel
    (:func:`~bitstack.kernels.planes_batch.planes_batch`: Ŵ tiles rebuilt on chip, tensor cores).

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedPlanes` of the J loaded blocks, same device; group_size a power of
            two >= 8.
        bias: optional float tensor (N,), added in float32 before the final rounding.
    Returns:
        shape (..., N), x's dtype.  Math: float32 throughout (x upcast), one rounding at the end
        (the few-token kernel rounds Ŵ's tiles to x's dtype first, as the prefill does).
    Raises:
        ValueError on bad dtypes, shapes, devices, group sizes or token counts.
    """
    check_planes_args(x, packed, bias, need_gpu=True)
    return decode_checked(x, packed, bias)


def decode_checked(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`planes_linear_decode` for arguments that passed ``check_planes_args`` already (the
    tensors are checked once per call, not once per kernel launch)."""
    from bitstack.kernels.planes_batch import BATCH_MAX_TOKENS, batch_launch
    from bitstack.kernels.planes_gemv import gemv_launch, planes_gemv_supported

    K = x.shape[-1]
    M = x.numel() // K
    if 1 <= M <= GEMV_LOOP_MAX_TOKENS and planes_gemv_supported(1, packed):
        x2 = x.reshape(M, K)
        y = torch.empty(M, packed.out_features, dtype=x.dtype, device=x.device)
        for m in range(M):
            gemv_launch(x2[m], packed, bias, out=y[m])
        return y.reshape(*x.shape[:-1], packed.out_features)
    if M == 1:
        cfg = default_decode_config(M, packed.out_features, packed.in_features, packed.num_blocks)
        return planes_decode_launch(x, packed, bias, cfg)
    if M > BATCH_MAX_TOKENS:
        raise ValueError(f"planes_linear_decode takes 1 to {BATCH_MAX_TOKENS} tokens, got {M}: "
                         "use planes_linear_prefill for more")
    return batch_launch(x, packed, bias)


def rebuild_planes_rows(packed: PackedPlanes, row0: int, rows: int, out: torch.Tensor, *,
                        block_n: int | None = None, block_k: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """Write Ŵ[row0 : row0 + rows, :] into ``out[:rows]`` (float32 math, rounded once to out's dtype).

    Args:
        packed: :class:`PackedPlanes` (CUDA, or CPU under TRITON_INTERPRET=1).
        row0, rows: first output feature and number of rows (row0 + rows <= N).
        out: float16 or bfloat16 (or float32), shape (>= rows, K), contiguous rows (last stride 1).
        block_n, block_k: rows and columns (a power of two >= 8) per program; None: 16 x 512 up to
            4 blocks, 32 x 256 above (measured on an H100, benchmarks/kernels/NOTES.md).
    Returns:
        ``out`` (rows beyond ``rows`` untouched).
    """
    packed.validate()
    _check_group(packed)
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
    grid = (triton.cdiv(rows, block_n), triton.cdiv(K, block_k))
    LAST_COMPILED["planes_rebuild"] = _planes_rebuild_kernel[grid](
        packed.signs, packed.offset, packed.step, out, N, K, (K + 7) // 8, packed.num_groups, row0, rows,
        out.stride(0), 2.0 ** (1 - J) - 6.0,
        J=J, GS=GS, BN=block_n, KT=block_k, num_warps=num_warps,
    )
    return out


def planes_linear_prefill(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                          chunk_bytes: int = DEFAULT_CHUNK_BYTES, rebuild: dict | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias): rows of Ŵ rebuilt in x's dtype a chunk at a time into a bounded
    scratch (:func:`rebuild_planes_rows`), each chunk multiplied by cuBLAS.

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedPlanes`, same device; group_size a power of two >= 8.
        bias: optional float tensor (N,) (added by cuBLAS in x's dtype).
        chunk_bytes: scratch size bound (``bitstack.kernels.rebuild.chunk_rows``).
        rebuild: keyword arguments of :func:`rebuild_planes_rows` (launch parameters).
    Returns:
        (..., N) in x's dtype.
    """
    check_planes_args(x, packed, bias, need_gpu=True)
    _check_group(packed)
    rb = dict(rebuild or {})

    def rows_into(n0: int, nr: int, scratch: torch.Tensor) -> None:
        rebuild_planes_rows(packed, n0, nr, scratch, **rb)

    return chunked_linear(x, packed.out_features, bias, rows_into, chunk_bytes, rb.get("block_n") or 32)
