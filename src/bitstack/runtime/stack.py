"""The live block stack of a loaded model: how much is resident, and resizing it in place.

``model.bitstack`` is a :class:`LiveStack`; :func:`bitstack.load` makes one with no block and
grows it to its budget's prefix with :meth:`LiveStack.move_to`, the code of every resize.  Growing
reads only the missing blocks of the stack from the artifact (verified, staged outside the lock),
then appends them under the lock; shrinking pops the newest blocks under the lock and drops every reference to them, so their
memory is freed.  Forward passes hold the same lock (hooks installed by :meth:`attach`), so a
resize requested from another thread takes effect between forward passes, never inside one.
"""

from __future__ import annotations

import threading
import time
import types
from dataclasses import dataclass

import torch
from torch import nn

from bitstack.artifact.opening import open_artifact
from bitstack.artifact.reader import ArtifactReader
from bitstack.errors import ArtifactError, InputError
from bitstack.runtime.budget import blocks_for_budget, budget_bytes, memory_bytes
from bitstack.runtime.linear import BitStackLinear, append_blocks, packed_groups


@dataclass(frozen=True)
class ResizeReport:
    """What one resize did."""

    old_blocks: int
    new_blocks: int
    old_bytes: int  # resident weight bytes before
    new_bytes: int  # and after
    bytes_read: int  # block bytes read from the artifact (0 when shrinking)
    seconds: float

    @property
    def grew(self) -> bool:
        return self.new_blocks > self.old_blocks


class LiveStack:
    """What a loaded model knows of its artifact, and the lock that orders resizes and forwards."""

    def __init__(self, reader: ArtifactReader, modules: dict[str, BitStackLinear], loaded: int,
                 dtype: torch.dtype, device: torch.device, budget: int | None, prefix_bytes: list[int]):
        self.reader = reader
        self.modules = modules
        self.loaded = loaded  # blocks of the stack that are resident (a prefix)
        self.dtype = dtype
        self.device = device
        self.budget = budget
        self.prefix_bytes = prefix_bytes
        self.lock = threading.RLock()  # held by every forward pass and by the swap of a resize
        self._resize_lock = threading.Lock()  # one resize at a time
        self._handles: list = []

    @property
    def manifest(self):
        return self.reader.manifest

    @property
    def resident_bytes(self) -> int:
        """Resident weight bytes as the manifest predicts them (== ``memory_bytes(model)``)."""
        return self.prefix_bytes[self.loaded]

    @property
    def floor_bytes(self) -> int:
        return self.prefix_bytes[self.manifest.floor_blocks]

    @property
    def full_bytes(self) -> int:
        return self.prefix_bytes[-1]

    def attach(self, model: nn.Module) -> None:
        """Make every eager forward pass of ``model`` hold the lock (a forward that
        ``torch.compile`` traces takes none: a lock is no graph operation, so resize a compiled
        model between its calls, not during one); make ``model.to(dtype or device)`` (and
        ``.float()``, ``.half()``, ``.cuda()`` …) refuse a change that the accounting cannot follow,
        and ``model.get_memory_footprint()`` report the resident bytes.  The hooks are bound
        methods, so ``copy.deepcopy(model)`` gives them to the copy's own stack."""
        self._handles = [model.register_forward_pre_hook(self._enter),
                         model.register_forward_hook(self._leave, always_call=True)]
        model._apply = types.MethodType(_guarded_apply, model)
        model.get_memory_footprint = types.MethodType(_memory_footprint, model)

    def _enter(self, module, args) -> None:
        if not torch.compiler.is_compiling():
            self.lock.acquire()

    def _leave(self, module, args, output) -> None:
        if not torch.compiler.is_compiling():
            self.lock.release()

    def __deepcopy__(self, memo: dict) -> "LiveStack":
        """The stack of a deep-copied model: its own reader (file handles), locks and modules (the
        copies of this stack's modules, through ``memo``), the same loaded prefix and budget."""
        import copy

        location = getattr(self.reader, "url", self.reader.path)  # a remote artifact's reader keeps its URL
        reader = open_artifact(location, verify=self.reader.verify, remote=getattr(self.reader, "options", None))
        if reader.manifest != self.manifest:
            reader.close()
            raise ArtifactError(f"{self.reader.path} changed on disk since the model was loaded: load it again instead of copying")
        new = LiveStack(reader, {}, self.loaded, self.dtype, self.device, self.budget, list(self.prefix_bytes))
        memo[id(self)] = new
        new.modules = copy.deepcopy(self.modules, memo)
        return new

    def blocks_for(self, budget: int | None) -> int:
        """The prefix a budget holds (``None``: the whole stack): the longest that fits, with room
        for the repacks of kernel mode (:func:`~bitstack.runtime.budget.blocks_for_budget`), the
        same whether loaded or resized to.  :class:`~bitstack.errors.BudgetError` below the floor."""
        return blocks_for_budget(self.manifest, budget, self.dtype, packed=packed_groups(self.modules, self.device))

    def resize(self, memory: str | int | None) -> ResizeReport:
        """Grow or shrink to the longest prefix that fits ``memory`` (``None``: the whole stack).

        Raises :class:`~bitstack.errors.BudgetError` below the floor (nothing changes then).

        Kernel mode: the prefix leaves room for the repacks of this resize and of a later shrink
        (:func:`~bitstack.runtime.budget.repack_reserve`), so that a grow peaks within
        ``memory`` and a shrink within the budget of the load or resize before it; the room is a
        load's, so the prefix is the one a fresh load at ``memory`` would hold (:meth:`blocks_for`).
        """
        started = time.perf_counter()
        budget = budget_bytes(self.manifest, memory, self.dtype)
        with self._resize_lock:
            return self._move_to(self.blocks_for(budget), budget, started)

    def move_to(self, target: int, budget: int | None) -> ResizeReport:
        """Hold the first ``target`` blocks of the stack (a load grows from none to its prefix
        with this, a resize with :meth:`resize`); ``budget`` is recorded as the budget."""
        started = time.perf_counter()
        with self._resize_lock:
            return self._move_to(target, budget, started)

    def _move_to(self, target: int, budget: int | None, started: float) -> ResizeReport:
        """Read the missing blocks (verified, outside the lock: forwards go on), then between
        forward passes append them or pop the surplus, and repack every changed weight."""
        old = self.loaded
        staged = self.reader.read_blocks(old, target, self.device) if target > old else []
        with self.lock:  # between forward passes
            if target > old:
                append_blocks(self.modules, staged)
                staged = []  # the modules own the new blocks: a repack below frees them weight by weight
            else:
                for position in range(old - 1, target - 1, -1):
                    entry = self.manifest.stack[position]
                    blocks = self.modules[entry.tensor].blocks
                    if len(blocks) != entry.index + 1:
                        raise RuntimeError(f"stack out of sync at block {position} ({entry.tensor})")
                    blocks.pop()
            for name in dict.fromkeys(e.tensor for e in self.manifest.stack[min(old, target):max(old, target)]):
                self.modules[name].blocks_changed()  # kernel mode: repack this weight alone (Codec.pack)
            self.loaded = target
            self.budget = budget
        del staged
        if target != old and self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the freed blocks (and replaced packed tensors) back to the device
        read = self.prefix_bytes[target] - self.prefix_bytes[old] if target > old else 0
        return ResizeReport(old, target, self.prefix_bytes[old], self.prefix_bytes[target], read,
                            time.perf_counter() - started)


