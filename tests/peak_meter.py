"""Peak resident weight bytes *during* ``bitstack.load`` and ``bitstack.resize`` (issue 6, part 5).

:class:`PeakMeter` is a ``TorchDispatchMode``: while it is active, every aten op goes through
it.  After every op that returns a CPU tensor with a storage none of its inputs had (an
allocation), it takes a *census* of the live bytes:

* every CPU tensor of the model (parameters, buffers, the blocks of every ``BitStackLinear``
  and its packed tensors in kernel mode), each storage counted once, as
  ``bitstack.memory_bytes`` counts them;
* plus every CPU tensor created while the meter is active that is still alive (staged blocks,
  tensors read but not yet attached, conversion copies, scratch), again once per storage.

Zero-dimensional tensors (scalars such as ``torch.empty((), dtype=...)`` used to ask an
itemsize) are not weights and are left out.  Live bytes can only rise at an allocation, so the
maximum over the censuses (plus one at entry and one at exit) is the peak: nothing is assumed
about where the code under test allocates.  What is *not* seen: memory that is not a torch
tensor (file buffers, NumPy arrays, Python objects) and tensors that only C++ holds.

The model is given to the meter, or, for a load, picked up as soon as the loader builds its
skeleton (:func:`metered_load` wraps ``bitstack.runtime.loader._build_skeleton`` for the duration
of the call; nothing in the library is switched globally).

Also a command line, to measure a real artifact::

    python tests/peak_meter.py ART.bstk [--budgets floor,100MB,full] [--steps 20] [--dtype bfloat16] [--kernels]
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _cpu_tensors(value) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor) and t.device.type == "cpu"]


def _storages(tensors) -> dict[int, int]:
    """{storage address: bytes} of the CPU tensors with at least one dimension among ``tensors``."""
    out = {}
    for tensor in tensors:
        if tensor is not None and tensor.device.type == "cpu" and tensor.dim() > 0:
            storage = tensor.untyped_storage()
            out[storage.data_ptr()] = storage.nbytes()
    return out


def _module_tensors(module) -> list[torch.Tensor]:
    """A module's own tensors as ``bitstack.memory_bytes`` counts them, plus the packed ones of kernel mode."""
    from bitstack.runtime.linear import BitStackLinear

    tensors = list(module._parameters.values()) + list(module._buffers.values())
    if isinstance(module, BitStackLinear):
        for block in module.blocks:
            tensors += [block.signs, block.u, block.v]
        if module.packed is not None:  # PackedBitStack (signs, u, v) or PackedPlanes (signs; grids are buffers)
            tensors += [getattr(module.packed, part) for part in ("signs", "u", "v") if hasattr(module.packed, part)]
    return tensors


class PeakMeter(TorchDispatchMode):
    """Peak live CPU tensor bytes of a model plus everything allocated while active (module docstring).

    Attributes after the ``with`` block: ``start`` and ``end`` (bytes at entry and exit), ``peak``,
    ``peak_op`` (the op after which the peak was seen, or "entry"/"exit"), ``censuses``.

    Bookkeeping (for speed on real models; the result is the same as a full recount): a tensor
    created while active is counted from its creation to its death (``weakref.finalize``), per
    storage; the model's storages are recounted per module only when the module's tensors or
    blocks changed (compared by object identity, which holds within one load or one resize: the
    loader and ``LiveStack`` only append, only pop, or replace a block list wholesale).
    """

    def __init__(self, model=None):
        super().__init__()
        self.model = model
        self._created_bytes: dict[int, int] = {}  # storage address -> bytes, of live tensors created while active
        self._created_refs: dict[int, int] = {}  # storage address -> number of live such tensors
        self._modules: dict[int, tuple[tuple, dict[int, int]]] = {}  # id(module) -> (identity key, storages)
        self.start = self.end = self.peak = 0
        self.peak_op = ""
        self.censuses = 0

    def _forget(self, address: int) -> None:
        self._created_refs[address] -= 1
        if not self._created_refs[address]:
            del self._created_refs[address], self._created_bytes[address]

    def _model_storages(self) -> list[dict[int, int]]:
        from bitstack.runtime.linear import BitStackLinear

        parts = []
        for module in self.model.modules():
            key = (tuple(map(id, module._parameters.values())), tuple(map(id, module._buffers.values())))
            if isinstance(module, BitStackLinear):
                key += (tuple(map(id, module.blocks)), id(module.packed))
            cached = self._modules.get(id(module))
            if cached is None or cached[0] != key:
                cached = self._modules[id(module)] = (key, _storages(_module_tensors(module)))
            parts.append(cached[1])
        return parts

    def census(self, where: str) -> int:
        sizes: dict[int, int] = {}
        if self.model is not None:
            for part in self._model_storages():
                sizes.update(part)
        sizes.update(self._created_bytes)
        total = sum(sizes.values())
        self.censuses += 1
        if total > self.peak:
            self.peak, self.peak_op = total, where
        return total

    def __enter__(self):
        mode = super().__enter__()
        self.start = self.census("entry")
        return mode

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self.end = self.census("exit")
        return result

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _cpu_tensors((args, kwargs))}
        allocated = False
        for tensor in _cpu_tensors(out):
            if tensor.dim() == 0:
                continue
            storage = tensor.untyped_storage()
            address, nbytes = storage.data_ptr(), storage.nbytes()
            if not nbytes:
                continue
            self._created_bytes[address] = nbytes
            self._created_refs[address] = self._created_refs.get(address, 0) + 1
            weakref.finalize(tensor, self._forget, address)
            allocated |= address not in inputs
        if allocated:
            self.census(str(func))
        return out


