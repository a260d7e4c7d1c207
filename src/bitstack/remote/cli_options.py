"""Command-line options for remote artifacts, shared by every command that takes an artifact.

``add_remote_options(parser)`` adds ``--cache-dir``, ``--cache-limit``, ``--timeout`` and
``--offline``; :func:`remote_options` turns them into :class:`RemoteOptions` (None when the
artifact is local, so local paths behave as before); :func:`progress_printer` is what
``--progressive`` prints to stderr.
"""

from __future__ import annotations

import argparse
import sys

from bitstack.memory import format_bytes
from bitstack.remote.urls import RemoteOptions, is_remote


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("remote artifacts (https://, http://, hf:// locations)")
    group.add_argument("--cache-dir", default=None,
                       help="cache folder (default: $BITSTACK_CACHE, else $XDG_CACHE_HOME/bitstack or ~/.cache/bitstack)")
    group.add_argument("--cache-limit", default=None,
                       help="bytes the cache may hold, e.g. 20GB (default: $BITSTACK_CACHE_LIMIT or 50GB)")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds a connect or read may wait (default: 30)")
    group.add_argument("--offline", action="store_true", help="use only what the cache holds; no network")


def remote_options(args: argparse.Namespace) -> RemoteOptions | None:
    """The :class:`RemoteOptions` the arguments ask for (None for a local artifact)."""
    if not is_remote(getattr(args, "artifact", None)):
        return None
    return RemoteOptions(cache_dir=args.cache_dir, cache_limit=args.cache_limit, timeout=args.timeout,
                         offline=args.offline).check()


def progress_printer(progress) -> None:
    """Print one line per progressive step to stderr."""
    state = "done" if progress.done else ("stopped" if progress.stopped else "loading")
    error = f": {progress.error}" if progress.error is not None else ""
    print(f"[bitstack] {state} {format_bytes(progress.resident_bytes)} of {format_bytes(progress.target_bytes)} "
          f"({progress.loaded_blocks}/{progress.target_blocks} blocks, {format_bytes(progress.fetched_bytes)} fetched, "
          f"{progress.seconds:.1f} s){error}", file=sys.stderr, flush=True)
