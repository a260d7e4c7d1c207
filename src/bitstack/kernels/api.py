"""The kernels' entry points: the linears that pick a kernel by token count, and each path on its
own.  Light: Triton is imported when a kernel runs.

All compute ``y = x · Ŵᵀ (+ bias)``: x float16 or bfloat16 (..., K), CUDA (or CPU under
``TRITON_INTERPRET=1``); bias optional float (N,); result (..., N) in x's dtype; bad dtypes,
shapes or devices raise ValueError.  The thresholds come from a
:class:`~bitstack.kernels.dispatch.DispatchTable` argument (default ``DEFAULT_TABLE``).

Codec ``avd`` (:class:`PackedBitStack`): :func:`bitstack_linear` picks
:func:`bitstack_linear_decode` (no weight rebuilt) up to ``table.avd_decode_max_tokens(rank)``
tokens, else :func:`bitstack_linear_prefill` (rows of Ŵ rebuilt into a ≤ 64 MiB scratch, then
cuBLAS).

Codec ``planes`` (:class:`PackedPlanes`, a power-of-two group size ≥ 8): :func:`planes_linear`
picks :func:`planes_linear_decode` up to ``table.planes_decode_max_tokens`` tokens, else
:func:`planes_linear_prefill`.  :func:`planes_linear_decode` runs the one-token kernel once per
token up to ``table.planes_gemv_max_tokens`` tokens where it applies (J ≤ 8, group ≥ 32), the
decode kernel for other single tokens, and the few-token kernel for 2 to 16 tokens.
"""

from __future__ import annotations

import torch

from bitstack.kernels.avd.layout import PackedBitStack, check_linear_args
from bitstack.kernels.dispatch import BATCH_MAX_TOKENS, DEFAULT_TABLE, DispatchTable
from bitstack.kernels.planes.layout import PackedPlanes, check_planes_args, planes_group_supported


def decode_max_tokens(rank: int, table: DispatchTable = DEFAULT_TABLE) -> int:
    """Token counts up to this use the decode kernel in :func:`bitstack_linear`."""
    return table.avd_decode_max_tokens(rank)


