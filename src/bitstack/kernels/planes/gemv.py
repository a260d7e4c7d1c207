"""Codec ``planes``, one-token kernel: y = x · Ŵᵀ (+ bias) with Ŵ never formed, the
x of a program's columns held in registers while the program streams over its rows.

Imports Triton at module level: import this module lazily (:mod:`bitstack.kernels.api` does).

Math (as in :mod:`bitstack.kernels.planes.decode`): per row and 32-column sign word (one group, so
group_size >= 32), F = Σ f·x with f = 1 + Σ_i b_i 2^-(i+1) the weight's J-bit code as a float in
[1, 2), X = Σ x, and the row's partial is ``A·X + B·(F - X)`` with A = C + step·(2^(1-J) - 2),
B = 4·step.  All float32, rounded once to x's dtype.

Layout of the work.  A program owns NW = 32·num_warps consecutive sign words of every row (one
word, 32 columns, per thread; neighbouring words are swapped so that the compiler does not
vectorise the loads, :func:`_unvectorised_range`) and ``rows_per_prog`` rows, which it walks R
rows at a time.  Before the row loop each thread loads the 32 x values of its word once, in the
order the codes come out of the bit transpose (``transpose4``/``transpose8`` of :mod:`.codes`:
field m of transposed word r is column CODE·m + r), as 32 separate [1, NW] tensors in the sign
words' own layout (a 3-D [fields, rows, words] formulation made Triton 3.6 convert layouts
through shared memory in the loop), so that per row and weight the work is one shift, one masked
OR and one FMA, and no x is loaded again.  The words of the next R rows are loaded before the
current ones are used (``PREFETCH``), so loads stay in flight during the arithmetic.  Programs
that share rows but own different words (split-K) add their float32 partials with atomics into a
workspace; the last of them (a counter per row program) writes y
(:func:`bitstack.kernels._splitk.splitk_workspace` provides both buffers).

Measured on an H100 (benchmarks/kernels/NOTES.md, ``sweep_planes_decode.py``): 14336x4096 at J = 3
/ 4 blocks 31 / 33 µs against fp16 ``F.linear``'s 55 µs, CUDA-graph replay.

Limits: 1 token, J ≤ 8 blocks, group_size a power of two ≥ 32; :func:`planes_gemv_supported`
says when it applies, otherwise :func:`bitstack.kernels.planes.decode.planes_decode_launch` serves.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitstack.kernels._checks import cdiv
from bitstack.kernels._splitk import sm_count, splitk_workspace
from bitstack.kernels.planes.codes import block_words, grid_coeffs, place, transpose4, transpose8
from bitstack.kernels.planes.layout import PackedPlanes, check_planes_args

GEMV_MAX_BLOCKS = 8  # codes of up to 8 bits: one or two 4-bit/8-bit transposes


def planes_gemv_supported(tokens: int, packed: PackedPlanes) -> bool:
    """Whether :func:`planes_gemv` takes this call: 1 token, 1 ≤ J ≤ 8, group_size a power of two ≥ 32."""
    gs = packed.group_size
    return tokens == 1 and 1 <= packed.num_blocks <= GEMV_MAX_BLOCKS and gs >= 32 and gs & (gs - 1) == 0


@triton.jit
def _unvectorised_range(n: tl.constexpr):
    """0..n-1 with neighbours swapped (i ^ 1): indices the compiler cannot prove contiguous, so
    that loads through them are not vectorised (one 32-bit word per thread), while the lanes of a
    warp still read one contiguous span (the pairs stay inside it: coalesced).  (The planes decode kernel's
    odd-multiplier permutation spreads a warp's words over 4x the cache sectors: L1-bound, ncu.)"""
    if n > 1:
        r = tl.arange(0, n) ^ 1
    else:
        r = tl.arange(0, n)
    return r


@triton.jit
def _x_at(x_ptr, col, K, EVEN: tl.constexpr):
    """x[col] as float32 (0 past K)."""
    if EVEN:
        v = tl.load(x_ptr + col)
    else:
        v = tl.load(x_ptr + col, mask=col < K, other=0.0)
    return v.to(tl.float32)


@triton.jit
def _x_fields(x_ptr, word, K, r: tl.constexpr, CODE: tl.constexpr, EVEN: tl.constexpr):
    """The x of field m of transposed word r, i.e. of column 32·w + CODE·m + r, for the words
    ``word`` ([1, NW]): a tuple of 8 float32 [1, NW] tensors, m = 0..7 (m < 32 / CODE used)."""
    c = 32 * word + r
    return (_x_at(x_ptr, c, K, EVEN), _x_at(x_ptr, c + CODE, K, EVEN),
            _x_at(x_ptr, c + 2 * CODE, K, EVEN), _x_at(x_ptr, c + 3 * CODE, K, EVEN),
            _x_at(x_ptr, c + (4 % (32 // CODE)) * CODE, K, EVEN), _x_at(x_ptr, c + (5 % (32 // CODE)) * CODE, K, EVEN),
            _x_at(x_ptr, c + (6 % (32 // CODE)) * CODE, K, EVEN), _x_at(x_ptr, c + (7 % (32 // CODE)) * CODE, K, EVEN))


@triton.jit
def _fields_dot(o, xs, CODE: tl.constexpr):
    """Σ_m f_m · x_m over the fields m of the code words ``o`` ([R, NW] int32, field m = bits
    CODE·m .. CODE·m + CODE - 1, block 0 in the field's top bit) and ``xs`` (tuple of [1, NW]):
    f = 1 + field · 2^-CODE, built as float32 bits (the field placed in mantissa bits
    22 .. 23 - CODE): one shift, one masked OR and one FMA per weight.  Returns [R, NW]."""
    acc = tl.zeros(o.shape, dtype=tl.float32)
    for m in tl.static_range(32 // CODE):
        t = place(o, 23 - CODE - CODE * m, ((1 << CODE) - 1) << (23 - CODE))
        acc += (t | 0x3F800000).to(tl.float32, bitcast=True) * xs[m]
    return acc


@triton.jit
def _xsum(xs, CODE: tl.constexpr):
    """Σ_m xs[m] over m < 32 / CODE ([1, NW])."""
    total = xs[0]
    for m in tl.static_range(1, 32 // CODE):
        total += xs[m]
    return total


@triton.jit
def _row_partials(w0, w1, w2, w3, w4, w5, w6, w7, x0, x1, x2, x3, x4, x5, x6, x7, X, A, B,
                  CODE: tl.constexpr):
    """Σ over the program's words of A·X + B·(F - X) per row, float32 [R] (x0..x7: the tuples of
    :func:`_x_fields` for r = 0..7)."""
    if CODE == 4:
        o0, o1, o2, o3 = transpose4(w0, w1, w2, w3)
        F = _fields_dot(o0, x0, 4) + _fields_dot(o1, x1, 4) + _fields_dot(o2, x2, 4) + _fields_dot(o3, x3, 4)
    else:
        o0, o1, o2, o3, o4, o5, o6, o7 = transpose8(w0, w1, w2, w3, w4, w5, w6, w7)
        F = (_fields_dot(o0, x0, 8) + _fields_dot(o1, x1, 8) + _fields_dot(o2, x2, 8) + _fields_dot(o3, x3, 8)
             + _fields_dot(o4, x4, 8) + _fields_dot(o5, x5, 8) + _fields_dot(o6, x6, 8) + _fields_dot(o7, x7, 8))
    return tl.sum(A * X + B * (F - X), axis=1)


@triton.jit
def _planes_gemv_kernel(
    x_ptr, s_ptr, off_ptr, step_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
    N, K, KB, NG, rows_per_prog, coef,
    J: tl.constexpr, GS: tl.constexpr, NW: tl.constexpr, R: tl.constexpr, WORDS: tl.constexpr,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    DT: tl.constexpr = y_ptr.dtype.element_ty
    CODE: tl.constexpr = 4 if J <= 4 else 8
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_splits = tl.num_programs(1)
    KW = (K + 31) // 32
    word = pid_k * NW + _unvectorised_range(NW)[None, :]  # [1, NW], one word per thread
    wvalid = word < KW
    x0 = _x_fields(x_ptr, word, K, 0, CODE, EVEN_K)  # tuples of [1, NW], held for all rows
    x1 = _x_fields(x_ptr, word, K, 1, CODE, EVEN_K)
    x2 = _x_fields(x_ptr, word, K, 2, CODE, EVEN_K)
    x3 = _x_fields(x_ptr, word, K, 3, CODE, EVEN_K)
    X = _xsum(x0, CODE) + _xsum(x1, CODE) + _xsum(x2, CODE) + _xsum(x3, CODE)  # [1, NW]
    x4 = x0
    x5 = x0
    x6 = x0
    x7 = x0
    if CODE == 8:
        x4 = _x_fields(x_ptr, word, K, 4, CODE, EVEN_K)
        x5 = _x_fields(x_ptr, word, K, 5, CODE, EVEN_K)
        x6 = _x_fields(x_ptr, word, K, 6, CODE, EVEN_K)
        x7 = _x_fields(x_ptr, word, K, 7, CODE, EVEN_K)
        X += _xsum(x4, CODE) + _xsum(x5, CODE) + _xsum(x6, CODE) + _xsum(x7, CODE)
    g = (32 * word) // GS  # [1, NW], the group of each word
    EVEN: tl.constexpr = EVEN_N and EVEN_K
    row0 = pid_r * rows_per_prog
    row_end = tl.minimum(row0 + rows_per_prog, N)
    offs_r = tl.arange(0, R)
    if PREFETCH:
        rows = row0 + offs_r[:, None]
        n0, n1, n2, n3, n4, n5, n6, n7 = block_words(s_ptr, 0, rows, (rows < row_end) & wvalid, word, N, KB, J,
                                                     WORDS, EVEN)
    for r0 in range(row0, row_end, R):
        rows = r0 + offs_r[:, None]  # [R, 1]
        rmask = rows < N
        if PREFETCH:
            w0, w1, w2, w3, w4, w5, w6, w7 = n0, n1, n2, n3, n4, n5, n6, n7
            nrows = rows + R
            n0, n1, n2, n3, n4, n5, n6, n7 = block_words(s_ptr, 0, nrows, (nrows < row_end) & wvalid, word, N, KB,
                                                         J, WORDS, False)
        else:
            w0, w1, w2, w3, w4, w5, w6, w7 = block_words(s_ptr, 0, rows, rmask & wvalid, word, N, KB, J, WORDS, EVEN)
        A, B = grid_coeffs(off_ptr, step_ptr, rows, rmask & wvalid, g, NG, coef)  # [R, NW]
        part = _row_partials(w0, w1, w2, w3, w4, w5, w6, w7, x0, x1, x2, x3, x4, x5, x6, x7, X, A, B, CODE)  # [R]
        orows = r0 + offs_r
        omask = orows < N
        if SPLIT:
            tl.atomic_add(ws_ptr + orows, part, mask=omask, sem="relaxed")
        else:
            if HAS_BIAS:
                part += tl.load(b_ptr + orows, mask=omask, other=0.0).to(tl.float32)
            tl.store(y_ptr + orows, part.to(DT), mask=omask)
    if SPLIT:  # the last program of this row range writes y and re-zeroes the workspace and counter
        tl.debug_barrier()
        count = tl.atomic_add(cnt_ptr + pid_r, 1, sem="acq_rel")
        if count == n_splits - 1:
            for r0 in range(row0, row_end, R):
                orows = r0 + offs_r
                omask = orows < N
                zero = tl.zeros([R], dtype=tl.float32)
                total = tl.atomic_add(ws_ptr + orows, zero, mask=omask, sem="relaxed")  # coherent read (L2)
                tl.store(ws_ptr + orows, zero, mask=omask)
                if HAS_BIAS:
                    total += tl.load(b_ptr + orows, mask=omask, other=0.0).to(tl.float32)
                tl.store(y_ptr + orows, total.to(DT), mask=omask)
            tl.atomic_xchg(cnt_ptr + pid_r, 0, sem="relaxed")


@dataclass(frozen=True)
class PlanesGemvConfig:
    """Launch parameters of :func:`planes_gemv` (None = chosen per shape by :func:`gemv_config`).

    num_warps: NW = 32·num_warps sign words (32·NW columns) per program; default 4 or 2 when NW
    divides the words of a row (no idle threads), else the fewest that cover a short row, else 1.  rows: R,
    rows per step of a program's loop (a power of two).  programs_per_sm: the row programs are
    sized so that row programs × K splits ≈ this × the SM count; default 16 / num_warps.
    prefetch: load the next R rows' words before using the current ones.
    """

    num_warps: int | None = None
    rows: int = 2
    programs_per_sm: int | None = None
    prefetch: bool = True


@functools.lru_cache(maxsize=256)
def gemv_config(in_features: int, config: PlanesGemvConfig | None = None) -> PlanesGemvConfig:
    """``config`` with its None fields filled for a weight of ``in_features`` columns: the rule
    measured best on an H100 over 14336x4096, 4096x14336, 4096x4096 and 1024x4096 at J = 1..8
    (benchmarks/kernels/NOTES.md).  Cached (a pure function of hashable arguments)."""
    cfg = config or PlanesGemvConfig()
    warps = cfg.num_warps
    if warps is None:
        words = (in_features + 31) // 32
        warps = next((w for w in (4, 2) if words % (32 * w) == 0), None)
        if warps is None:  # the fewest warps that cover a short row, else one (the least idle)
            warps = next((w for w in (1, 2, 4) if 32 * w >= words), 1)
    pps = cfg.programs_per_sm if cfg.programs_per_sm is not None else max(1, 16 // warps)
    return PlanesGemvConfig(num_warps=warps, rows=cfg.rows, programs_per_sm=pps, prefetch=cfg.prefetch)


def planes_gemv(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                config: PlanesGemvConfig | None = None, *, out: torch.Tensor | None = None,
                return_compiled: bool = False):
    """y = x · Ŵᵀ (+ bias) for ONE token, Ŵ never formed (module docstring).

    Args:
        x: float16 or bfloat16, shape (..., K) with one token in all, CUDA (or CPU under
            TRITON_INTERPRET=1).
        packed: :class:`PackedPlanes` of 1 to 8 blocks, same device; group_size a power of two ≥ 32.
        bias: optional float tensor (N,), added in float32 before the final rounding.
        config: launch parameters (:class:`PlanesGemvConfig`; None fields chosen by :func:`gemv_config`).
        out: optional x-dtype tensor of N contiguous elements to write y into (e.g. a row of a
            bigger result); returned reshaped to (..., N).
        return_compiled: return ``(y, compiled)``, Triton's compiled kernel (registers, PTX, SASS;
            None in the interpreter), instead of y.
    Returns:
        shape (..., N), x's dtype.
    Raises:
        ValueError on bad dtypes, shapes or devices, more than one token, or a block count or
        group size outside :func:`planes_gemv_supported`.
    """
    check_planes_args(x, packed, bias, need_gpu=True)
    return gemv_launch(x, packed, bias, config, out=out, return_compiled=return_compiled)


def gemv_launch(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                config: PlanesGemvConfig | None = None, *, out: torch.Tensor | None = None,
                return_compiled: bool = False):
    """:func:`planes_gemv` for arguments that passed ``check_planes_args`` already (a dispatcher's
    loop over tokens checks its tensors once); the token, block, group and ``out`` checks stay."""
    N, K, J = packed.out_features, packed.in_features, packed.num_blocks
    tokens = x.numel() // K
    if not planes_gemv_supported(tokens, packed):
        raise ValueError(f"planes_gemv takes 1 token, 1..{GEMV_MAX_BLOCKS} blocks and a power-of-two group_size >= 32; "
                         f"got {tokens} tokens, {J} blocks, group_size {packed.group_size} "
                         "(use bitstack.kernels.planes.decode.planes_decode_launch)")
    cfg = gemv_config(K, config)
    R = cfg.rows
    if R < 1 or R & (R - 1) or cfg.num_warps < 1 or cfg.num_warps & (cfg.num_warps - 1):
        raise ValueError(f"rows and num_warps must be powers of two, got {R} and {cfg.num_warps}")
    x1 = x.reshape(K)
    if not x1.is_contiguous():
        x1 = x1.contiguous()
    NW = 32 * cfg.num_warps
    KB = (K + 7) // 8
    KW = (K + 31) // 32
    splits = cdiv(KW, NW)
    row_progs = max(1, min(cdiv(N, R), cdiv(cfg.programs_per_sm * sm_count(x.device), splits)))
    rows_per_prog = cdiv(cdiv(N, row_progs), R) * R
    row_progs = cdiv(N, rows_per_prog)
    words = KB % 4 == 0 and packed.signs.data_ptr() % 4 == 0
    signs = packed.signs.view(torch.int32) if words else packed.signs
    if out is None:
        y = torch.empty(N, dtype=x.dtype, device=x.device)
    elif out.dtype != x.dtype or out.numel() != N or not out.is_contiguous() or out.device != x.device:
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of {N} elements on {x.device}")
    else:
        y = out.view(N)
    ws, cnt = splitk_workspace(x.device, 1, N, R) if splits > 1 else (y, y)
    compiled = _planes_gemv_kernel[(row_progs, splits)](
        x1, signs, packed.offset, packed.step, bias if bias is not None else y, y, ws, cnt,
        N, K, KB, packed.num_groups, rows_per_prog, 2.0 ** (1 - J) - 2.0,
        J=J, GS=packed.group_size, NW=NW, R=R, WORDS=words, SPLIT=splits > 1, HAS_BIAS=bias is not None,
        EVEN_N=N % R == 0, EVEN_K=words and K % (32 * NW) == 0, PREFETCH=cfg.prefetch,
        num_warps=cfg.num_warps,
    )
    y = y.reshape(*x.shape[:-1], N)
    return (y, compiled) if return_compiled else y