@contextlib.contextmanager
def _skeleton_to(meter: PeakMeter):
    """For the duration: the loader hands the model it builds to ``meter``."""
    from bitstack.runtime import loader

    original: Callable = loader._build_skeleton

    def build(manifest):
        model = original(manifest)
        meter.model = model
        return model

    loader._build_skeleton = build
    try:
        yield
    finally:
        loader._build_skeleton = original


@contextlib.contextmanager
def kernels_on_load():
    """For the duration: every new ``BitStackLinear`` asks for kernel mode (``kernels=True``), so
    that a CPU load packs its weights as a CUDA load does (Triton's interpreter must be on)."""
    from bitstack.runtime.linear import BitStackLinear

    original = BitStackLinear.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.kernels = True

    BitStackLinear.__init__ = init
    try:
        yield
    finally:
        BitStackLinear.__init__ = original


def metered_load(path, memory, *, kernels: bool = False, **kwargs):
    """``bitstack.load(path, memory, **kwargs)`` under a :class:`PeakMeter`; returns (model, meter).

    ``kernels``: load in kernel mode (see :func:`kernels_on_load`)."""
    import bitstack

    meter = PeakMeter()
    with _skeleton_to(meter), (kernels_on_load() if kernels else contextlib.nullcontext()), meter:
        model = bitstack.load(path, memory, **kwargs)
    return model, meter


def metered_resize(model, memory):
    """``bitstack.resize(model, memory)`` under a :class:`PeakMeter`; returns (report, meter)."""
    import bitstack

    meter = PeakMeter(model)
    with meter:
        report = bitstack.resize(model, memory)
    return report, meter


def main() -> int:
    """Measure the peaks of loads and of a random resize sequence of one artifact; print JSON."""
    import argparse
    import json
    import platform
    import random
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("artifact")
    parser.add_argument("--budgets", default="floor,full", help="comma-separated: floor, full or sizes")
    parser.add_argument("--steps", type=int, default=20, help="random resizes after loading at the floor")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--kernels", action="store_true",
                        help="kernel mode (packed weights, as on CUDA), on the CPU through Triton's interpreter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.kernels:
        import triton_interpreter  # tests/, next to this file

        triton_interpreter.setup()
    import bitstack
    from bitstack.artifact.reader import ArtifactReader
    from bitstack.memory import parse_memory
    from bitstack.runtime.budget import prefix_bytes_at
    from bitstack.runtime.loader import resolve_dtype

    torch.set_num_threads(args.threads)
    with ArtifactReader(args.artifact) as reader:
        manifest = reader.manifest
    dtype = resolve_dtype(args.dtype, manifest.compression.get("dtype", "bfloat16"))
    prefix = prefix_bytes_at(manifest, dtype)
    floor, full = prefix[manifest.floor_blocks], prefix[-1]
    named = {"floor": floor, "full": full}
    out = {"artifact": str(args.artifact), "dtype": str(dtype), "stored_dtype": manifest.compression.get("dtype"),
           "kernels": args.kernels, "floor_bytes": floor, "full_bytes": full, "blocks": len(manifest.stack),
           "torch": torch.__version__, "machine": platform.machine(), "loads": [], "resizes": []}
    for text in args.budgets.split(","):
        budget = named.get(text) or parse_memory(text)
        started = time.perf_counter()
        model, meter = metered_load(args.artifact, budget, dtype=dtype, device="cpu", kernels=args.kernels)
        if args.kernels:
            assert all(m.packed is not None for m in model.bitstack.modules.values() if m.blocks)
        out["loads"].append({"budget": budget, "blocks": model.bitstack.loaded, "peak": meter.peak,
                             "final": bitstack.memory_bytes(model),
                             "over_budget": meter.peak - budget, "peak_op": meter.peak_op,
                             "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(out["loads"][-1]), flush=True)
        del model
    rng = random.Random(args.seed)
    with kernels_on_load() if args.kernels else contextlib.nullcontext():  # the floor: no reserve to keep
        model = bitstack.load(args.artifact, floor, dtype=dtype, device="cpu")
    previous = floor
    for _ in range(args.steps):
        budget = rng.choice([rng.randint(floor, full), prefix[rng.randint(manifest.floor_blocks, len(prefix) - 1)]])
        before = bitstack.memory_bytes(model)
        report, meter = metered_resize(model, budget)
        out["resizes"].append({"budget_before": previous, "budget": budget, "bytes_before": before,
                               "bytes_after": report.new_bytes, "blocks_after": report.new_blocks, "peak": meter.peak,
                               "over_max_budget": meter.peak - max(previous, budget), "peak_op": meter.peak_op})
        print(json.dumps(out["resizes"][-1]), flush=True)
        previous = budget
    out["max_over_budget"] = max([r["over_budget"] for r in out["loads"]] + [r["over_max_budget"] for r in out["resizes"]])
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
