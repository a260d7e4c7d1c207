"""The model's weights and the memory target, as the serving engine sees them.

:class:`Weights` wraps a model returned by :func:`bitstack.load` (resizable between its floor
and its full stack) or any other transformers model (fixed size: a float baseline).  Shrinking
is done by the engine thread between two forward passes; growing reads blocks from the
artifact, so it runs on a background thread in steps (:meth:`Weights.allot`), and the stack's
own lock attaches the new blocks between two forward passes.

:class:`Target` is the memory target: a fixed byte count, or ``auto``: the device's free memory
(CUDA: ``torch.cuda.mem_get_info``; CPU: the kernel's MemAvailable) plus what this server holds,
minus a reserve.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bitstack.memory import format_bytes, parse_memory
from bitstack.runtime.auto import free_memory


@dataclass(frozen=True)
class ResizeEvent:
    time: float
    old_bytes: int
    new_bytes: int
    seconds: float

    @property
    def direction(self) -> str:
        return "grow" if self.new_bytes > self.old_bytes else "shrink"


class Weights:
    """Resident weights of the served model and the bytes they are allotted (see the module doc).

    ``grow_step``: bytes read per background grow (default: 1/8 of floor..full); ``hysteresis``:
    how far the allotment must exceed the weights before they grow (default: 1/32 of
    floor..full), for at least ``grow_delay`` seconds (requests coming and going do not make
    the weights churn); ``on_resize`` is called with a :class:`ResizeEvent` after every resize
    that changed blocks.

    Resizes are ordered: a shrink waits for a grow step under way, then applies the latest
    allotment, so a stale grow never lands after a shrink.
    """

    def __init__(self, model, *, grow_step: int | None = None, hysteresis: int | None = None, grow_delay: float = 1.0,
                 on_resize: Callable[[ResizeEvent], None] | None = None):
        from bitstack import memory_bytes

        self.model = model
        self.stack = getattr(model, "bitstack", None)
        self.on_resize = on_resize
        self.errors = 0
        if self.stack is not None:
            self.floor, self.full = self.stack.floor_bytes, self.stack.full_bytes
            manifest = self.stack.manifest
            self._params = manifest.decomposed_params()
            self._fixed_bits = None
        else:
            self.floor = self.full = memory_bytes(model)
            self._params = sum(p.numel() for p in model.parameters())
            self._fixed_bits = 8.0 * next(p for p in model.parameters() if p.is_floating_point()).element_size()
        self.step = grow_step or max((self.full - self.floor) // 8, 1)  # bytes per grow (a shrink waits at most one)
        self.hysteresis = hysteresis if hysteresis is not None else (self.full - self.floor) // 32  # against churn
        self.grow_delay = grow_delay
        self._allot = self.resident_bytes
        self._want = self._allot
        self._room_since: float | None = None  # since when the allotment has exceeded the weights
        self._lock = threading.Lock()  # guards _allot, _want, _room_since
        self._order = threading.Lock()  # held across deciding and doing one resize
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def resizable(self) -> bool:
        return self.stack is not None and self.full > self.floor

    @property
    def resident_bytes(self) -> int:
        return self.stack.resident_bytes if self.stack is not None else self.full

    @property
    def allotment(self) -> int:
        """Bytes granted to the weights (≥ resident; more while a grow is under way)."""
        with self._lock:
            return max(self._allot, self.resident_bytes)

    @property
    def bits_per_param(self) -> float:
        """Bits per decomposed parameter of the resident blocks (a float model: its dtype's bits).

        Blocks are dtype-independent (uint8 signs, float16 u, v), so this is read from the
        manifest's stored sizes."""
        if self._fixed_bits is not None:
            return self._fixed_bits
        manifest = self.stack.manifest
        return 8.0 * (manifest.prefix_bytes[self.stack.loaded] - manifest.base_bytes) / self._params

    def allot(self, allotment: int, slack: int = 0) -> None:
        """Give the weights ``allotment`` bytes: shrink now (``slack`` bytes lower, never under
        the floor) when it is below what they hold or may hold; let the grower read blocks up to
        it once it has exceeded that by the hysteresis (or reached the full stack) for
        ``grow_delay`` seconds."""
        if not self.resizable:
            return
        allotment = max(self.floor, min(self.full, allotment))
        now = time.monotonic()
        with self._lock:
            shrink = allotment < self._allot or allotment < self.resident_bytes
            room = not shrink and (allotment >= self._allot + self.hysteresis or allotment == self.full > self._allot)
            self._room_since = (self._room_since or now) if room else None
            grow = room and now - self._room_since >= self.grow_delay
            if shrink:
                self._want = self._allot = max(self.floor, allotment - slack)
            elif grow:
                self._want = allotment
            else:
                self._want = min(self._want, max(self._allot, allotment))
        if shrink:
            with self._order:  # after a grow step under way
                with self._lock:
                    budget = self._allot
                self._resize(budget)
        elif grow:
            self._wake.set()

    def _resize(self, budget: int) -> None:
        old = self.resident_bytes
        started = time.perf_counter()
        try:
            report = self.stack.resize(budget)
        except Exception:  # an artifact read failing mid-serve must not stop the server
            self.errors += 1
            with self._lock:
                self._allot = self._want = self.resident_bytes
            return
        if report.new_blocks != report.old_blocks and self.on_resize is not None:
            self.on_resize(ResizeEvent(time.time(), old, report.new_bytes, time.perf_counter() - started))

    def _grow_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            while not self._stop.is_set():
                with self._order:
                    with self._lock:
                        if self._want <= self._allot:
                            break
                        self._allot = min(self._want, self._allot + self.step)
                        budget = self._allot
                    self._resize(budget)

    def start(self) -> "Weights":
        if self.resizable and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._grow_loop, name="bitstack-serve-grow", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join()
            self._thread = None


class Target:
    """The memory target (see the module docstring); thread-safe, set live by ``/admin/memory``.

    ``probe`` returns free bytes (default: :func:`free_memory` of ``device``); an auto target is
    re-probed at most every ``interval`` seconds.
    """

    def __init__(self, spec: str | int, *, reserve: str | int, device: torch.device, interval: float = 0.5,
                 probe: Callable[[], int] | None = None):
        self.device = device
        self.interval = interval
        self.probe = probe or (lambda: free_memory(device))
        self._lock = threading.Lock()
        self._checked = 0.0
        self._value = 0
        self.set(spec, reserve)

    def set(self, spec: str | int, reserve: str | int | None = None) -> None:
        """``spec``: a size (``"300MB"``, bytes) or ``"auto"``; ``reserve``: kept free under auto."""
        auto = isinstance(spec, str) and spec.strip().lower() == "auto"
        value = 0 if auto else parse_memory(spec)
        reserve_bytes = None if reserve is None else parse_memory(reserve)
        with self._lock:
            self.auto = auto
            if reserve_bytes is not None:
                self.reserve = reserve_bytes
            self._value = value
            self._checked = 0.0

    def value(self, held: int) -> int:
        """The target in bytes; ``held``: what this server holds now (weights and KV), which an
        auto target counts as available (CUDA: the caching allocator's reserved bytes)."""
        with self._lock:
            if not self.auto:
                return self._value
            now = time.monotonic()
            if now - self._checked >= self.interval:
                if self.device.type == "cuda":
                    held = int(torch.cuda.memory_reserved(self.device))
                self._value = max(0, self.probe() + held - self.reserve)
                self._checked = now
            return self._value

    def describe(self) -> str:
        with self._lock:
            if self.auto:
                return f"auto (free memory minus {format_bytes(self.reserve)})"
            return format_bytes(self._value)
