"""The ``bitstack`` command line: compress, info, eval, generate, chat, demo, sort, curve, serve.

One module per command (or group of commands) with a ``register(subparsers)`` function that adds
its parser(s) and sets ``func``; :data:`COMMANDS` lists them in the order ``--help`` shows.
Adding a command: one module, one line in :data:`COMMANDS`.  Errors the user can fix
(:class:`bitstack.errors.BitstackError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from bitstack.cli import compress, curve, demo, evaluate, export, generate, info, serve, sort
from bitstack.cli.common import check_numbers
from bitstack.cli.compress import config_from_args
from bitstack.cli.info import info_dict
from bitstack.errors import BitstackError

__all__ = ["main", "build_parser", "config_from_args", "info_dict", "COMMANDS"]

COMMANDS = (compress, info, evaluate, generate, demo, sort, curve, export, serve)


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
        return args.func(args)
    except BitstackError as err:
        message = " ".join(str(err).split())
        print(f"bitstack: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bitstack: interrupted", file=sys.stderr)
        return 130
