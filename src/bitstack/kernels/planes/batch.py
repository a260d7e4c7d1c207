"""Codec ``planes``, few-token kernel (2 to 16 tokens): tiles of Ŵ rebuilt on chip and
multiplied on the tensor cores, Ŵ never written to memory.

Imports Triton at module level: import this module lazily (:mod:`bitstack.kernels.api` does).

A program owns ``block_n`` rows and a range of K tiles of ``block_k`` columns (split-K over the
tiles, as :mod:`bitstack.kernels._splitk` describes).  Per tile it rebuilds Ŵ's [block_n, block_k]
tile in registers with the row-rebuild kernel's own code (``rebuild_tile`` of
:mod:`bitstack.kernels.planes.codes`: Ŵ = A' + B·f, the J sign bits of a weight ORed into the mantissa
of f, the 8 bits of a sign byte a tensor axis), rounds it to x's dtype and multiplies it with
the [block_k, 16] tile of x (tokens padded to 16, the tensor cores' narrowest operand) with
``tl.dot``, accumulating in float32.  So every weight is rebuilt once per call whatever the token count (≤ 16), where the
chunked prefill writes Ŵ to memory and reads it back.  Numerics are the prefill's: Ŵ rounded to
x's dtype, products accumulated in float32, y rounded once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitstack.kernels._checks import cdiv, interpret_mode
from bitstack.kernels._splitk import split_k, splitk_workspace, store_rows
from bitstack.kernels.dispatch import BATCH_MAX_TOKENS, KERNEL_MAX_BLOCKS
from bitstack.kernels.planes.codes import rebuild_tile
from bitstack.kernels.planes.layout import PackedPlanes, check_planes_args, planes_group_supported


@triton.jit
def _planes_batch_kernel(
    x_ptr, s_ptr, off_ptr, step_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, KB, NG, stride_xm, stride_ym, n_ktiles, tiles_per_split, coef,
    J: tl.constexpr, GS: tl.constexpr, BN: tl.constexpr, KT: tl.constexpr, MP: tl.constexpr,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
):
    DT: tl.constexpr = x_ptr.dtype.element_ty
    NB: tl.constexpr = KT // 8
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    nmask = offs_n < N
    offs_m = tl.arange(0, MP)
    mmask = offs_m < M
    acc = tl.zeros([BN, MP], dtype=tl.float32)
    t0 = pid_s * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_ktiles)
    for t in range(t0, t1):
        byte = t * NB + tl.arange(0, NB)
        w = rebuild_tile(s_ptr, off_ptr, step_ptr, offs_n, nmask, byte, N, KB, NG, coef, J, GS, BN, KT, DT)
        cols = t * KT + tl.arange(0, KT)
        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + cols[:, None],
                     mask=mmask[None, :] & (cols < K)[:, None], other=0.0)  # [KT, MP]
        if DOT_F32:  # interpreter only: it cannot multiply bf16; the same (rounded) values, upcast
            acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc)
        else:
            acc = tl.dot(w, xt, acc)
    store_rows(acc, offs_n, nmask, offs_m, mmask, N, b_ptr, y_ptr, ws_ptr, cnt_ptr, pid_n, n_splits, stride_ym,
               SPLIT, HAS_BIAS)


@dataclass(frozen=True)
class PlanesBatchConfig:
    """Launch parameters of :func:`planes_batch`.

    block_n: rows per program (≥ 16, a power of two).  block_k: columns per tile (a power of two
    ≥ 16).  splits: programs along K (None: enough for ``programs_per_sm`` programs per SM).
    """

    block_n: int = 64
    block_k: int = 128
    splits: int | None = None
    programs_per_sm: int = 8  # the fastest measured on an H100 at J = 3, 4 and 2-16 tokens (NOTES.md)
    num_warps: int = 4
    num_stages: int = 1


def planes_batch(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                 config: PlanesBatchConfig | None = None, *, return_compiled: bool = False):
    """y = x · Ŵᵀ (+ bias) for 1 to 16 tokens, Ŵ's tiles rebuilt on chip (module docstring).

    Args:
        x: float16 or bfloat16, shape (..., K) with 1 to ``BATCH_MAX_TOKENS`` tokens, CUDA (or CPU
            under TRITON_INTERPRET=1).
        packed: :class:`PackedPlanes` of at most ``KERNEL_MAX_BLOCKS`` blocks, group_size a power
            of two ≥ 8, same device.
        bias: optional float tensor (N,), added in float32 before the final rounding.
        config: launch parameters (None: :class:`PlanesBatchConfig`'s defaults).
        return_compiled: return ``(y, compiled)``, Triton's compiled kernel (registers, PTX, SASS;
            None in the interpreter), instead of y.
    Returns:
        shape (..., N), x's dtype.
    Raises:
        ValueError on bad dtypes, shapes, devices, group sizes, block or token counts.
    """
    check_planes_args(x, packed, bias, need_gpu=True)
    return batch_launch(x, packed, bias, config, return_compiled=return_compiled)


def batch_launch(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                 config: PlanesBatchConfig | None = None, *, return_compiled: bool = False):
    """:func:`planes_batch` for arguments that passed ``check_planes_args`` already; the group,
    block, token and launch-parameter checks stay."""
    N, K, J = packed.out_features, packed.in_features, packed.num_blocks
    if not planes_group_supported(packed.group_size) or J > KERNEL_MAX_BLOCKS:
        raise ValueError(f"planes_batch needs a power-of-two group_size >= 8 and at most {KERNEL_MAX_BLOCKS} blocks, "
                         f"got group_size {packed.group_size} and {J} blocks; use bitstack.kernels.planes.reference")
    x2 = x.reshape(-1, K)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    M = x2.shape[0]
    if not 1 <= M <= BATCH_MAX_TOKENS:
        raise ValueError(f"planes_batch takes 1 to {BATCH_MAX_TOKENS} tokens, got {M}: use planes_linear_prefill")
    cfg = config or PlanesBatchConfig()
    for name, val, low in (("block_n", cfg.block_n, 16), ("block_k", cfg.block_k, 16)):
        if val < low or val & (val - 1):
            raise ValueError(f"{name} must be a power of two >= {low}, got {val}")
    KB = (K + 7) // 8
    n_tiles = cdiv(N, cfg.block_n)
    n_ktiles = cdiv(K, cfg.block_k)
    splits, tps = split_k(n_tiles, n_ktiles, cfg.splits, cfg.programs_per_sm, x.device)
    MP = 16
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    ws, cnt = splitk_workspace(x.device, M, N, cfg.block_n) if splits > 1 else (y, y)
    compiled = _planes_batch_kernel[(n_tiles, splits)](
        x2, packed.signs, packed.offset, packed.step, bias if bias is not None else y, y, ws, cnt,
        M, N, K, KB, packed.num_groups, x2.stride(0), y.stride(0), n_ktiles, tps, 2.0 ** (1 - J) - 6.0,
        J=J, GS=packed.group_size, BN=cfg.block_n, KT=cfg.block_k, MP=MP, SPLIT=splits > 1,
        HAS_BIAS=bias is not None, DOT_F32=interpret_mode() and x.dtype == torch.bfloat16,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    y = y.reshape(*x.shape[:-1], N)
    return (y, compiled) if return_compiled else y
