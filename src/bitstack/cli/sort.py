"""``bitstack sort``: re-sort an artifact's universal order (no recompression)."""

from __future__ import annotations

import argparse

from bitstack.cli.common import artifact_arguments, print_json
from bitstack.config import SORT_STRATEGIES


def run(args: argparse.Namespace) -> int:
    from bitstack.sorting import SortSettings, sort_artifact

    settings = SortSettings(val=args.val, val_windows=args.val_windows, val_seqlen=args.val_seqlen, batch_size=args.batch_size,
                            greedy_step=args.greedy_step, greedy_max_age=args.greedy_max_age, seed=args.seed,
                            device=args.device, dtype=args.dtype)
    result = sort_artifact(args.artifact, args.strategy, settings, shard_mb=args.shard_mb, use_cache=not args.no_cache,
                           progress=not args.quiet)
    if args.json:
        print_json(result.info)
    else:
        info = result.info
        print(f"sorted {args.artifact} by {args.strategy} in {info['seconds']} s "
              f"({info['forwards']} forward passes, {info['forward_equivalents']} full-forward equivalents)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("sort", help="re-sort an artifact's universal order (no recompression)",
                       description="Compute a universal order and rewrite the artifact's stack and shards atomically. "
                                   "average/greedy measurements are saved in ARTIFACT.sortcache/ and resumed.")
    artifact_arguments(p, memory=False, remote=False)  # rewrites the artifact in place
    p.add_argument("--strategy", required=True, choices=SORT_STRATEGIES, help="ordering strategy")
    p.add_argument("--val", default="self", help="validation text for fisher/average/greedy: a text file, or 'self' (sampled from the model; default)")
    p.add_argument("--val-windows", type=int, default=4, help="validation windows (default: 4)")
    p.add_argument("--val-seqlen", type=int, default=256, help="tokens per validation window (default: 256)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: 4)")
    p.add_argument("--greedy-step", type=int, default=8, help="greedy: blocks accepted per round (default: 8)")
    p.add_argument("--greedy-max-age", type=int, default=256, help="greedy: re-measure a gain older than this many blocks (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation windows and of random (default: 0)")
    p.add_argument("--shard-mb", type=float, default=None, help="shard size in MB (default: the artifact's)")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write ARTIFACT.sortcache/")
    p.add_argument("--json", action="store_true", help="print the sort info as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
