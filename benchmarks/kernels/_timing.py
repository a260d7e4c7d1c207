"""Timing and checking helpers shared by the kernel benchmarks (not a script).

:class:`Timing` times a callable on the GPU: ``graph`` replays it from a CUDA graph (no Python
launch overhead) with the L2 flushed before each replay, median of ``triton.testing.do_bench``;
with ``smoke=True`` (a CPU dry run under ``TRITON_INTERPRET=1``) every timing is one wall-clock
call, so that a script's logic can be checked without a GPU.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "src", ROOT):  # this tree's bitstack and benchmarks, also when run as a file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def log(*a) -> None:
    print(*a, flush=True)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """‖y - ref‖ / ‖ref‖ in float32."""
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def poison(nbytes: int, device) -> None:
    """Fill the caching allocator's next block with NaN so that unwritten outputs show."""
    p = torch.full((max(1, nbytes // 2),), float("nan"), dtype=torch.float16, device=device)
    del p


def cell(row: dict, key: str, fmt: str = "{:.1f}") -> str:
    """``row[key]`` formatted for a markdown table, "–" when absent."""
    return fmt.format(row[key]) if row.get(key) is not None else "–"


@dataclass(frozen=True)
class Timing:
    """GPU timings in µs (module docstring); ``smoke``: one wall-clock call each, on the CPU."""

    smoke: bool = False

    def bench(self, fn, rep: int = 60) -> float:
        """Median µs of ``fn`` (``triton.testing.do_bench``, L2 flushed before each call)."""
        if self.smoke:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e6
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median") * 1e3

    def graph(self, fn, rep: int = 60) -> float:
        """Median µs of ``fn`` replayed from a CUDA graph, L2 flushed before each replay."""
        if self.smoke:
            return self.bench(fn, rep)
        fn()
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize()
        t = self.bench(graph.replay, rep)
        del graph
        return t

    def kernel_profile(self, fn, iters: int = 20) -> dict:
        """Average device µs per call of each kernel ``fn`` launches (torch.profiler / CUPTI)."""
        if self.smoke:
            return {}
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn()
            torch.cuda.synchronize()
        out = {}
        for ev in prof.key_averages():
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if t:
                out[ev.key[:60]] = round(t / iters, 2)
        return out

    def copy_bandwidth(self, device) -> float:
        """Device-to-device copy GB/s (bytes read + written) of a 1 GiB buffer."""
        n = 1 << (16 if self.smoke else 30)
        a = torch.empty(n, dtype=torch.uint8, device=device).random_()
        b = torch.empty_like(a)
        t = self.bench(lambda: b.copy_(a), rep=200)
        return 2 * n / (t * 1e-6) / 1e9

    def matmul_tflops(self, device) -> float:
        """fp16 TFLOP/s of an 8192³ matmul."""
        n = 64 if self.smoke else 8192
        a = torch.randn(n, n, device=device, dtype=torch.float16)
        b = torch.randn(n, n, device=device, dtype=torch.float16)
        t = self.bench(lambda: a @ b, rep=200)
        return 2 * n ** 3 / (t * 1e-6) / 1e12


def device_info(device) -> dict:
    """torch and triton versions, and the GPU's name and SM count (none on the CPU)."""
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__}
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["sms"] = torch.cuda.get_device_properties(device).multi_processor_count
    return info


def default_out(name: str) -> str:
    """Where a kernel benchmark writes its result file by default."""
    return str(ROOT / "benchmarks" / "results" / "kernels" / f"{name}.json")
