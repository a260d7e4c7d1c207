"""Timing helpers shared by the CPU benchmarks: interleaved rounds, medians, machine load."""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable


def load_average() -> str:
    """The 1/5/15-minute load averages (``uptime``'s numbers), or "unknown"."""
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


STATS = {"median": statistics.median, "min": min}  # --stat: min is the load-robust estimate on a shared machine
STAT_HELP = ("median (default) or min of the calls of a round and of the rounds: on a shared, loaded machine the "
             "minimum approximates the time without preemption")


def median_call_s(fn: Callable[[], object], calls: int, stat: str = "median") -> float:
    """The ``stat`` (median or min) wall time in seconds of ``calls`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return STATS[stat](times)


def interleaved(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every ``fns[name]()`` (each returns one measurement) once per round, in turn, for
    ``rounds`` rounds, so that a change of machine load hits every contender alike."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def memory_bandwidth_gbs(megabytes: int = 512, repeats: int = 7, stat: str = "median") -> float:
    """This machine's copy bandwidth in GB/s (bytes read + written per second), the median of
    ``repeats`` copies of a ``megabytes`` MB buffer (far larger than the caches); ``stat`` as in
    :func:`median_call_s`."""
    import torch

    src = torch.ones(megabytes << 20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    seconds = median_call_s(lambda: dst.copy_(src), repeats, stat)
    return 2 * src.numel() / seconds / 1e9


def threads_note(threads: int) -> str:
    return f"{threads} threads (torch.set_num_threads), {os.cpu_count()} CPUs"
