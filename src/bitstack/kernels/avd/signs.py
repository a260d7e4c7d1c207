"""Codec ``avd``: Triton helpers that turn sign bits into ±1 MMA operands (imports Triton: load lazily).

``sign_plane(P, jb, DT, UNPACK)`` returns, for every element of the uint8 tensor ``P`` (one byte of
the bit-plane layout each), ``+1`` if bit ``jb`` is set else ``-1``, as ``DT`` (float16 or
bfloat16), in P's layout.  Three implementations, same results:

* UNPACK=0: plain Triton (shift, and, select).  The only one the CPU interpreter can run.
* UNPACK=1: PTX on 4 bytes per 32-bit register: one ``shl`` brings bit jb of every byte to bit 7
  of that byte, two ``prmt`` move bytes 0,1 (2,3) to the high byte of each 16-bit half, two ``lop3``
  set the sign bits (15, 31) where the bit is 0 ((~t & 0x80008000) | 1.0, LUT 0xAE).  5 ALU ops for
  4 elements.
* UNPACK=2: PTX "mantissa" trick: ``prmt`` puts bytes 0,1 (2,3) in the low byte of each 16-bit
  half, one ``lop3`` keeps bit jb (a mantissa bit) and ORs in 1.0 → 1 or 1 + 2^(jb-m) (m mantissa
  bits), then one packed ``fma`` with exact constants maps that to -1 / +1.  4 ALU + 2 FMA-pipe ops
  for 4 elements (planes whose bit is not a usable mantissa position use UNPACK=1's code).
"""

from __future__ import annotations

import triton
import triton.language as tl

_U1_FP16 = tl.constexpr("{ .reg .b32 s, t0, t1; shl.b32 s, $2, $3; prmt.b32 t0, s, s, 0x1000; prmt.b32 t1, s, s, 0x3020; "
            "lop3.b32 $0, t0, 0x80008000, 0x3C003C00, 0xAE; lop3.b32 $1, t1, 0x80008000, 0x3C003C00, 0xAE; }")
_U1_BF16 = tl.constexpr("{ .reg .b32 s, t0, t1; shl.b32 s, $2, $3; prmt.b32 t0, s, s, 0x1000; prmt.b32 t1, s, s, 0x3020; "
            "lop3.b32 $0, t0, 0x80008000, 0x3F803F80, 0xAE; lop3.b32 $1, t1, 0x80008000, 0x3F803F80, 0xAE; }")
_U2_FP16 = tl.constexpr("{ .reg .b32 z, t0, t1; mov.b32 z, 0; prmt.b32 t0, $2, z, 0x4140; prmt.b32 t1, $2, z, 0x4342; "
            "lop3.b32 t0, t0, $3, 0x3C003C00, 0xEA; lop3.b32 t1, t1, $3, 0x3C003C00, 0xEA; "
            "fma.rn.f16x2 $0, t0, $7, $11; fma.rn.f16x2 $1, t1, $7, $11; }")
_U2_BF16 = tl.constexpr("{ .reg .b32 z, t0, t1; mov.b32 z, 0; prmt.b32 t0, $2, z, 0x4140; prmt.b32 t1, $2, z, 0x4342; "
            "lop3.b32 t0, t0, $3, 0x3F803F80, 0xEA; lop3.b32 t1, t1, $3, 0x3F803F80, 0xEA; "
            "fma.rn.bf16x2 $0, t0, $7, $11; fma.rn.bf16x2 $1, t1, $7, $11; }")
_C1 = tl.constexpr("=r,=r,r,r,r,r,r")
_C2 = tl.constexpr("=r,=r,r,r,r,r,r,r,r,r,r,r,r,r,r")


@triton.jit
def _u1(P, jb: tl.constexpr, DT: tl.constexpr):
    if DT == tl.float16:
        out = tl.inline_asm_elementwise(_U1_FP16, _C1, [P, 7 - jb], dtype=tl.float16, is_pure=True, pack=4)
    else:
        out = tl.inline_asm_elementwise(_U1_BF16, _C1, [P, 7 - jb], dtype=tl.bfloat16, is_pure=True, pack=4)
    return out


@triton.jit
def _u2(P, jb: tl.constexpr, DT: tl.constexpr):
    # bit jb sits at mantissa position p = jb: value 1 + bit * 2^(jb - m), m = 10 (fp16) or 7 (bf16);
    # a = 2^(m + 1 - jb) and b = -(a + 1) are exact for jb >= 1, and a * value + b = ±1 exactly.
    MASK: tl.constexpr = 0x00010001 << jb
    if DT == tl.float16:
        A: tl.constexpr = ((26 - jb) << 10) * 0x10001
        B: tl.constexpr = (0x8000 | ((26 - jb) << 10) | (1 << (jb - 1))) * 0x10001 - (1 << 32)
        out = tl.inline_asm_elementwise(_U2_FP16, _C2, [P, MASK, A, B], dtype=tl.float16, is_pure=True, pack=4)
    else:
        A: tl.constexpr = ((135 - jb) << 7) * 0x10001
        B: tl.constexpr = (0x8000 | ((135 - jb) << 7) | (1 << (jb - 1))) * 0x10001 - (1 << 32)
        out = tl.inline_asm_elementwise(_U2_BF16, _C2, [P, MASK, A, B], dtype=tl.bfloat16, is_pure=True, pack=4)
    return out


