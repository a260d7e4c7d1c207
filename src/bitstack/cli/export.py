"""``bitstack export``: an artifact at a budget as a plain transformers folder or a GGUF file, or
the artifact as a transformers folder.  Its options are the fields of
:class:`bitstack.integrations.export.ExportConfig`, so the command and :func:`export` agree."""

from __future__ import annotations

import argparse
import dataclasses

from bitstack.cli.common import print_json
from bitstack.remote.cli_options import add_artifact_argument


def config_from_args(args: argparse.Namespace):
    """The :class:`ExportConfig` of the parsed options."""
    from bitstack.integrations.export import ExportConfig

    return ExportConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExportConfig)})


def run(args: argparse.Namespace) -> int:
    from bitstack.integrations.export import export
    from bitstack.memory import format_bytes

    report = export(args.artifact, args.output, config_from_args(args))
    if args.json:
        print_json(report)
    else:
        print(f"wrote {report['output']} ({report['format']}): {report['blocks']} blocks, "
              f"{format_bytes(report['resident_bytes'])} resident as a BitStack model")
        for tensor in report.get("tensors", []):
            print(f"  {tensor['name']}: {tensor['type']}, relative error {tensor['rel_error']:.3g}")
    return 0


def register(sub) -> None:
    from bitstack.integrations.export import ExportConfig

    p = sub.add_parser("export", help="write an artifact at a budget as a transformers folder or a GGUF file",
                       description="Export an artifact at a memory budget (docs/transformers.md).")
    add_artifact_argument(p, remote=False)  # export reads (and bitstack-hf copies) every file of a local artifact
    p.add_argument("-o", "--output", required=True, help="folder (hf, bitstack-hf) or file (gguf) to write")
    for f in dataclasses.fields(ExportConfig):
        option = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(option, dest=f.name, action="store_true", help=f.metadata["help"])
        else:
            p.add_argument(option, dest=f.name, default=f.default, choices=f.metadata.get("choices"),
                           help=f.metadata["help"] if f.default is None else f"{f.metadata['help']} (default: {f.default})")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)
