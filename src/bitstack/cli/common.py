"""Helpers shared by the command modules: artifact and budget options, JSON output, text files,
the numeric option checks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from bitstack.errors import InputError
from bitstack.remote.cli_options import add_artifact_argument

# Numeric options of any command, checked before the command runs (CompressConfig checks its own).
_AT_LEAST_ONE = ("seqlen", "max_windows", "limit", "batch_size", "max_new_tokens", "eval_seqlen", "eval_windows",
                 "val_windows", "val_seqlen", "greedy_step", "greedy_max_age", "points", "top_k")
_AT_LEAST_ZERO = ("temperature", "seed")


def artifact_arguments(p: argparse.ArgumentParser, *, memory: bool = True, auto: bool = True, remote: bool = True) -> None:
    """The artifact positional, and with ``memory`` the --memory, --device and --dtype options
    (``auto``: --memory also takes 'auto').

    With ``remote`` the artifact may be a URL (``https://``, ``hf://``) and the remote options
    (--cache-dir, --timeout, ...) are added: ``args.artifact`` is then what ``bitstack.load`` and
    ``open_artifact`` take, options included (:mod:`bitstack.remote.cli_options`)."""
    add_artifact_argument(p, remote=remote)
    if memory:
        p.add_argument("--memory", default=None, help="budget for resident weight bytes, e.g. 120MB, 1.5GiB, 123456, or bits "
                       "per parameter, e.g. 3.5bits" + ("; 'auto' follows free memory" if auto else "") + " (default: whole stack)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
        p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")


def settings_options(p: argparse.ArgumentParser, settings_type, *, skip: tuple[str, ...] = ()) -> None:
    """One option per field of the settings dataclass ``settings_type`` (but ``skip``), with the
    default, help and choices of its metadata (:func:`bitstack.codecs.base.setting`): the Python
    API and the command line share one set of defaults.  A field whose default is ``None`` names
    its value type in the metadata (``type=int``)."""
    for f in dataclasses.fields(settings_type):
        if f.name in skip:
            continue
        kind = f.metadata.get("type") or type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default,
                       choices=f.metadata.get("choices"),
                       help=f.metadata["help"] + ("" if f.default is None else f" (default: {f.default})"))


def settings_from_args(settings_type, args: argparse.Namespace, **extra):
    """The ``settings_type`` of the options :func:`settings_options` added (and ``extra`` fields)."""
    names = {f.name for f in dataclasses.fields(settings_type)}
    return settings_type(**{n: getattr(args, n) for n in names if n not in extra and hasattr(args, n)}, **extra)


def print_budget_note(model) -> None:
    """Tell (on stderr) when the budget is more than the whole stack needs."""
    from bitstack.runtime.report import budget_note

    note = budget_note(model)
    if note:
        print(f"[bitstack] {note}", file=sys.stderr)


def print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def read_text(path: str) -> str:
    """The UTF-8 text of ``path``; InputError if it is missing or not UTF-8."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"text file {path} does not exist")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text") from err


def check_numbers(args: argparse.Namespace) -> None:
    """InputError naming the option if a numeric option of the command is out of range."""
    if getattr(args, "command", None) == "compress":
        return
    for name in _AT_LEAST_ONE + _AT_LEAST_ZERO:
        value = getattr(args, name, None)
        least = 1 if name in _AT_LEAST_ONE else 0
        if value is not None and (not math.isfinite(value) or value < least):
            option = "--" + name.replace("_", "-")
            raise InputError(f"{option} must be {'a positive' if least else 'a non-negative'} number, got {value}")
    top_p = getattr(args, "top_p", None)
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InputError(f"--top-p must be in (0, 1], got {top_p}")
    shard_mb = getattr(args, "shard_mb", None)
    if shard_mb is not None and not (math.isfinite(shard_mb) and shard_mb > 0):
        raise InputError(f"--shard-mb must be a positive number, got {shard_mb}")
