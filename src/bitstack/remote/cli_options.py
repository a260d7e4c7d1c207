"""The artifact argument of the command line: a local folder or a URL, with the remote options.

:func:`add_artifact_argument` adds the positional ``artifact`` and, unless ``remote`` is off, the
options ``--cache-dir``, ``--cache-limit``, ``--timeout`` and ``--offline``.  Whatever their order
on the command line, ``args.artifact`` ends up as the location to hand to ``bitstack.load``,
``load_tokenizer`` or ``open_artifact``: the folder as given, or for a URL a
:class:`~bitstack.remote.urls.RemoteURL` that carries the options, so that a command never looks
at them.  A URL where a command needs a local folder (``remote=False``) and a bad option are
argparse errors (one line, exit 2).  :func:`progress_printer` prints ``--progressive``'s steps.
"""

from __future__ import annotations

import argparse
import sys

from bitstack.errors import BitstackError
from bitstack.memory import format_bytes
from bitstack.remote.urls import RemoteOptions, RemoteURL, is_remote

_OPTIONS = ("cache_dir", "cache_limit", "timeout", "offline")  # RemoteOptions fields set from the command line
ARTIFACT_HELP = "artifact directory, or its URL: https://HOST/PATH/ART or hf://ORG/REPO[@REV][/DIR]"


def _location(value, namespace: argparse.Namespace, action: argparse.Action):
    """``value`` as the artifact location: a RemoteURL with the namespace's options for a URL."""
    if not is_remote(value):
        return value
    if not getattr(namespace, "_remote_artifact", True):
        raise argparse.ArgumentError(action, f"{value} is a URL: this command needs a local artifact directory")
    try:
        options = RemoteOptions(**{name: getattr(namespace, name) for name in _OPTIONS}).check()
    except BitstackError as err:
        raise argparse.ArgumentError(action, str(err)) from err
    return RemoteURL(str(value), options)


class _Artifact(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, _location(values, namespace, self))


class _RemoteOption(argparse.Action):
    """Stores the option, then gives an artifact URL parsed before it the new options."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        artifact = getattr(namespace, "artifact", None)
        if is_remote(artifact):
            namespace.artifact = _location(str(artifact), namespace, self)


def add_artifact_argument(parser: argparse.ArgumentParser, *, remote: bool = True) -> None:
    """The ``artifact`` positional; with ``remote``, URLs and the options of remote artifacts."""
    parser.set_defaults(_remote_artifact=remote)
    if not remote:
        parser.add_argument("artifact", action=_Artifact, help="artifact directory (local)")
        return
    parser.add_argument("artifact", action=_Artifact, help=ARTIFACT_HELP)
    group = parser.add_argument_group("remote artifacts (https://, http://, hf:// locations)")
    group.add_argument("--cache-dir", action=_RemoteOption, default=None,
                       help="cache folder (default: $BITSTACK_CACHE, else $XDG_CACHE_HOME/bitstack or ~/.cache/bitstack)")
    group.add_argument("--cache-limit", action=_RemoteOption, default=None,
                       help="bytes the cache may hold, e.g. 20GB (default: $BITSTACK_CACHE_LIMIT or 50GB)")
    group.add_argument("--timeout", action=_RemoteOption, type=float, default=RemoteOptions.timeout,
                       help=f"seconds a connect or read may wait (default: {RemoteOptions.timeout:g})")
    group.add_argument("--offline", action=_RemoteOption, nargs=0, const=True, default=False,
                       help="use only what the cache holds; no network")


def progress_printer(progress) -> None:
    """Print one line per progressive step to stderr."""
    state = "done" if progress.done else ("stopped" if progress.stopped else "loading")
    error = f": {progress.error}" if progress.error is not None else ""
    print(f"[bitstack] {state} {format_bytes(progress.resident_bytes)} of {format_bytes(progress.target_bytes)} "
          f"({progress.loaded_blocks}/{progress.target_blocks} blocks, {format_bytes(progress.fetched_bytes)} fetched, "
          f"{progress.seconds:.1f} s){error}", file=sys.stderr, flush=True)
