"""Live resizing under a scripted memory-pressure scenario.

    python -m benchmarks.resize.pressure ARTIFACT [--device cpu] [--out runs/resize] [--result benchmarks/results/resize/pressure.json]

The budget follows a schedule that goes down to the floor and back up to the full stack several
times.  At every step it records the resident size, the blocks loaded, the bytes read and the
resize latency; for every grow it also times, in the same run and the same page-cache state:

* ``raw``: plain ``readinto`` of exactly the same byte ranges of the shards (no checksum, no
  tensors) into a buffer dropped at once — pure I/O;
* ``raw into new memory``: the same reads into buffers that are kept, i.e. landing in newly
  faulted-in pages, as a grow's bytes must;
* ``reload``: ``bitstack.load`` from scratch at the new budget — whose weights must equal the
  resized model's exactly (checked with ``torch.equal``, the run fails otherwise).

All shard files are read once first so that every measurement sees a warm page cache (the same
state for resize and raw).  Writes a JSON log and a PNG plot to --out and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import bitstack
from bitstack.artifact.reader import ArtifactReader
from bitstack.artifact.safetensors_io import read_header

SCHEDULE = [1.0, 0.75, 0.5, 0.25, 0.0, 0.2, 0.45, 0.7, 0.95, 1.0, 0.6, 0.3, 0.05, 0.35, 0.65, 0.9, 0.4, 0.1, 0.8, 1.0,
            0.55, 0.15, 0.0, 0.5, 1.0]


def raw_read_seconds(path: Path, manifest, start: int, stop: int, *, keep: bool) -> float:
    """Time plain reads of the byte ranges of stack blocks [start, stop).

    keep=False reads every block into a buffer that is dropped at once (the allocator hands the
    same warm pages back: pure I/O); keep=True keeps every buffer alive, so the bytes land in
    new memory, as they must when a model grows.
    """
    starts = {i: read_header(path / s.file).data_start for i, s in enumerate(manifest.shards)}
    handles = {i: open(path / s.file, "rb") for i, s in enumerate(manifest.shards)}
    kept = []
    try:
        began = time.perf_counter()
        for entry in manifest.stack[start:stop]:
            buffer = torch.empty(entry.bytes, dtype=torch.uint8)
            handle = handles[entry.shard]
            handle.seek(starts[entry.shard] + entry.offset)
            handle.readinto(memoryview(buffer.numpy()))
            if keep:
                kept.append(buffer)
        return time.perf_counter() - began
    finally:
        for handle in handles.values():
            handle.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/resize")
    parser.add_argument("--reload-every", type=int, default=3, help="time a from-scratch reload on every Nth grow")
    parser.add_argument("--result", default=None, help="also write (or update this device's row of) a result file "
                        "(benchmarks/resultfile.py), e.g. benchmarks/results/resize/pressure.json")
    args = parser.parse_args()
    path, out = Path(args.artifact), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    with ArtifactReader(path) as reader:
        manifest = reader.manifest
    for shard in manifest.shards:  # warm the page cache
        (path / shard.file).read_bytes()
    floor, full = manifest.floor_bytes, manifest.full_bytes
    cuda = device.type == "cuda"
    load_peak = None
    if cuda:  # peak device bytes while loading at a mid budget must stay within it
        torch.cuda.reset_peak_memory_stats(device)
        mid = (floor + full) // 2
        probe = bitstack.load(path, mid, device=device)
        load_peak = {"budget": mid, "peak_allocated": torch.cuda.max_memory_allocated(device),
                     "resident": bitstack.memory_bytes(probe)}
        del probe
        torch.cuda.empty_cache()
    model = bitstack.load(path, full, device=device)
    steps = []
    grows = 0
    for number, fraction in enumerate(SCHEDULE):
        budget = int(floor + fraction * (full - floor))
        before = model.bitstack.loaded
        allocated_before = torch.cuda.memory_allocated(device) if cuda else None
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        target_blocks = max(before, manifest_prefix_target(manifest, budget))
        raw = raw_read_seconds(path, manifest, before, target_blocks, keep=False)
        raw_fresh = raw_read_seconds(path, manifest, before, target_blocks, keep=True)
        report = bitstack.resize(model, budget)
        if cuda:
            torch.cuda.synchronize(device)
        step = {"step": number, "budget": budget, "resident": bitstack.memory_bytes(model), "blocks": report.new_blocks,
                "bytes_read": report.bytes_read, "seconds": report.seconds, "kind": "grow" if report.grew else
                ("shrink" if report.new_blocks < report.old_blocks else "none")}
        if cuda:
            step["cuda_allocated_delta"] = torch.cuda.memory_allocated(device) - allocated_before
            step["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(device)  # only the model lives on the GPU
        if report.grew:
            step["raw_seconds"] = raw
            step["raw_fresh_seconds"] = raw_fresh
            step["vs_raw"] = report.seconds / raw if raw > 0 else None
            step["vs_raw_fresh"] = report.seconds / raw_fresh if raw_fresh > 0 else None
            if grows % args.reload_every == 0:
                began = time.perf_counter()
                fresh = bitstack.load(path, budget, device=device)
                step["reload_seconds"] = time.perf_counter() - began
                step["matches_fresh_load"] = same_weights(model, fresh)
                assert step["matches_fresh_load"], f"step {number}: resized weights differ from a fresh load"
                del fresh
            grows += 1
        assert step["resident"] <= budget
        steps.append(step)
        print(f"step {number:2d}: {step['kind']:6s} -> {step['resident'] / 1e6:7.1f} MB, {report.new_blocks:5d} blocks, "
              f"read {report.bytes_read / 1e6:7.1f} MB in {report.seconds * 1e3:8.2f} ms"
              + (f" (raw {raw * 1e3:7.2f} ms x{step['vs_raw']:.2f}; into new memory {raw_fresh * 1e3:7.2f} ms "
                 f"x{step['vs_raw_fresh']:.2f})" if report.grew else ""))
    grow_steps = [s for s in steps if s["kind"] == "grow" and s["bytes_read"] > 8e6]
    shrink_steps = [s for s in steps if s["kind"] == "shrink"]
    total_read = sum(s["bytes_read"] for s in grow_steps)
    summary = {
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}",
        "device": str(device),
        "grow_vs_raw_aggregate": sum(s["seconds"] for s in grow_steps) / sum(s["raw_seconds"] for s in grow_steps),
        "grow_vs_raw_median": statistics.median(s["vs_raw"] for s in grow_steps),
        "grow_vs_raw_fresh_aggregate": sum(s["seconds"] for s in grow_steps) / sum(s["raw_fresh_seconds"] for s in grow_steps),
        "grow_vs_raw_fresh_median": statistics.median(s["vs_raw_fresh"] for s in grow_steps),
        "grow_GBps": total_read / sum(s["seconds"] for s in grow_steps) / 1e9,
        "raw_GBps": total_read / sum(s["raw_seconds"] for s in grow_steps) / 1e9,
        "shrink_ms_median": statistics.median(s["seconds"] * 1e3 for s in shrink_steps),
        "shrink_ms_max": max(s["seconds"] * 1e3 for s in shrink_steps),
        "load_peak": load_peak,
        "resize_peak_over_budget_max": max((s["cuda_peak_allocated"] - s["budget"] for s in steps), default=None) if cuda else None,
        "fresh_load_checks": sum(1 for s in steps if s.get("matches_fresh_load")),
        "reload_vs_grow_median": statistics.median(s["reload_seconds"] / s["seconds"] for s in grow_steps if "reload_seconds" in s),
    }
    (out / "resize_pressure.json").write_text(json.dumps({"summary": summary, "steps": steps}, indent=1))
    plot(steps, floor, full, out / "resize_pressure.png")
    print(json.dumps(summary, indent=1))
    if args.result:
        write_rows(Path(args.result), "CUDA" if cuda else "CPU", {"summary": summary, "steps": steps})


COLUMNS = ["model on", "grow time vs raw reads into new memory (aggregate / median)", "grow time vs pure I/O (aggregate)",
           "grow GB/s", "pure I/O GB/s", "shrink ms (median / max)", "reload from scratch vs grow (median)"]


def result_row(name: str, summary: dict) -> list:
    """One row of the result table: a device's grow, shrink and reload figures."""
    s = summary
    return [name, f"{s['grow_vs_raw_fresh_aggregate']:.2f}× / {s['grow_vs_raw_fresh_median']:.2f}×",
            f"{s['grow_vs_raw_aggregate']:.2f}×", f"{s['grow_GBps']:.2f}", f"{s['raw_GBps']:.2f}",
            f"{s['shrink_ms_median']:.1f} / {s['shrink_ms_max']:.1f}", f"{s['reload_vs_grow_median']:.1f}×"]


