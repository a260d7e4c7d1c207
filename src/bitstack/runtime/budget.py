"""Memory accounting, in one place: resident bytes, prefix bytes, the repack reserve, budgets.

Resident weight bytes = the non-decomposed weights (embeddings, norms, LM head, biases, runtime
input scales, the codecs' base buffers) at their loaded dtypes, each storage counted once (a tied
LM head is free), plus the bytes of every loaded block (its parts; a codec's byte counts are its
own: ``Codec.block_nbytes``, ``Codec.repack_transient``).

Kernel mode (weights stored packed, :mod:`bitstack.runtime.linear`) changes a weight's blocks by
repacking it, which holds more than the final bytes for a moment.  The prefix chosen for a
budget then leaves room for that: :func:`repack_reserve` (the pure-PyTorch path has no
transient and no reserve: its choice is the plain longest prefix), the same room for a load and
a resize, so that a budget always means the same prefix.  With it, a load's peak is within its
budget, a grow's within the new budget and a shrink's within the budget of the call before it
(measured by ``tests/runtime/test_peak_memory.py``), except:

* a load whose budget is below the floor plus the floor's reserve loads the floor all the same,
  over the budget by at most that reserve (the floor stays the one ``BudgetError``);
* ``None`` (the whole stack) has no budget to keep: the peak is the full bytes plus the reserve;
* a shrink of a model whose blocks were not chosen with the reserve (loaded at ``None`` or
  below the floor plus its reserve, or switched to kernel mode by ``set_kernels`` after
  loading) can exceed the earlier budget by its own repack transient;
* ``set_kernels`` itself packs every weight without a reserve.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import torch
from torch import nn

from bitstack.artifact.manifest import Manifest
from bitstack.codecs import get_codec
from bitstack.errors import BudgetError
from bitstack.memory import format_bytes
from bitstack.runtime.linear import BitStackLinear


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


def _counts(manifest: Manifest, blocks: int) -> dict[str, int]:
    """{weight name: its blocks among the first ``blocks`` of the stack} (every weight named)."""
    counts = dict.fromkeys((w.name for w in manifest.weights), 0)
    for entry in manifest.stack[:blocks]:
        counts[entry.tensor] += 1
    return counts


def repack_reserve(manifest: Manifest, target: int, packed: Mapping[str, int]) -> int:
    """Bytes above the resident ones that loading ``target`` blocks, and then a later shrink from
    them, can hold in kernel mode: the largest of

    * the **arrival**: every weight is repacked, one after the other, once all its blocks are
      read, so the peak is ``prefix[target]`` + the largest
      ``Codec.repack_transient`` of the weights (J = its blocks at
      ``target``, all of them new).  A resize to ``target`` repacks fewer weights, each with
      fewer new blocks, and a repack's transient grows with both, so this room covers it too;
    * the **departure** from ``target``: a later shrink repacks a weight of J blocks into J' < J
      from the resident bytes before it, at most the repack transient of J - 1 blocks, d = -1,
      for every weight that can lose a block (more blocks than at the floor).  Keeping it free
      means that the shrink stays within the budget this prefix was chosen for.

    ``packed``: {name: packed layout} of the weights stored packed (``BitStackLinear.pack_group``;
    the others contribute nothing: the pure-PyTorch path has no transient).  Exact for a load's arrival
    (``tests/peak_meter.py`` measures it to the byte), an upper bound for a resize's and for the
    departure (a shrink repacks weights in stack order, and those repacked first have freed bytes
    by the time the others run)."""
    if not packed:
        return 0
    weights = {w.name: w for w in manifest.weights if w.name in packed}
    after, floor = _counts(manifest, target), _counts(manifest, manifest.floor_blocks)
    reserve = 0
    for name, w in weights.items():
        codec, J, layout = get_codec(w.codec), after[name], packed[name]
        if J > 0:
            reserve = max(reserve, codec.repack_transient(w, J, J, layout))
        if J > floor[name]:
            reserve = max(reserve, codec.repack_transient(w, J - 1, -1, layout))
    return reserve


def check_floor(manifest: Manifest, prefix: list[int], budget: int | None) -> None:
    """:class:`BudgetError` when ``budget`` is below the floor (``prefix``: :func:`prefix_bytes_at`)."""
    floor = prefix[manifest.floor_blocks]
    if budget is not None and budget < floor:
        raise BudgetError(
            f"memory budget {format_bytes(budget)} is below this artifact's floor of {format_bytes(floor)} "
            f"({floor} bytes); the full stack needs {format_bytes(prefix[-1])} ({prefix[-1]} bytes)"
        )


def blocks_for_budget(manifest: Manifest, budget: int | None, dtype: torch.dtype, *,
                      packed: Mapping[str, int] | None = None) -> int:
    """The longest prefix of the stack (≥ the floor) whose resident bytes are ≤ ``budget``.

    ``budget=None`` means the whole stack.  Raises :class:`BudgetError` below the floor.

    ``packed`` ({name: packed layout} of the weights that kernel mode stores packed): the longest
    prefix whose resident bytes *plus* :func:`repack_reserve` (a load's room, which covers any
    resize to that prefix and a later shrink from it) fit ``budget``.  Loads and resizes use this
    one rule: a budget gives the same prefix whether it is loaded or resized to, whatever came
    before.  Resident bytes + reserve
    grow with the prefix, so a binary search finds it.  Below the floor + its reserve the answer
    is the floor all the same (a load is then short by at most that reserve; a resize to the
    floor only shrinks, which needs no room there): the floor stays the one error.  Without
    packed weights this is the plain longest prefix.
    """
    if budget is None:
        return len(manifest.stack)
    prefix = prefix_bytes_at(manifest, dtype)
    floor_blocks = manifest.floor_blocks
    check_floor(manifest, prefix, budget)
    plain = bisect.bisect_right(prefix, budget) - 1
    if not packed:
        return plain
    lo, hi = floor_blocks, plain  # the answer is in [lo, hi]; lo is the fallback
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if prefix[mid] + repack_reserve(manifest, mid, packed) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def memory_bytes(model: nn.Module) -> int:
    """Resident weight bytes of a model, counted from its live tensors.

    Parameters and buffers are counted once per storage; the blocks of every
    :class:`~bitstack.runtime.linear.BitStackLinear` add their storages' bytes.
    """
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
                for tensor in block.tensors:
                    add(tensor)
    return sum(seen.values())
