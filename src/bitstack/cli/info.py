"""``bitstack info``: sizes, floor and full stack of an artifact, and its budget table."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from bitstack.cli.common import artifact_arguments, print_json
from bitstack.remote.urls import is_remote


def _compression(m) -> dict:
    """The manifest's compression settings without the settings of codecs the artifact does not use."""
    from bitstack.codecs import codec_names, get_codec

    fields = {name: {f.name for f in dataclasses.fields(get_codec(name).settings_type)} for name in codec_names()}
    used = set().union(*(fields.get(c, set()) for c in m.codecs))
    other = set().union(*fields.values()) - used
    return {k: v for k, v in m.compression.items() if k not in other}


def budget_table(m, dtype) -> list[dict]:
    """Rows of the budget table at ``dtype``: for bits per parameter from the floor to the full
    stack (every half bit up to 4, then every bit), the budget in bytes, the blocks it holds
    (pure-PyTorch path) and their resident bytes and bits/param."""
    from bitstack.memory import BitsPerParam
    from bitstack.runtime.budget import base_bytes_at, blocks_for_budget, prefix_bytes_at

    base, params = base_bytes_at(m, dtype), m.decomposed_params()
    prefix = prefix_bytes_at(m, dtype)
    floor_bits, full_bits = 8 * (prefix[m.floor_blocks] - base) / params, 8 * (prefix[-1] - base) / params
    levels = [floor_bits] + [b / 2 for b in range(2, 17) if floor_bits < b / 2 < full_bits and (b % 2 == 0 or b < 8)]
    levels += [float(b) for b in range(9, math.ceil(full_bits)) if b > floor_bits] + [full_bits]
    rows = []
    for bits in levels:
        budget = max(BitsPerParam(bits).to_bytes(base, params), prefix[m.floor_blocks])
        blocks = blocks_for_budget(m, budget, dtype)
        rows.append({"bits_per_param": round(bits, 4), "budget_bytes": budget, "blocks": blocks, "memory_bytes": prefix[blocks],
                     "held_bits_per_param": round(8 * (prefix[blocks] - base) / params, 4)})
    return rows


def _measured_curve(path: str) -> tuple[Path | None, list[dict]]:
    """The points of ``ARTIFACT-curve.csv`` (what ``bitstack curve`` writes by default), if present."""
    from bitstack.evaluation.curve import read_series_csv

    csv = Path(f"{str(path).rstrip('/')}-curve.csv")
    if not csv.is_file():
        return None, []
    series = read_series_csv(csv)
    points = series.get(Path(path).name) or next(iter(series.values()), [])
    return csv, [p.to_dict() for p in sorted(points, key=lambda p: p.memory_bytes)]


def info_dict(path) -> dict:
    """What ``bitstack info --json`` prints for the artifact at ``path``."""
    from bitstack.artifact.opening import open_artifact
    from bitstack.config import resolve_dtype

    with open_artifact(path, verify=False) as reader:  # a folder or a URL (only its manifest is fetched)
        m = reader.manifest
        params = m.decomposed_params()
        dtype = resolve_dtype(None, m.compression.get("dtype", "bfloat16"))
        curve_file, curve = _measured_curve(path) if not is_remote(path) else (None, [])
        return {
            "path": str(path),
            "format_version": m.format_version,
            "library_version": m.library_version,
            "model_source": m.model["source"],
            "model_type": m.model["config"]["model_type"],
            "num_weights": len(m.weights),
            "num_blocks": len(m.stack),
            "floor_blocks": m.floor_blocks,
            "decomposed_params": params,
            "base_bytes": m.base_bytes,
            "floor_bytes": m.floor_bytes,
            "full_bytes": m.full_bytes,
            "floor_bits_per_param": round(8 * (m.floor_bytes - m.base_bytes) / params, 4),
            "full_bits_per_param": round(8 * (m.full_bytes - m.base_bytes) / params, 4),
            "disk_bytes": reader.disk_bytes(),  # of a URL: what the cache holds
            "codec": ", ".join(m.codecs),
            "codec_params": {w.codec: w.params for w in reversed(m.weights)},
            "codec_summary": m.codec_summary(),
            "niter": m.compression.get("niter"),
            "fallbacks": m.compression.get("fallbacks", {}),
            "compression": _compression(m),
            "budgets": budget_table(m, dtype),
            "budget_dtype": str(dtype).replace("torch.", ""),
            "curve_file": None if curve_file is None else str(curve_file),
            "curve": curve,
        }


def run(args: argparse.Namespace) -> int:
    info = info_dict(args.artifact)
    if args.json:
        print_json(info)
        return 0
    from bitstack.memory import format_bytes

    print(f"{info['path']}: {info['model_type']} from {info['model_source']} (format v{info['format_version']})")
    print(f"  {info['num_weights']} decomposed weights, {info['num_blocks']} blocks ({info['codec_summary']}, "
          f"niter {info['niter']})")
    print(f"  floor {format_bytes(info['floor_bytes'])} ({info['floor_bits_per_param']} bits/param), "
          f"full {format_bytes(info['full_bytes'])} ({info['full_bits_per_param']} bits/param), "
          f"non-decomposed {format_bytes(info['base_bytes'])}")
    for name, used in info["fallbacks"].items():
        for value, count in used.items():
            print(f"  {count} weights use {name} {value!r} instead of {info['compression'].get(name)!r} (too few calibration tokens)")
    print(f"\n  budgets (weights in {info['budget_dtype']}; load with --memory BITSbits or --memory BYTES):")
    print(f"  {'bits/param':>10}  {'budget':>12}  {'blocks':>6}  {'resident':>12}  {'held bits/param':>15}")
    for row in info["budgets"]:
        print(f"  {row['bits_per_param']:>10.2f}  {format_bytes(row['budget_bytes']):>12}  {row['blocks']:>6}  "
              f"{format_bytes(row['memory_bytes']):>12}  {row['held_bits_per_param']:>15.2f}")
    if info["curve"]:
        print(f"\n  measured perplexity ({info['curve_file']}):")
        print(f"  {'resident':>12}  {'bits/param':>10}  {'blocks':>6}  {'ppl':>10}")
        for p in info["curve"]:
            bits = "" if p["bits_per_param"] is None else f"{p['bits_per_param']:.2f}"
            blocks = "" if p["blocks"] is None else str(p["blocks"])
            print(f"  {format_bytes(p['memory_bytes']):>12}  {bits:>10}  {blocks:>6}  {p['ppl']:>10.3f}")
    else:
        print(f"\n  no measured curve: `bitstack curve {info['path']} --ppl TEXT --points 8` writes one")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="describe an artifact and its budgets",
                       description="Describe an artifact: sizes, floor, full stack, and a table of budgets "
                                   "(bits/param -> bytes -> blocks), with the measured curve if ARTIFACT-curve.csv exists.")
    artifact_arguments(p, memory=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
