"""Codec ``planes``: the Triton helpers shared by its kernels (imports Triton: load lazily).

A ``planes`` weight is Ŵ = C + Σ_{i<J} S_i ⊙ expand(step)·2^-i.  The J sign bits of a weight are
one J-bit code.  With b_i ∈ {0, 1} (1 = +1) and ``f = 1 + Σ_i b_i 2^-(i+1)`` ∈ [1, 2),

    Σ_i S_i 2^-i = 4 (f - 1) - 2 + 2^(1-J),   so   Ŵ = C + step · (2^(1-J) - 6) + 4 step · f.

``f`` is built directly as the bits of a float32: 1.0 (0x3F800000) with block i's bit ORed into
mantissa bit 22 - i (J ≤ 16, ``bitstack.kernels.dispatch.KERNEL_MAX_BLOCKS``); no conversion
instruction.  The group size must be a power of two ≥ 8 (``planes_group_supported``).

* Sign words (:func:`block_words`): the signs read as 32-bit words, bit j of word w of a row =
  column 32·w + j; (:func:`place`) moves one word bit to a code bit.
* Bit transposes (:func:`transpose4`, :func:`transpose8`): the words of 4 or 8 blocks turned into
  words of 4- or 8-bit codes (field m of output r = the code of column CODE·m + r), so that a
  weight's code costs one shift and one masked OR.
* Grid coefficients (:func:`grid_coeffs`): C + coef·step and 4·step per row and group.
* Tile rebuild (:func:`rebuild_tile`): a [rows, columns] tile of Ŵ from the sign bytes, the 8
  bits of a byte a tensor axis (the row-rebuild and few-token kernels).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grid_coeffs(off_ptr, step_ptr, rows, nmask, g, NG, coef):
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
def block_words(s_ptr, first: tl.constexpr, rows, wmask, word, N, KB, J: tl.constexpr, WORDS: tl.constexpr,
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
def place(w, s: tl.constexpr, bit: tl.constexpr):
    """(w shifted left by s, right by -s if s < 0) & bit: one word bit moved to the code bit ``bit``."""
    if s >= 0:
        t = w << s
    else:
        t = w >> (-s)
    return t & bit


@triton.jit
def _zip(u, v, d: tl.constexpr, hi: tl.constexpr, lo: tl.constexpr):
    """Interleave fields of d bits of two words (hi/lo: the masks of the upper/lower d bits of each
    2d-bit field): returns ((u & hi) | (v >> d & lo), (u << d & hi) | (v & lo))."""
    return (u & hi) | ((v >> d) & lo), ((u << d) & hi) | (v & lo)


@triton.jit
def transpose4(w0, w1, w2, w3):
    """The words of blocks 0..3 (bit c = column c) as 4 words of 4-bit codes: output r's field m
    (bits 4m..4m+3) is the code of column 4m + r, block 0 in its top bit."""
    a_odd, a_even = _zip(w0, w1, 1, -1431655766, 0x55555555)  # 0xAAAAAAAA as int32
    b_odd, b_even = _zip(w2, w3, 1, -1431655766, 0x55555555)
    o3, o1 = _zip(a_odd, b_odd, 2, -858993460, 0x33333333)  # 0xCCCCCCCC as int32
    o2, o0 = _zip(a_even, b_even, 2, -858993460, 0x33333333)
    return o0, o1, o2, o3


@triton.jit
def transpose8(w0, w1, w2, w3, w4, w5, w6, w7):
    """The words of blocks 0..7 as 8 words of 8-bit codes: output r's field m (bits 8m..8m+7) is
    the code of column 8m + r, block 0 in its top bit."""
    l0, l1, l2, l3 = transpose4(w0, w1, w2, w3)
    h0, h1, h2, h3 = transpose4(w4, w5, w6, w7)
    o4, o0 = _zip(l0, h0, 4, -252645136, 0x0F0F0F0F)  # 0xF0F0F0F0 as int32
    o5, o1 = _zip(l1, h1, 4, -252645136, 0x0F0F0F0F)
    o6, o2 = _zip(l2, h2, 4, -252645136, 0x0F0F0F0F)
    o7, o3 = _zip(l3, h3, 4, -252645136, 0x0F0F0F0F)
    return o0, o1, o2, o3, o4, o5, o6, o7


@triton.jit
def rebuild_tile(s_ptr, off_ptr, step_ptr, offs_n, nmask, byte, N, KB, NG, coef, J: tl.constexpr,
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
    A, B = grid_coeffs(off_ptr, step_ptr, offs_n[:, None, None], nmask[:, None, None],
                       ((8 * byte) // GS)[None, :, None], NG, coef)  # [BN, KT/8, 1]
    return tl.reshape((A + B * q.to(tl.float32, bitcast=True)).to(DT), [BN, KT])
