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
from dataclasses import dataclass

import torch
from torch import nn

from bitstack.artifact.reader import ArtifactReader
from bitstack.errors import InputError
from bitstack.memory import parse_memory
from bitstack.runtime.budget import blocks_for_budget
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
        """Make every eager forward pass of ``model`` hold the lock.  A forward that
        ``torch.compile`` traces takes no lock (a lock is no graph operation): resize a compiled
        model between its calls, not during one."""

        def enter(module, args):
            if not torch.compiler.is_compiling():
                self.lock.acquire()

        def leave(module, args, output):
            if not torch.compiler.is_compiling():
                self.lock.release()

        self._handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]

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
        budget = None if memory is None else parse_memory(memory)
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


def resize(model: nn.Module, memory: str | int | None) -> ResizeReport:
    """Resize a model returned by :func:`bitstack.load` to ``memory`` in place."""
    state = getattr(model, "bitstack", None)
    if not isinstance(state, LiveStack):
        raise InputError("resize() needs a model returned by bitstack.load()")
    return state.resize(memory)
