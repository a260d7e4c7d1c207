"""``bitstack sort``: re-sort an artifact's universal order (no recompression)."""

from __future__ import annotations

import argparse

from bitstack.cli.common import artifact_arguments, print_json, settings_from_args, settings_options
from bitstack.config import SORT_STRATEGIES
from bitstack.sorting.driver import SortSettings


def run(args: argparse.Namespace) -> int:
    from bitstack.sorting import sort_artifact

    settings = settings_from_args(SortSettings, args)
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
    settings_options(p, SortSettings)
    p.add_argument("--shard-mb", type=float, default=None, help="shard size in MB (default: the artifact's)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write ARTIFACT.sortcache/")
    p.add_argument("--json", action="store_true", help="print the sort info as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
