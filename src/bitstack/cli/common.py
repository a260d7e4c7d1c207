"""Helpers shared by the command modules: artifact and budget options, JSON output, text files,
the numeric option checks."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bitstack.errors import InputError
from bitstack.remote.cli_options import add_artifact_argument

# Numeric options of any command, checked before the command runs (CompressConfig checks its own).
_AT_LEAST_ONE = ("seqlen", "max_windows", "limit", "batch_size", "max_new_tokens", "eval_seqlen", "eval_windows",
                 "val_windows", "val_seqlen", "greedy_step", "greedy_max_age", "points")
_AT_LEAST_ZERO = ("temperature", "seed")


def artifact_arguments(p: argparse.ArgumentParser, *, memory: bool = True, remote: bool = True) -> None:
    """The artifact positional, and with ``memory`` the --memory, --device and --dtype options.

    With ``remote`` the artifact may be a URL (``https://``, ``hf://``) and the remote options
    (--cache-dir, --timeout, ...) are added: ``args.artifact`` is then what ``bitstack.load`` and
    ``open_artifact`` take, options included (:mod:`bitstack.remote.cli_options`)."""
    add_artifact_argument(p, remote=remote)
    if memory:
        p.add_argument("--memory", default=None, help="budget for resident weight bytes, e.g. 120MB, 1.5GiB, 123456; "
                       "'auto' (generate, chat) follows free memory (default: whole stack)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
        p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")


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
    shard_mb = getattr(args, "shard_mb", None)
    if shard_mb is not None and not (math.isfinite(shard_mb) and shard_mb > 0):
        raise InputError(f"--shard-mb must be a positive number, got {shard_mb}")
