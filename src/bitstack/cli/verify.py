"""``bitstack verify``: check every checksum of an artifact (all files, every block)."""

from __future__ import annotations

import argparse

from bitstack.cli.common import artifact_arguments, print_json
from bitstack.errors import ArtifactError


def run(args: argparse.Namespace) -> int:
    from bitstack.artifact.verify import verify_artifact
    from bitstack.memory import format_bytes

    report = verify_artifact(args.artifact)
    if args.json:
        print_json({"path": str(report.path), "ok": report.ok, "files": report.files, "blocks": report.blocks,
                    "bytes": report.bytes, "problems": report.problems})
    else:
        for problem in report.problems:
            print(problem)
    if not report.ok:
        raise ArtifactError(f"{report.path} is damaged: {len(report.problems)} problem(s)"
                            f"{'' if args.json else ' listed above'}; recompress it or restore a copy")
    if not args.json:
        print(f"{report.path}: ok ({report.files} files, {report.blocks} blocks, {format_bytes(report.bytes)} checked)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("verify", help="check every checksum of an artifact",
                       description="Check an artifact completely: the manifest, the sha256 of every file and the "
                                   "checksum of every block (a load checks only what it reads). Exit code 2 if damaged.")
    artifact_arguments(p, memory=False, remote=False)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)
