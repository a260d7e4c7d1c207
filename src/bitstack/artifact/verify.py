"""Checking a whole artifact against its manifest: every checksum of every file and block.

A load checks what it reads (the base file, the tokenizer, the blocks of the loaded prefix);
:func:`verify_artifact` checks everything, so that a damaged or missing shard beyond any prefix
loaded so far is found now rather than when a budget first reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bitstack.artifact.opening import open_artifact
from bitstack.artifact.safetensors_io import read_header, sha256_file
from bitstack.errors import ArtifactError


@dataclass
class VerifyReport:
    """What :func:`verify_artifact` checked, and every problem found (one line each)."""

    path: Path
    files: int = 0
    blocks: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_artifact(path: str | Path) -> VerifyReport:
    """Check the artifact at ``path`` completely: the manifest (read and validated), the sha256 of
    the base file, of every tokenizer file and of every shard file, and the xxh3-128 of every
    block.  Reports every problem instead of stopping at the first; a manifest that cannot be
    read raises (:class:`~bitstack.errors.InputError` or :class:`~bitstack.errors.ArtifactError`)."""
    with open_artifact(path, verify=True) as reader:
        manifest, root = reader.manifest, reader.path
        report = VerifyReport(root)

        def check_file(file: Path, digest: str, what: str) -> bool:
            try:
                actual = sha256_file(file)
            except ArtifactError as err:
                report.problems.append(f"{what}: {err}")
                return False
            report.files += 1
            report.bytes += file.stat().st_size
            if actual != digest:
                report.problems.append(f"{what} {file} is corrupted: its sha256 does not match the manifest")
                return False
            return True

        check_file(root / manifest.base["file"], manifest.base["sha256"], "base file")
        if manifest.tokenizer is not None:
            folder = root / manifest.tokenizer["dir"]
            for name, digest in manifest.tokenizer["files"].items():
                check_file(folder / name, digest, "tokenizer file")
        readable = set()
        for number, shard in enumerate(manifest.shards):
            file = root / shard.file
            check_file(file, shard.sha256, "shard")
            try:
                if read_header(file).data_bytes == shard.bytes:
                    readable.add(number)
                else:
                    report.problems.append(f"shard {file} does not hold the {shard.bytes} bytes of blocks the manifest lists")
            except ArtifactError as err:
                report.problems.append(f"shard: {err}")
        for position, entry in enumerate(manifest.stack):
            if entry.shard not in readable:
                continue  # the shard's problem is reported once
            try:
                reader.read_block(position)
                report.blocks += 1
            except ArtifactError as err:
                report.problems.append(str(err))
    return report
