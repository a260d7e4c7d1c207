"""``bitstack info``: sizes, floor and full stack of an artifact."""

from __future__ import annotations

import argparse

from bitstack.cli.common import artifact_arguments, print_json


def info_dict(path: str) -> dict:
    """What ``bitstack info --json`` prints for the artifact at ``path``."""
    from bitstack.artifact.reader import open_artifact

    with open_artifact(path, verify=False) as reader:  # a folder or a URL (only its manifest is fetched)
        m = reader.manifest
        params = m.decomposed_params()
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
            "compression": m.compression,
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
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="describe an artifact", description="Describe an artifact: sizes, floor, full stack.")
    artifact_arguments(p, memory=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