def write_rows(path: Path, name: str, run: dict) -> None:
    """Write ``path`` with this device's row, keeping the other devices' rows of an existing file."""
    from benchmarks.resultfile import read_result, write_result

    old = read_result(path) if path.is_file() else {"rows": [], "extra": {}}
    extra = {k: v for k, v in old["extra"].items() if k != name.lower()}
    extra[name.lower()] = run
    rows = [r for r in old["rows"] if r[0] != name] + [result_row(name, run["summary"])]
    write_result(path, title="Growing and shrinking in place under a scripted memory-pressure scenario", topic="resize",
                 columns=COLUMNS, rows=sorted(rows), extra=extra,
                 notes=("A grow's time covers reading, checking the xxh3-128 checksums, building the views, moving them "
                        "to the device and swapping them in under the lock. Baselines measured in the same run for the "
                        "same byte ranges: pure I/O (`readinto` into a buffer dropped at once, so warm pages are reused) "
                        "and raw reads into new memory (buffers kept, so the bytes land in newly faulted-in pages, as a "
                        "grow's must). Warm page cache."))


def same_weights(a, b) -> bool:
    """Every loaded block of every weight identical (torch.equal) in two loaded models."""
    for name, module in a.bitstack.modules.items():
        other = b.bitstack.modules[name]
        if len(module.blocks) != len(other.blocks):
            return False
        for x, y in zip(module.blocks, other.blocks):
            if not (torch.equal(x.signs, y.signs) and torch.equal(x.u, y.u) and torch.equal(x.v, y.v)):
                return False
    return True


