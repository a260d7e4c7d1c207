"""``AutoResizer``: keep a loaded model sized to the memory its device has free.

Every ``interval`` seconds it reads the device's free memory (CUDA: ``torch.cuda.mem_get_info``;
CPU: the kernel's MemAvailable) and computes the budget the model may use:

    desired = clamp(resident + free - reserve, floor, full)

It shrinks as soon as ``desired < resident`` (memory pressure must be answered at once) and grows
only when ``desired > resident + hysteresis``; either way it resizes to ``desired - hysteresis/2``
(at least the floor; the full stack when ``desired`` is the full size), which leaves slack so that small fluctuations do not cause a resize.  Each
change is reported to ``on_change``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bitstack.errors import BudgetError, InputError
from bitstack.memory import parse_memory
from bitstack.runtime.stack import LiveStack, ResizeReport


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA free memory, or the system's available RAM on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError as err:
        raise InputError("cannot read free memory on this system: install psutil or give a fixed size instead of auto") from err


@dataclass(frozen=True)
class AutoEvent:
    time: float
    free_bytes: int
    desired_bytes: int
    report: ResizeReport


class AutoResizer:
    """Follow the device's free memory (see the module docstring).

    Args:
        model: a model returned by :func:`bitstack.load`.
        reserve: memory to leave free for everything else (activations, other programs).
        hysteresis: dead band against resize churn.
        interval: seconds between checks when running in the background.
        probe: returns free bytes (default: :func:`free_memory` of the model's device); tests
            and simulations pass their own.
        on_change: called with an :class:`AutoEvent` after every resize.
    """

    def __init__(self, model: nn.Module, *, reserve: str | int = "512MB", hysteresis: str | int = "16MB",
                 interval: float = 0.5, probe: Callable[[], int] | None = None,
                 on_change: Callable[[AutoEvent], None] | None = None):
        state = getattr(model, "bitstack", None)
        if not isinstance(state, LiveStack):
            raise InputError("AutoResizer needs a model returned by bitstack.load()")
        if interval <= 0:
            raise InputError(f"interval must be positive, got {interval}")
        self.state = state
        self.reserve = parse_memory(reserve)
        self.hysteresis = parse_memory(hysteresis)
        self.interval = interval
        self.probe = probe or (lambda: free_memory(state.device))
        self.on_change = on_change
        self.events: list[AutoEvent] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def desired_bytes(self, free: int) -> int:
        state = self.state
        return min(max(state.resident_bytes + free - self.reserve, state.floor_bytes), state.full_bytes)

    def step(self) -> AutoEvent | None:
        """Check once; resize if needed.  Returns the event, or None when nothing changed."""
        state = self.state
        free = self.probe()
        desired = self.desired_bytes(free)
        resident = state.resident_bytes
        grow = desired > resident + self.hysteresis or (desired == state.full_bytes > resident)
        if desired < resident or grow:
            target = desired if desired >= state.full_bytes else max(desired - self.hysteresis // 2, state.floor_bytes)
            try:
                report = state.resize(target)
            except BudgetError:
                return None
            if report.new_blocks == report.old_blocks:
                return None
            event = AutoEvent(time.time(), free, desired, report)
            self.events.append(event)
            if self.on_change is not None:
                self.on_change(event)
            return event
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.step()

    def start(self) -> "AutoResizer":
        """Check every ``interval`` seconds on a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self.step()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="bitstack-auto-resize", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "AutoResizer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
