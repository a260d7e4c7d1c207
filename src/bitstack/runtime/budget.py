"""Memory budgets: how many blocks of the stack fit, and the bytes actually resident.

Resident weight bytes = the non-decomposed weights (embeddings, norms, LM head, biases, runtime
input scales, buffers) at their loaded dtypes, each storage counted once (a tied LM head is
free), plus the bytes of every loaded block (packed signs + float16 u, v).
"""

from __future__ import annotations

import bisect

import torch
from torch import nn

from bitstack.artifact.manifest import Manifest
from bitstack.errors import BudgetError
from bitstack.memory import format_bytes


def base_bytes_at(manifest: Manifest, dtype: torch.dtype) -> int:
    """Bytes of the base tensors when floating params are loaded as ``dtype``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for t in manifest.base_tensors:
        floating = t.dtype in ("F16", "BF16", "F32", "F64")
        total += t.nbytes(itemsize if floating else None)
    return total


def prefix_bytes_at(manifest: Manifest, dtype: torch.dtype) -> list[int]:
    """Resident bytes with the first n blocks loaded, for n = 0 … len(stack)."""
    shift = base_bytes_at(manifest, dtype) - manifest.base_bytes
    return [p + shift for p in manifest.prefix_bytes]


def blocks_for_budget(manifest: Manifest, budget: int | None, dtype: torch.dtype) -> int:
    """The longest prefix of the stack (≥ the floor) whose resident bytes are ≤ ``budget``.

    ``budget=None`` means the whole stack.  Raises :class:`BudgetError` below the floor.
    """
    if budget is None:
        return len(manifest.stack)
    prefix = prefix_bytes_at(manifest, dtype)
    floor = prefix[manifest.floor_blocks]
    if budget < floor:
        raise BudgetError(
            f"memory budget {format_bytes(budget)} is below this artifact's floor of {format_bytes(floor)} "
            f"({floor} bytes); the full stack needs {format_bytes(prefix[-1])} ({prefix[-1]} bytes)"
        )
    return bisect.bisect_right(prefix, budget) - 1


def memory_bytes(model: nn.Module) -> int:
    """Resident weight bytes of a model, counted from its live tensors.

    Parameters and buffers are counted once per storage; the blocks of every
    :class:`~bitstack.runtime.linear.BitStackLinear` add their storages' bytes.
    """
    from bitstack.runtime.linear import BitStackLinear

    seen: dict[tuple[str, int], int] = {}

    def add(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()

    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device.type != "meta":
            add(tensor)
    for module in model.modules():
        if isinstance(module, BitStackLinear):
            for block in module.blocks:
                for tensor in (block.signs, block.u, block.v):
                    add(tensor)
    return sum(seen.values())
