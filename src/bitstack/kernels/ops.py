"""The kernels' entry points as PyTorch custom operators (``torch.library``), so that
``torch.compile`` (and transformers' compiled static-cache ``generate``) traces a BitStack model
without graph breaks and CUDA graphs capture its launches.

Operators (namespace ``bitstack``), each ``y = x · Ŵᵀ (+ bias)`` of one packed weight, x float16
or bfloat16 (..., K), result (..., N) in x's dtype, never an alias of an input:

* ``bitstack::planes_linear(x, signs, offset, step, bias, in_features, group_size)``: the tensors
  of a :class:`~bitstack.kernels.planes.layout.PackedPlanes` (signs uint8 (J, N, ceil(K/8)),
  offset/step float16 (N, G)); :func:`bitstack.kernels.api.planes_linear_packed`.
* ``bitstack::avd_linear(x, signs, u, v, bias, in_features, group)``: the tensors of a
  :class:`~bitstack.kernels.avd.layout.PackedBitStack` (signs uint8 (J, N, ceil(K/8)) bit-plane
  layout, u float16 (J, N, k), v float16 (J, k, K)); :func:`bitstack.kernels.bitstack_linear`.

Each has a fake implementation (shape and dtype only: ``(*x.shape[:-1], N)``, x's dtype), which
is what the compiler traces.  The real implementation runs the Triton kernels on CUDA (or in
Triton's CPU interpreter under ``TRITON_INTERPRET=1``) and the pure-PyTorch reference on any
other device, so a compiled model also runs on the CPU.  The operators do not validate the packed
tensors on every call (a :class:`~bitstack.runtime.linear.BitStackLinear` validates them once per
repack); x's width and dtype are checked.  Nothing in them synchronises the host with the device
or allocates memory that outlives the call, except the split-K workspace, which a repack on CUDA
reserves beforehand (:func:`bitstack.kernels._splitk.reserve_workspace`).

:func:`planes_linear_call` and :func:`avd_linear_call` are what the runtime calls: the operator
while ``torch.compile`` traces, the same implementation directly in eager mode (no dispatcher
round trip per linear).
"""

from __future__ import annotations

from typing import Optional

import torch

from bitstack.kernels._checks import SUPPORTED_DTYPES, interpret_mode
from bitstack.kernels.avd.layout import PackedBitStack
from bitstack.kernels.avd.reference import bitstack_linear_reference
from bitstack.kernels.planes.layout import PackedPlanes
from bitstack.kernels.planes.reference import planes_linear_reference

NAMESPACE = "bitstack"


def _check_x(x: torch.Tensor, in_features: int, op: str) -> None:
    if x.dtype not in SUPPORTED_DTYPES or x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{op}: x must be float16 or bfloat16 (..., {in_features}), got {x.dtype} {tuple(x.shape)}")


def _kernels_run_on(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" or interpret_mode()


def _planes_run(x: torch.Tensor, packed: PackedPlanes, bias: Optional[torch.Tensor]) -> torch.Tensor:
    _check_x(x, packed.in_features, "bitstack::planes_linear")
    if _kernels_run_on(x):
        from bitstack.kernels.api import planes_linear_packed

        return planes_linear_packed(x, packed, bias)
    return planes_linear_reference(x, packed, bias)


def _avd_run(x: torch.Tensor, packed: PackedBitStack, bias: Optional[torch.Tensor]) -> torch.Tensor:
    _check_x(x, packed.in_features, "bitstack::avd_linear")
    if x.numel() == 0:
        return x.new_empty(*x.shape[:-1], packed.out_features)
    if _kernels_run_on(x):
        from bitstack.kernels.api import bitstack_linear

        return bitstack_linear(x, packed, bias)
    return bitstack_linear_reference(x, packed, bias)


def planes_linear_impl(x: torch.Tensor, signs: torch.Tensor, offset: torch.Tensor, step: torch.Tensor,
                       bias: Optional[torch.Tensor], in_features: int, group_size: int) -> torch.Tensor:
    """The real implementation of ``bitstack::planes_linear`` (module docstring)."""
    return _planes_run(x, PackedPlanes(signs, offset, step, signs.shape[1], in_features, group_size), bias)


def avd_linear_impl(x: torch.Tensor, signs: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                    bias: Optional[torch.Tensor], in_features: int, group: int) -> torch.Tensor:
    """The real implementation of ``bitstack::avd_linear`` (module docstring)."""
    return _avd_run(x, PackedBitStack(signs, u, v, signs.shape[1], in_features, u.shape[2], group), bias)


def _fake(op: str):
    """The fake implementation of ``op``: (*x.shape[:-1], N) in x's dtype, N = signs.shape[1]."""

    def fake(x, signs, *rest):
        _check_x(x, rest[-2], op)  # rest: ..., in_features, group
        return x.new_empty((*x.shape[:-1], signs.shape[1]))

    return fake


@torch.library.custom_op(f"{NAMESPACE}::planes_linear", mutates_args=())
def planes_linear_op(x: torch.Tensor, signs: torch.Tensor, offset: torch.Tensor, step: torch.Tensor,
                     bias: Optional[torch.Tensor], in_features: int, group_size: int) -> torch.Tensor:
    return planes_linear_impl(x, signs, offset, step, bias, in_features, group_size)


@torch.library.custom_op(f"{NAMESPACE}::avd_linear", mutates_args=())
def avd_linear_op(x: torch.Tensor, signs: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                  bias: Optional[torch.Tensor], in_features: int, group: int) -> torch.Tensor:
    return avd_linear_impl(x, signs, u, v, bias, in_features, group)


planes_linear_op.register_fake(_fake("bitstack::planes_linear"))
avd_linear_op.register_fake(_fake("bitstack::avd_linear"))


def planes_linear_call(x: torch.Tensor, packed: PackedPlanes, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``bitstack::planes_linear`` of ``packed`` (validated beforehand): the operator under
    ``torch.compile``, its implementation directly otherwise."""
    if torch.compiler.is_compiling():
        return torch.ops.bitstack.planes_linear(x, packed.signs, packed.offset, packed.step, bias, packed.in_features,
                                                packed.group_size)
    return _planes_run(x, packed, bias)


def avd_linear_call(x: torch.Tensor, packed: PackedBitStack, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``bitstack::avd_linear`` of ``packed`` (validated beforehand): the operator under
    ``torch.compile``, its implementation directly otherwise."""
    if torch.compiler.is_compiling():
        return torch.ops.bitstack.avd_linear(x, packed.signs, packed.u, packed.v, bias, packed.in_features, packed.group)
    return _avd_run(x, packed, bias)


def prepare_packed(tensors: tuple[torch.Tensor, ...], out_features: int, rows: int) -> None:
    """After a repack: on CUDA, mark the packed ``tensors`` as static inputs of compiled graphs
    (``torch._dynamo.mark_static_address(guard=False)``: no copy into the graph's buffers, and
    cudagraph trees re-record when a later repack replaces them) and reserve the split-K
    workspace of ``out_features`` outputs for ``rows`` tokens.  Elsewhere nothing."""
    device = tensors[0].device
    if device.type != "cuda":
        return
    from bitstack.kernels._splitk import reserve_workspace

    reserve_workspace(device, out_features, rows)
    for t in tensors:
        torch._dynamo.mark_static_address(t, guard=False)