def manifest_prefix_target(manifest, budget: int) -> int:
    from bitstack.runtime.budget import blocks_for_budget

    return blocks_for_budget(manifest, budget, torch.bfloat16 if manifest.compression.get("dtype") == "bfloat16" else torch.float32)


def plot(steps, floor: int, full: int, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x = [s["step"] for s in steps]
    top.step(x, [s["budget"] / 1e6 for s in steps], where="post", label="budget", color="0.6", linestyle="--")
    top.step(x, [s["resident"] / 1e6 for s in steps], where="post", label="resident weights")
    top.axhline(floor / 1e6, color="red", linewidth=0.8, label="floor")
    top.axhline(full / 1e6, color="green", linewidth=0.8, label="full stack")
    top.set_ylabel("MB")
    top.legend(loc="lower left", fontsize=8)
    top.set_title("BitStack live resizing under memory pressure")
    colors = ["tab:blue" if s["kind"] == "grow" else "tab:orange" for s in steps]
    bottom.bar(x, [s["seconds"] * 1e3 for s in steps], color=colors, label="resize")
    bottom.plot([s["step"] for s in steps if "raw_seconds" in s], [s["raw_seconds"] * 1e3 for s in steps if "raw_seconds" in s],
                "k.", label="raw read of the same bytes (pure I/O)")
    bottom.plot([s["step"] for s in steps if "raw_fresh_seconds" in s], [s["raw_fresh_seconds"] * 1e3 for s in steps if "raw_fresh_seconds" in s],
                "rx", label="raw read into new memory")
    bottom.set_yscale("log")
    bottom.set_ylabel("ms (log)")
    bottom.set_xlabel("step (blue: grow, orange: shrink)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
