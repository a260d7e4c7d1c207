"""Quality ablations of the compression method on SmolLM2-135M.

Each ``--variant NAME:key=value,key=value`` is a set of :class:`bitstack.CompressConfig` fields
(on top of ``--nsamples``/``--seqlen``/``--calib``) plus an optional ``sort=STRATEGY``, which
re-sorts the finished artifact with that strategy.  For every variant the script compresses the
embedded model once (kept under ``--out``; a rerun reuses it), then measures WikiText-2
perplexity at budgets of ``--bits`` bits per decomposed parameter, each budget loading the
longest prefix of that variant's stack that fits (as ``bitstack.load`` does).  One JSON line per
(variant, budget) goes to ``OUT/results.jsonl``; finished points are skipped on a rerun.

Example (2-core CPU):

    python -m benchmarks.quality.ablation --calib ../shared/data/calibration_wikipedia.txt \\
        --ppl ../shared/data/wikitext2_test.txt --out runs/ablation --max-windows 20 \\
        --variant paper:codec=avd,niter=16,rank=16,sort=proxy \\
        --variant planes-g128:codec=planes,group_size=128 --bits 2.5,3,3.25,4,4.25,5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch


def parse_variant(text: str) -> tuple[str, dict, str | None]:
    """``NAME:key=value,...`` -> (name, CompressConfig overrides, sort strategy or None)."""
    from bitstack.config import CompressConfig

    name, _, spec = text.partition(":")
    kinds = {f.name: type(f.default) for f in dataclasses.fields(CompressConfig)}
    settings: dict = {}
    sort = None
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "sort":
            sort = value
        elif key in kinds:
            settings[key] = kinds[key](value)
        else:
            raise SystemExit(f"unknown setting {key!r} in variant {name!r}")
    return name, settings, sort


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib", required=True)
    parser.add_argument("--ppl", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--bits", default="2.5,3,3.25,4,4.25,5")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--max-windows", type=int, default=None, help="first N test windows (default: all 148)")
    parser.add_argument("--dtype", default="float32", help="compute dtype of the evaluation")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import bitstack
    from bitstack.artifact.reader import ArtifactReader
    from bitstack.config import CompressConfig
    from bitstack.evaluation.curve import measure_curve
    from bitstack.runtime.budget import base_bytes_at
    from bitstack.runtime.loader import resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = set()
    if results.is_file():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done.add((row["variant"], row["bits_target"], row["windows"]))
    text = Path(args.ppl).read_text(encoding="utf-8")
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    for spec in args.variant:
        name, settings, sort = parse_variant(spec)
        config = CompressConfig(calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, **settings)
        path = out / f"{name}.bstk"
        seconds = None
        if not (path / "manifest.json").is_file():
            started = time.perf_counter()
            bitstack.compress("smollm2-135m", path, config, device="cpu", overwrite=True, progress=False)
            if sort:
                from bitstack.sorting import SortSettings, sort_artifact

                sort_artifact(path, sort, SortSettings(val=args.calib, device="cpu"), progress=False)
            seconds = round(time.perf_counter() - started, 1)
            print(f"[{name}] compressed in {seconds} s", flush=True)
        with ArtifactReader(path, verify=False) as reader:
            manifest = reader.manifest
        base = base_bytes_at(manifest, resolve_dtype(args.dtype, "float32"))
        params = manifest.decomposed_params()
        wanted = [b for b in (float(x) for x in args.bits.split(",")) if (name, b, args.max_windows) not in done]
        budgets = {base + int(b * params / 8): b for b in wanted}
        feasible = {k: v for k, v in budgets.items() if k >= manifest.prefix_bytes[manifest.floor_blocks]
                    - manifest.base_bytes + base}
        if not feasible:
            continue
        started = time.perf_counter()
        points = measure_curve(path, text, budgets=list(feasible), max_windows=args.max_windows, dtype=args.dtype,
                               device="cpu", label=name, skip_below_floor=True, progress=False)
        elapsed = time.perf_counter() - started
        with results.open("a") as handle:
            for point in points:
                row = {"variant": name, "settings": settings, "sort": sort or CompressConfig().sort,
                       "bits_target": feasible[point.budget_bytes], "windows": args.max_windows,
                       "memory_bytes": point.memory_bytes, "bits_per_param": point.bits_per_param, "ppl": point.ppl,
                       "nsamples": args.nsamples, "seqlen": args.seqlen, "compress_seconds": seconds,
                       "eval_seconds": round(elapsed / max(1, len(points)), 1), "machine": machine}
                handle.write(json.dumps(row) + "\n")
                print(f"[{name}] {row['bits_per_param']:.2f} bits ({point.memory_bytes / 1e6:.1f} MB): ppl {point.ppl:.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
