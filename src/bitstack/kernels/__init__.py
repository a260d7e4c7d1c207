"""Fused GPU kernels for BitStack linears (Triton), their PyTorch references, and their layouts.

Importing this package never imports Triton nor initialises CUDA: the Triton modules are imported
when a kernel runs.  Layout of the package:

* :mod:`.api`: the entry points (below), light.
* :mod:`.dispatch`: :class:`DispatchTable`, every token/block threshold that picks a path, and the
  kernels' hard limits.
* :mod:`.avd` and :mod:`.planes`: one package per codec (layout, reference, kernels).
* ``_checks`` (argument checks, interpreter mode), ``_linear`` (float32 reference product, chunked
  prefill product), ``_splitk`` (the split-K ending of the decode kernels, Triton): shared.

API (all ``y = x · Ŵᵀ (+ bias)``; same signature everywhere):

Codec ``avd`` (Ŵ = Σ_{i<J} S_i ⊙ (u_i v_i)):

* ``repack(blocks, input_scale=None, group=32) -> PackedBitStack`` — pure function, stacks the J
  stored blocks of one weight into the kernels' layout (:mod:`bitstack.kernels.avd.layout`), byte
  size ``packed_nbytes(N, K, k, J)`` = the stored blocks' size.
* ``bitstack_linear(x, packed, bias=None)`` — the decode kernel for few tokens
  (``tokens ≤ decode_max_tokens(rank)``), the prefill otherwise (fastest measured).
* ``bitstack_linear_decode`` (Σ u ⊙ (S · (v ⊙ x)), no weight rebuilt), ``bitstack_linear_prefill``
  (rows of Ŵ rebuilt into a ≤ 64 MiB scratch, then cuBLAS), ``rebuild_weight(packed, dtype)``.
* ``bitstack_linear_reference`` (and ``..._decode_reference``, ``..._prefill_reference``, the same
  function), ``bitstack_linear_naive`` — float32 PyTorch, any device.

Codec ``planes`` (Ŵ = C + Σ_{i<J} S_i ⊙ expand(step)·2^-i):

* ``pack_planes(sign_tensors, offset, step, group_size) -> PackedPlanes`` — pure function, stacks
  the J blocks' signs (stored layout, unchanged) and references the grids
  (:mod:`bitstack.kernels.planes.layout`); byte size ``planes_nbytes(N, K, J)`` (signs only).
* ``planes_linear(x, packed, bias=None)`` — ``planes_linear_decode`` (one-token, decode or
  few-token kernel; Ŵ never formed) for ``tokens ≤ PLANES_DECODE_MAX_TOKENS``, ``planes_linear_prefill``
  otherwise; ``planes_rebuild_weight(packed, dtype)`` (dense Ŵ on the GPU).
* ``planes_linear_reference``, ``planes_linear_naive`` — float32 PyTorch, any device.  The kernels
  need a power-of-two group size ≥ 8 (``planes_group_supported``).

x: float16 or bfloat16, shape (..., K); bias: optional float (N,); result (..., N) in x's dtype.
``input_scale`` (the layer's x multiplier) is folded into v by ``repack``; bias is an argument.
Bad dtypes, shapes or devices raise ValueError.
"""

from __future__ import annotations

import importlib.util

from bitstack.kernels.api import (
    bitstack_linear,
    bitstack_linear_decode,
    bitstack_linear_prefill,
    decode_max_tokens,
    planes_linear,
    planes_linear_decode,
    planes_linear_prefill,
    planes_rebuild_weight,
    rebuild_weight,
)
from bitstack.kernels.avd.layout import DEFAULT_GROUP, PackedBitStack, packed_nbytes, repack
from bitstack.kernels.avd.reference import (
    bitstack_linear_decode_reference,
    bitstack_linear_naive,
    bitstack_linear_prefill_reference,
    bitstack_linear_reference,
)
from bitstack.kernels.dispatch import DEFAULT_TABLE, DispatchTable
from bitstack.kernels.planes.layout import PackedPlanes, pack_planes, planes_group_supported, planes_nbytes
from bitstack.kernels.planes.reference import planes_linear_naive, planes_linear_reference

__all__ = [
    "DEFAULT_GROUP",
    "PackedBitStack",
    "packed_nbytes",
    "repack",
    "triton_available",
    "DispatchTable",
    "DEFAULT_TABLE",
    "decode_max_tokens",
    "bitstack_linear",
    "bitstack_linear_decode",
    "bitstack_linear_prefill",
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

PLANES_DECODE_MAX_TOKENS = DEFAULT_TABLE.planes_decode_max_tokens  # the default table's, for callers that read it


def triton_available() -> bool:
    """True if Triton can be imported (it is not imported by this check)."""
    return importlib.util.find_spec("triton") is not None
