"""Fused GPU kernels for BitStack linears (Triton), their PyTorch references, and the layout.

Importing this package never imports Triton nor initialises CUDA: the Triton modules
(``decode``, ``prefill``, ``rebuild``, ``planes``, ``planes_gemv``, ``planes_batch``, ``_signs``,
``_splitk``) are imported inside the functions that launch them.

API (all ``y = x · Ŵᵀ (+ bias)`` with Ŵ = Σ_{i<J} S_i ⊙ (u_i v_i); same signature everywhere):

* ``repack(blocks, input_scale=None, group=32) -> PackedBitStack`` — pure function, stacks the J
  stored blocks of one weight into the kernels' layout (see :mod:`bitstack.kernels.layout`), byte
  size ``packed_nbytes(N, K, k, J)`` = the stored blocks' size.
* ``bitstack_linear(x, packed, bias=None)`` — picks the decode kernel for few tokens
  (``tokens ≤ decode_max_tokens(rank)``) and the chunked prefill otherwise (fastest measured).
* ``bitstack_linear_decode(x, packed, bias=None)`` — no weight rebuilt (Σ u ⊙ (S · (v ⊙ x))).
* ``bitstack_linear_prefill(x, packed, bias=None)`` — fused: Ŵ tiles rebuilt on chip only.
* ``bitstack_linear_prefill_chunked(x, packed, bias=None)`` — rows of Ŵ rebuilt into a bounded
  scratch (64 MiB by default), then cuBLAS; ``rebuild_weight(packed, dtype)`` rebuilds Ŵ on the GPU.
* ``reference.bitstack_linear_reference(x, packed, bias=None)`` (and ``..._decode_reference``,
  ``..._prefill_reference``, the same function) — float32 PyTorch, any device.

Codec ``planes`` (Ŵ = C + Σ_{i<J} S_i ⊙ expand(step)·2^-i, see :mod:`bitstack.kernels.planes`):

* ``pack_planes(sign_tensors, offset, step, group_size) -> PackedPlanes`` — pure function, stacks
  the J blocks' signs (stored layout, unchanged) and references the grids
  (:mod:`bitstack.kernels.planes_layout`); byte size ``planes_nbytes(N, K, J)`` (signs only).
* ``planes_linear(x, packed, bias=None)`` — ``planes_linear_decode`` for
  ``tokens ≤ PLANES_DECODE_MAX_TOKENS``, the chunked prefill otherwise.
* ``planes_linear_decode`` runs the one-token kernel (:mod:`bitstack.kernels.planes_gemv`: x in
  registers, rows streamed) once per token up to 2 tokens when J ≤ 8 and group_size ≥ 32, the
  few-token kernel (:mod:`bitstack.kernels.planes_batch`: Ŵ tiles rebuilt on chip, tensor cores)
  for 2 to 16 tokens, and the decode kernel of :mod:`bitstack.kernels.planes` for other single
  tokens.
* ``planes_linear_decode`` (Ŵ never formed), ``planes_linear_prefill`` (rows of Ŵ rebuilt into a
  ≤ 64 MiB scratch, then cuBLAS), ``planes_rebuild_weight(packed, dtype)`` (dense Ŵ on the GPU).
* ``planes_reference.planes_linear_reference(x, packed, bias=None)`` (and ``planes_linear_naive``)
  — float32 PyTorch, any device.
  The kernels need a power-of-two group size ≥ 8 (``planes_group_supported``).

x: float16 or bfloat16, shape (..., K); bias: optional float (N,); result (..., N) in x's dtype.
``input_scale`` (the layer's x multiplier) is folded into v by ``repack``; bias is an argument.
Bad dtypes, shapes or devices raise ValueError.
"""

from __future__ import annotations

import importlib.util

import torch

from bitstack.kernels.layout import DEFAULT_GROUP, PackedBitStack, packed_nbytes, repack
from bitstack.kernels.planes_layout import PackedPlanes, pack_planes, planes_group_supported, planes_nbytes
from bitstack.kernels.planes_reference import planes_linear_naive, planes_linear_reference
from bitstack.kernels.reference import (
    bitstack_linear_decode_reference,
    bitstack_linear_naive,
    bitstack_linear_prefill_reference,
    bitstack_linear_reference,
)

__all__ = [
    "DEFAULT_GROUP",
    "PackedBitStack",
    "packed_nbytes",
    "repack",
    "triton_available",
    "decode_max_tokens",
    "bitstack_linear",
    "bitstack_linear_decode",
    "bitstack_linear_prefill",
    "bitstack_linear_prefill_chunked",
    "rebuild_weight",
    "bitstack_linear_reference",
    "bitstack_linear_decode_reference",
    "bitstack_linear_prefill_reference",
    "bitstack_linear_naive",
    "PackedPlanes",
    "pack_planes",
    "planes_nbytes",
    "planes_group_supported",
    "PLANES_DECODE_MAX_TOKENS",
    "planes_linear",
    "planes_linear_decode",
    "planes_linear_prefill",
    "planes_rebuild_weight",
    "planes_linear_reference",
    "planes_linear_naive",
]

# Largest (padded rank) × (padded tokens) sent to the decode kernel by ``bitstack_linear`` (k = 16:
# up to 4 tokens).  At 16 tokens the chunked prefill is faster from J = 2 blocks on the large shapes
# (benchmarks/kernels/NOTES.md); between 5 and 15 tokens nothing was measured.
DECODE_MAX_WIDTH = 64