@triton.jit
def sign_plane(P, jb: tl.constexpr, DT: tl.constexpr, UNPACK: tl.constexpr):
    if UNPACK == 1:
        out = _u1(P, jb, DT)
    elif UNPACK == 2:
        if jb == 0:
            out = _u1(P, jb, DT)
        elif DT == tl.float16:
            out = _u2(P, jb, DT)
        elif jb == 7:
            out = _u1(P, jb, DT)
        else:
            out = _u2(P, jb, DT)
    else:
        bit = (P.to(tl.int32) >> jb) & 1
        out = tl.where(bit != 0, 1.0, -1.0).to(DT)
    return out


# w + (uv with its sign flipped where bit jb of the sign byte is 0), four elements per call:
# $0-$3 out, $4-$7 w, $8-$11 uv, $12 = 4 sign bytes, $13 = 7 - jb.  After s = bytes << (7 - jb),
# bit jb of byte e sits at bit 8e + 7; shifting by 24 - 8e brings it to the float sign bit 31, and
# one lop3 (c ^ (~a & b), LUT 0xA6) flips uv's sign where it is 0.
_FLIP_ADD = tl.constexpr(
    "{ .reg .b32 s, t; shl.b32 s, $12, $13; "
    "shl.b32 t, s, 24; lop3.b32 t, t, 0x80000000, $8, 0xA6; add.f32 $0, $4, t; "
    "shl.b32 t, s, 16; lop3.b32 t, t, 0x80000000, $9, 0xA6; add.f32 $1, $5, t; "
    "shl.b32 t, s, 8; lop3.b32 t, t, 0x80000000, $10, 0xA6; add.f32 $2, $6, t; "
    "lop3.b32 t, s, 0x80000000, $11, 0xA6; add.f32 $3, $7, t; }")
_C_FLIP = tl.constexpr("=r,=r,=r,=r,r,r,r,r,r,r,r,r,r,r,r,r,r")


# Same in 16-bit: $0-$1 out (w' as 2 x f16x2 / bf16x2), $2-$3 w, $4-$7 uv (fp32), $8 = 4 sign bytes,
# $9 = 7 - jb.  prmt in sign-replicate mode (selector nibble 8|e) turns bit 7 of byte e into a full
# byte, placed at the high byte of each 16-bit half; uv pairs are rounded with one cvt, their sign
# flipped with one lop3 and added with one packed add.
_FLIP_ADD_F16 = tl.constexpr(
    "{ .reg .b32 s, m, h; shl.b32 s, $8, $9; "
    "prmt.b32 m, s, s, 0x9888; cvt.rn.f16x2.f32 h, $5, $4; lop3.b32 h, m, 0x80008000, h, 0xA6; "
    "add.rn.f16x2 $0, $2, h; "
    "prmt.b32 m, s, s, 0xBAAA; cvt.rn.f16x2.f32 h, $7, $6; lop3.b32 h, m, 0x80008000, h, 0xA6; "
    "add.rn.f16x2 $1, $3, h; }")
_FLIP_ADD_BF16 = tl.constexpr(
    "{ .reg .b32 s, m, h; shl.b32 s, $8, $9; "
    "prmt.b32 m, s, s, 0x9888; cvt.rn.bf16x2.f32 h, $5, $4; lop3.b32 h, m, 0x80008000, h, 0xA6; "
    "add.rn.bf16x2 $0, $2, h; "
    "prmt.b32 m, s, s, 0xBAAA; cvt.rn.bf16x2.f32 h, $7, $6; lop3.b32 h, m, 0x80008000, h, 0xA6; "
    "add.rn.bf16x2 $1, $3, h; }")
_C_FLIP16 = tl.constexpr("=r,=r,r,r,r,r,r,r,r,r,r,r,r")


@triton.jit
def signed_add16(w, uv, P, jb, DT: tl.constexpr, UNPACK: tl.constexpr):
    """w + fp(±uv) with w in DT (float16/bfloat16), uv float32, sign from bit jb of the byte P."""
    if UNPACK == 0:
        flip = ((P.to(tl.int32) << (31 - jb)) & -2147483648) ^ -2147483648
        out = w + (uv.to(tl.int32, bitcast=True) ^ flip).to(tl.float32, bitcast=True).to(DT)
    elif DT == tl.float16:
        out = tl.inline_asm_elementwise(_FLIP_ADD_F16, _C_FLIP16, [w, uv, P, 7 - jb], dtype=tl.float16,
                                        is_pure=True, pack=4)
    else:
        out = tl.inline_asm_elementwise(_FLIP_ADD_BF16, _C_FLIP16, [w, uv, P, 7 - jb], dtype=tl.bfloat16,
                                        is_pure=True, pack=4)
    return out


@triton.jit
def signed_add(w, uv, P, jb, UNPACK: tl.constexpr):
    """w + (uv where bit jb of the byte P is 1, else -uv); float32 w and uv, uint8 P, one layout;
    jb may be a run-time scalar."""
    if UNPACK == 0:
        flip = ((P.to(tl.int32) << (31 - jb)) & -2147483648) ^ -2147483648
        out = w + (uv.to(tl.int32, bitcast=True) ^ flip).to(tl.float32, bitcast=True)
    else:
        out = tl.inline_asm_elementwise(_FLIP_ADD, _C_FLIP, [w, uv, P, 7 - jb], dtype=tl.float32,
                                        is_pure=True, pack=4)
    return out
