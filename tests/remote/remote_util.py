"""Helpers of the remote tests: what a prefix's bytes are, and model equality."""

from __future__ import annotations

from pathlib import Path

import torch

from bitstack.artifact.reader import ArtifactReader
from bitstack.artifact.safetensors_io import read_header


def manifest_of(path):
    with ArtifactReader(path) as reader:
        return reader.manifest


def block_ranges(folder: Path, start: int, stop: int) -> dict[str, list[tuple[int, int]]]:
    """{shard file: merged byte ranges} that fetching stack positions [start, stop) reads when
    [0, start) is in the cache: the blocks, plus the header of every shard they touch that no
    block before ``start`` (nor the stack's first block) is in."""
    manifest = manifest_of(folder)
    spans: dict[str, list[tuple[int, int]]] = {}
    known = {manifest.stack[p].shard for p in range(0, max(start, 1))}
    shards = {manifest.stack[p].shard for p in range(start, stop)} - known
    if start == 0:
        shards.add(manifest.stack[0].shard)
    for number in shards:
        file = manifest.shards[number].file
        spans.setdefault(file, []).append((0, read_header(folder / file).data_start))
    for p in range(start, stop):
        e = manifest.stack[p]
        file = manifest.shards[e.shard].file
        data_start = read_header(folder / file).data_start
        spans.setdefault(file, []).append((data_start + e.offset, data_start + e.offset + e.bytes))
    out = {}
    for file, pieces in spans.items():
        merged: list[tuple[int, int]] = []
        for a, b in sorted(pieces):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        out[file] = merged
    return out


def shard_ranges_sent(server, artifact: str) -> dict[str, list[tuple[int, int]]]:
    """{shard file: merged byte ranges the server sent} for the shards of ``artifact``."""
    files = {s.path for s in server.served() if s.path.startswith(artifact + "/blocks-")}
    return {f.split("/", 1)[1]: server.ranges_sent(f) for f in files}


def block_bytes_sent(server, artifact: str) -> int:
    return sum(s.sent for s in server.served() if s.path.startswith(artifact + "/blocks-"))


def same_model(a, b) -> bool:
    """Identical blocks (signs, u, v) and identical other tensors."""
    if a.bitstack.loaded != b.bitstack.loaded:
        return False
    for name, module in a.bitstack.modules.items():
        other = b.bitstack.modules[name].blocks
        if len(module.blocks) != len(other):
            return False
        for x, y in zip(module.blocks, other):
            if not (torch.equal(x.signs, y.signs) and torch.equal(x.u, y.u) and torch.equal(x.v, y.v)):
                return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def data_bytes_sent(server, folder: Path, artifact: str) -> int:
    """Bytes of shard data sections (blocks, not headers) that the server sent for ``artifact``."""
    total = 0
    for s in server.served():
        if s.path.startswith(artifact + "/blocks-") and s.sent:
            data_start = read_header(folder / s.path.split("/", 1)[1]).data_start
            total += max(0, s.start + s.sent - max(s.start, data_start))
    return total


def blocks_digest(reader, stop: int) -> str:
    """sha256 over the bytes of blocks [0, stop) as ``reader`` returns them."""
    import hashlib

    digest = hashlib.sha256()
    for _, block in reader.read_blocks(0, stop):
        for t in (block.signs, block.u, block.v):
            digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