def triton_available() -> bool:
    """True if Triton can be imported (it is not imported by this check)."""
    return importlib.util.find_spec("triton") is not None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def decode_max_tokens(rank: int) -> int:
    """Token counts up to this use the decode kernel in :func:`bitstack_linear`."""
    return max(1, DECODE_MAX_WIDTH // _next_pow2(rank))


def bitstack_linear_decode(x: torch.Tensor, packed: PackedBitStack,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Decode kernel (few tokens), see :func:`bitstack.kernels.decode.bitstack_linear_decode`."""
    from bitstack.kernels.decode import bitstack_linear_decode as run

    return run(x, packed, bias)


def bitstack_linear_prefill(x: torch.Tensor, packed: PackedBitStack,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    """Prefill kernel (many tokens), see :func:`bitstack.kernels.prefill.bitstack_linear_prefill`."""
    from bitstack.kernels.prefill import bitstack_linear_prefill as run

    return run(x, packed, bias)


def bitstack_linear_prefill_chunked(x: torch.Tensor, packed: PackedBitStack,
                                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Chunked prefill, see :func:`bitstack.kernels.rebuild.bitstack_linear_prefill_chunked`."""
    from bitstack.kernels.rebuild import bitstack_linear_prefill_chunked as run

    return run(x, packed, bias)


def rebuild_weight(packed: PackedBitStack, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense Ŵ (N, K) in ``dtype`` (float16/bfloat16) rebuilt by the GPU kernel (one launch)."""
    from bitstack.kernels.rebuild import rebuild_rows

    out = torch.empty(packed.out_features, packed.in_features, dtype=dtype, device=packed.device)
    return rebuild_rows(packed, 0, packed.out_features, out)


def bitstack_linear(x: torch.Tensor, packed: PackedBitStack,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) on the GPU with the kernel that suits the token count.

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedBitStack` (from :func:`repack`) on x's device.
        bias: optional float tensor (N,).
    Returns:
        (..., N) in x's dtype.
    Raises:
        ValueError on bad dtypes, shapes or devices.
    """
    from bitstack.kernels._checks import check_linear_args

    check_linear_args(x, packed, bias, need_gpu=True)
    tokens = x.numel() // x.shape[-1]
    if tokens <= decode_max_tokens(packed.rank):
        return bitstack_linear_decode(x, packed, bias)
    return bitstack_linear_prefill_chunked(x, packed, bias)


# Token counts up to this use ``planes_linear_decode`` in ``planes_linear`` (the one-token kernel
# once per token up to 2 tokens, the few-token kernel from 2 to 16), the chunked prefill above.
# On an H100 at 3-4 blocks on 14336x4096 and 4096x14336 (benchmarks/RESULTS.md): one token
# 31-37 µs, two 55-68 µs (per-token kernel), 3 to 16 tokens 70-90 µs (few-token kernel), against
# 121-139 µs for the chunked prefill at 2 to 16 tokens (fp16 F.linear: 55-57 µs).
PLANES_DECODE_MAX_TOKENS = 16


def planes_linear_decode(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Planes decode kernel (few tokens), see :func:`bitstack.kernels.planes.planes_linear_decode`."""
    from bitstack.kernels.planes import planes_linear_decode as run

    return run(x, packed, bias)


def planes_linear_prefill(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Planes chunked prefill, see :func:`bitstack.kernels.planes.planes_linear_prefill`."""
    from bitstack.kernels.planes import planes_linear_prefill as run

    return run(x, packed, bias)


def planes_rebuild_weight(packed: PackedPlanes, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Dense Ŵ (N, K) in ``dtype`` (float16/bfloat16/float32) rebuilt by the GPU kernel (one launch)."""
    from bitstack.kernels.planes import rebuild_planes_rows

    out = torch.empty(packed.out_features, packed.in_features, dtype=dtype, device=packed.device)
    return rebuild_planes_rows(packed, 0, packed.out_features, out)


def planes_linear(x: torch.Tensor, packed: PackedPlanes, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x · Ŵᵀ (+ bias) for a codec-``planes`` weight, with the kernel that suits the token count.

    Args:
        x: float16 or bfloat16, shape (..., K), CUDA (or CPU under TRITON_INTERPRET=1).
        packed: :class:`PackedPlanes` (from :func:`pack_planes`) on x's device; its group size a
            power of two >= 8.
        bias: optional float tensor (N,).
    Returns:
        (..., N) in x's dtype (empty if x holds no token).
    Raises:
        ValueError on bad dtypes, shapes, devices or group sizes.
    """
    from bitstack.kernels._checks import check_planes_args

    check_planes_args(x, packed, bias, need_gpu=True)
    if not planes_group_supported(packed.group_size):
        raise ValueError(f"the planes kernels need a power-of-two group_size >= 8, got {packed.group_size}")
    tokens = x.numel() // x.shape[-1]
    if tokens == 0:
        return x.new_empty(*x.shape[:-1], packed.out_features)
    if tokens <= PLANES_DECODE_MAX_TOKENS:
        from bitstack.kernels.planes import decode_checked

        return decode_checked(x, packed, bias)  # the tensors were checked above
    return planes_linear_prefill(x, packed, bias)
