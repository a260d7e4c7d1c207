"""The ``bitstack`` command line: compress, info, verify, eval, generate, chat, demo, sort, curve,
export, serve.

One module per command (or group of commands) with a ``register(subparsers)`` function that adds
its parser(s) and sets ``func``; :data:`COMMANDS` lists them in the order ``--help`` shows.
Adding a command: one module, one line in :data:`COMMANDS`.  Errors the user can fix
(:class:`bitstack.errors.BitstackError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from bitstack.cli import compress, curve, demo, evaluate, export, generate, info, serve, sort, verify
from bitstack.cli.common import check_numbers
from bitstack.cli.compress import config_from_args
from bitstack.cli.info import info_dict
from bitstack.errors import BitstackError, storage_error

__all__ = ["main", "build_parser", "config_from_args", "info_dict", "COMMANDS"]

COMMANDS = (compress, info, verify, evaluate, generate, demo, sort, curve, export, serve)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like the library's own errors."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bitstack", description="Compress an LLM once; load it at any memory budget.")
    parser.add_argument("--version", action="version", version=f"bitstack {__import__('bitstack').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_numbers(args)
        if getattr(args, "quiet", False):
            with _library_bars_off():
                return args.func(args)
        return args.func(args)
    except BitstackError as err:
        return _one_line_error(err)
    except OSError as err:  # the disk or the file system, wherever the library did not name it itself
        return _one_line_error(storage_error(err, f"{args.command} failed"))
    except KeyboardInterrupt:
        resumes = " (rerun the same command to resume where it stopped)" if args.command in RESUMABLE else ""
        print(f"\nbitstack: interrupted{resumes}", file=sys.stderr)  # on its own line, after any progress bar
        return 130


RESUMABLE = ("compress", "sort", "demo")  # commands whose rerun resumes the saved progress


@contextlib.contextmanager
def _library_bars_off():
    """--quiet: no progress bar of transformers or huggingface_hub either (e.g. "Loading weights");
    their switches are process-wide, so they are restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # also turns huggingface_hub's bars off
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _one_line_error(err: BaseException) -> int:
    message = " ".join(str(err).split())
    print(f"bitstack: error: {message}", file=sys.stderr)
    return 2