def _guarded_apply(model: nn.Module, fn, recurse: bool = True):
    """``nn.Module._apply`` of a loaded model: an :class:`InputError` if ``fn`` would change the
    dtype or the device of any parameter or buffer (the blocks, the codecs' buffers and the memory
    accounting would not follow); the dtype and device of a BitStack model are chosen at
    :func:`bitstack.load`.  ``fn`` is tried on an empty tensor of each (dtype, device) present."""
    state = model.bitstack
    kinds = dict.fromkeys([(state.dtype, state.device)] + [(t.dtype, t.device) for t in list(model.parameters()) + list(model.buffers())])
    for dtype, device in kinds:
        moved = fn(torch.empty(0, dtype=dtype, device=device))
        if isinstance(moved, torch.Tensor) and (moved.dtype != dtype or moved.device != device):
            raise InputError(
                f"a loaded BitStack model cannot change its tensors from {dtype} on {device} to {moved.dtype} on "
                f"{moved.device} in place (the budget of {state.dtype} weights on {state.device} would no longer "
                "hold): load it again with bitstack.load(path, memory, device=..., dtype=...)")
    return type(model)._apply(model, fn, recurse)


def _memory_footprint(model: nn.Module, return_buffers: bool = True) -> int:
    """``PreTrainedModel.get_memory_footprint`` of a loaded model: its resident weight bytes
    (:func:`bitstack.memory_bytes`: blocks included, which transformers' own count misses)."""
    return memory_bytes(model)


def resize(model: nn.Module, memory: str | int | None) -> ResizeReport:
    """Resize a model returned by :func:`bitstack.load` to ``memory`` in place."""
    state = getattr(model, "bitstack", None)
    if not isinstance(state, LiveStack):
        raise InputError("resize() needs a model returned by bitstack.load()")
    return state.resize(memory)