def bitstack_linear_decode(x: torch.Tensor, packed: PackedBitStack,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Decode kernel (few tokens), see :func:`bitstack.kernels.avd.decode.bitstack_linear_decode`."""
    from bitstack.kernels.avd.decode import bitstack_linear_decode as run

    return run(x, packed, bias)


def bitstack_linear_prefill(x: torch.Tensor, packed: PackedBitStack,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    """Prefill (many tokens), see :func:`bitstack.kernels.avd.rebuild.bitstack_linear_prefill`."""
    from bitstack.kernels.avd.rebuild import bitstack_linear_prefill as run

    return run(x, packed, bias)


def rebuild_weight(packed: PackedBitStack, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense Ŵ (N, K) in ``dtype`` (float16/bfloat16) rebuilt by the GPU kernel (one launch)."""
    from bitstack.kernels.avd.rebuild import rebuild_rows

    return _all_rows(rebuild_rows, packed, dtype)


def _all_rows(rebuild_rows, packed, dtype: torch.dtype) -> torch.Tensor:
    """``rebuild_rows(packed, 0, N, out)`` into a fresh (N, K) ``dtype`` tensor on packed's device."""
    out = torch.empty(packed.out_features, packed.in_features, dtype=dtype, device=packed.device)
    return rebuild_rows(packed, 0, packed.out_features, out)


def bitstack_linear(x: torch.Tensor, packed: PackedBitStack, bias: torch.Tensor | None = None,
                    table: DispatchTable = DEFAULT_TABLE) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) for a codec-``avd`` weight, with the kernel that suits the token count.

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedBitStack` (from ``repack``) on x's device.
        bias: optional float tensor (N,).
        table: the thresholds (``avd_decode_max_width``).
    Returns:
        (..., N) in x's dtype.
    Raises:
        ValueError on bad dtypes, shapes or devices.
    """
    check_linear_args(x, packed, bias, need_gpu=True)
    tokens = x.numel() // x.shape[-1]
    if tokens <= table.avd_decode_max_tokens(packed.rank):
        return bitstack_linear_decode(x, packed, bias)
    return bitstack_linear_prefill(x, packed, bias)


def planes_linear_prefill(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Planes prefill (many tokens), see :func:`bitstack.kernels.planes.rebuild.planes_linear_prefill`."""
    from bitstack.kernels.planes.rebuild import planes_linear_prefill as run

    return run(x, packed, bias)


def planes_rebuild_weight(packed: PackedPlanes, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense Ŵ (N, K) in ``dtype`` (float16/bfloat16/float32) rebuilt by the GPU kernel (one launch)."""
    from bitstack.kernels.planes.rebuild import rebuild_planes_rows

    return _all_rows(rebuild_planes_rows, packed, dtype)


def planes_linear_decode(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                         table: DispatchTable = DEFAULT_TABLE) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) for few tokens (1 to ``BATCH_MAX_TOKENS`` = 16), Ŵ never written to memory.

    The fastest measured on an H100 (benchmarks/kernels/NOTES.md): up to
    ``table.planes_gemv_max_tokens`` tokens, where the one-token kernel applies (J ≤ 8, group_size
    ≥ 32, :func:`~bitstack.kernels.planes.gemv.planes_gemv_supported`), that kernel once per
    token; other single tokens, the decode kernel (:mod:`bitstack.kernels.planes.decode`); 2 to 16
    tokens otherwise, the few-token kernel (:mod:`bitstack.kernels.planes.batch`: Ŵ tiles rebuilt
    on chip, tensor cores).

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedPlanes` of the J loaded blocks, same device; group_size a power of
            two >= 8.
        bias: optional float tensor (N,), added in float32 before the final rounding.
        table: the thresholds (``planes_gemv_max_tokens``).
    Returns:
        shape (..., N), x's dtype.  Math: float32 throughout (x upcast), one rounding at the end
        (the few-token kernel rounds Ŵ's tiles to x's dtype first, as the prefill does).
    Raises:
        ValueError on bad dtypes, shapes, devices, group sizes or token counts.
    """
    check_planes_args(x, packed, bias, need_gpu=True)
    return _planes_decode_checked(x, packed, bias, table)


def _planes_decode_checked(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None,
                           table: DispatchTable) -> torch.Tensor:
    """:func:`planes_linear_decode` for arguments that passed ``check_planes_args`` already (the
    tensors are checked once per call, not once per kernel launch)."""
    from bitstack.kernels.planes.batch import batch_launch
    from bitstack.kernels.planes.decode import decode_config, planes_decode_launch
    from bitstack.kernels.planes.gemv import gemv_launch, planes_gemv_supported

    K = x.shape[-1]
    M = x.numel() // K
    if 1 <= M <= table.planes_gemv_max_tokens and planes_gemv_supported(1, packed):
        if M == 1:
            return gemv_launch(x, packed, bias)
        x2 = x.reshape(M, K)
        y = torch.empty(M, packed.out_features, dtype=x.dtype, device=x.device)
        for m in range(M):
            gemv_launch(x2[m], packed, bias, out=y[m])
        return y.reshape(*x.shape[:-1], packed.out_features)
    if M == 1:
        return planes_decode_launch(x, packed, bias, decode_config(M, packed.num_blocks))
    if M > BATCH_MAX_TOKENS:
        raise ValueError(f"planes_linear_decode takes 1 to {BATCH_MAX_TOKENS} tokens, got {M}: "
                         "use planes_linear_prefill for more")
    return batch_launch(x, packed, bias)


def planes_linear(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                  table: DispatchTable = DEFAULT_TABLE) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) for a codec-``planes`` weight, with the kernel that suits the token count.

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedPlanes` (from ``pack_planes``) on x's device; its group size a
            power of two >= 8.
        bias: optional float tensor (N,).
        table: the thresholds (``planes_decode_max_tokens``, ``planes_gemv_max_tokens``).
    Returns:
        (..., N) in x's dtype (empty if x holds no token).
    Raises:
        ValueError on bad dtypes, shapes, devices or group sizes.
    """
    check_planes_args(x, packed, bias, need_gpu=True)
    if not planes_group_supported(packed.group_size):
        raise ValueError(f"the planes kernels need a power-of-two group_size >= 8, got {packed.group_size}")
    return planes_linear_packed(x, packed, bias, table)


def planes_linear_packed(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None,
                         table: DispatchTable = DEFAULT_TABLE) -> torch.Tensor:
    """:func:`planes_linear` for a ``packed`` validated beforehand (once per repack, by the
    runtime) and x of its width and a kernel dtype: no per-call checks of the packed tensors."""
    tokens = x.numel() // x.shape[-1]
    if tokens == 0:
        return x.new_empty(*x.shape[:-1], packed.out_features)
    if tokens <= table.planes_decode_max_tokens:
        return _planes_decode_checked(x, packed, bias, table)  # the tensors were checked above
    return planes_linear_prefill(x, packed, bias)
