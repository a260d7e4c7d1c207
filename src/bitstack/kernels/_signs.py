"""Triton helpers that turn sign bits into ±1 MMA operands (imports Triton: load lazily).

``sign_plane(P16, SRC1, SRC2, jb, DT, UNPACK)`` returns, for every element of the int16 tensor
``P16`` (low byte = one byte of the bit-plane layout), ``+1`` if bit ``jb`` is set else ``-1``, as
``DT`` (float16 or bfloat16).  ``SRC1 = P16 << 1`` and ``SRC2 = P16 >> 5`` are precomputed once per
byte tile by the caller (only UNPACK=2 reads them).  Three implementations, same results:

* UNPACK=0: plain Triton (shift, and, select).  The only one the CPU interpreter can run.
* UNPACK=1: PTX, two elements per 32-bit register: ``shl`` moves bit jb of both halves to the
  sign bits (15, 31), one ``lop3`` keeps them and ORs in the bits of 1.0 → ±1.  2 ALU ops / 2 elts.
* UNPACK=2: PTX, "mantissa" trick: bit ``p`` (1..8 for fp16, 1..6 for bf16) of a byte placed at
  mantissa position p, one ``lop3`` gives 1 or 1+2^(p-m) (m = mantissa bits), then one packed
  ``fma`` with exact constants maps it to -1 / +1.  1 ALU op + 1 FMA-pipe op / 2 elts.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _u1_fp16(P16, jb: tl.constexpr):
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; shl.b32 t, $1, $2; lop3.b32 $0, t, 0x80008000, 0x3C003C00, 0xEA; }",
        "=r,r,r,r", [P16, 15 - jb], dtype=tl.float16, is_pure=True, pack=2)


@triton.jit
def _u1_bf16(P16, jb: tl.constexpr):
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; shl.b32 t, $1, $2; lop3.b32 $0, t, 0x80008000, 0x3F803F80, 0xEA; }",
        "=r,r,r,r", [P16, 15 - jb], dtype=tl.bfloat16, is_pure=True, pack=2)


@triton.jit
def _u2_fp16(SRC, p: tl.constexpr):
    # value 1 + bit * 2^(p-10); a = 2^(11-p), b = -(a + 1): a*value + b = ±1 exactly.
    MASK: tl.constexpr = 0x00010001 << p
    A: tl.constexpr = ((26 - p) << 10) * 0x10001
    B: tl.constexpr = (0x8000 | ((26 - p) << 10) | (1 << (p - 1))) * 0x10001 - (1 << 32)
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; lop3.b32 t, $1, $2, 0x3C003C00, 0xEA; fma.rn.f16x2 $0, t, $4, $6; }",
        "=r,r,r,r,r,r,r,r", [SRC, MASK, A, B], dtype=tl.float16, is_pure=True, pack=2)


@triton.jit
def _u2_bf16(SRC, p: tl.constexpr):
    # value 1 + bit * 2^(p-7); a = 2^(8-p), b = -(a + 1).
    MASK: tl.constexpr = 0x00010001 << p
    A: tl.constexpr = ((135 - p) << 7) * 0x10001
    B: tl.constexpr = (0x8000 | ((135 - p) << 7) | (1 << (p - 1))) * 0x10001 - (1 << 32)
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; lop3.b32 t, $1, $2, 0x3F803F80, 0xEA; fma.rn.bf16x2 $0, t, $4, $6; }",
        "=r,r,r,r,r,r,r,r", [SRC, MASK, A, B], dtype=tl.bfloat16, is_pure=True, pack=2)


@triton.jit
def sign_plane(P16, SRC1, SRC2, jb: tl.constexpr, DT: tl.constexpr, UNPACK: tl.constexpr):
    if UNPACK == 1:
        if DT == tl.float16:
            out = _u1_fp16(P16, jb)
        else:
            out = _u1_bf16(P16, jb)
    elif UNPACK == 2:
        if DT == tl.float16:
            out = _u2_fp16(SRC1, jb + 1)
        else:
            if jb < 6:
                out = _u2_bf16(SRC1, jb + 1)
            else:
                out = _u2_bf16(SRC2, jb - 5)
    else:
        bit = (P16 >> jb) & 1
        out = tl.where(bit != 0, 1.0, -1.0).to(DT)
    return out
