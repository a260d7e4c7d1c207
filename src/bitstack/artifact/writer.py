"""Writing an artifact directory: base weights, block shards in stack order, manifest, tokenizer.

Everything is written under ``<path>.partial/`` and the directory is renamed to ``<path>`` only
when complete, so an interrupted write never leaves something that looks like an artifact.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import xxhash
from tqdm.auto import tqdm

from bitstack.artifact.atomic import atomic_open, atomic_write_bytes
from bitstack.artifact.layout import block_tensor_names, part_spans
from bitstack.artifact.manifest import MANIFEST_NAME, BlockEntry, Manifest, ShardEntry, WeightEntry
from bitstack.artifact.safetensors_io import DTYPE_NAMES, encode_header, sha256_file, tensor_bytes, write_safetensors
from bitstack.codecs import get_codec
from bitstack.codecs.base import Block
from bitstack.errors import InputError

BASE_FILE = "base.safetensors"
TOKENIZER_DIR = "tokenizer"


def partial_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


@dataclass(frozen=True)
class BaseTensorSpec:
    name: str
    tensor: torch.Tensor
    kind: str  # "param" (cast to the load dtype) or "buffer" (kept as stored)


def write_base(work: Path, tensors: list[BaseTensorSpec], aliases: dict[str, str]) -> tuple[dict, int]:
    """Write ``base.safetensors``; return the manifest's ``base`` section and the base bytes."""
    sha = write_safetensors(work / BASE_FILE, [(t.name, t.tensor) for t in tensors], {"format": "pt"})
    section = {
        "file": BASE_FILE,
        "sha256": sha,
        "tensors": [
            {"name": t.name, "kind": t.kind, "dtype": DTYPE_NAMES[t.tensor.dtype], "shape": list(t.tensor.shape)}
            for t in tensors
        ],
        "aliases": dict(aliases),
    }
    return section, sum(t.tensor.numel() * t.tensor.element_size() for t in tensors)


def write_shards(
    work: Path,
    weights: list[WeightEntry],
    order: list[tuple[int, int]],
    get_block: Callable[[int, int], Block],
    *,
    shard_bytes: int,
    progress: bool = True,
) -> tuple[list[ShardEntry], list[BlockEntry]]:
    """Write the blocks in ``order`` into shards of about ``shard_bytes`` each."""
    groups: list[list[tuple[int, int]]] = [[]]
    size = 0
    for w, i in order:
        nbytes = weights[w].block_bytes
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((w, i))
        size += nbytes
    shards: list[ShardEntry] = []
    stack: list[BlockEntry] = []
    parts = [get_codec(weight.codec).block_parts(weight) for weight in weights]  # on-disk parts of each weight
    bar = tqdm(total=len(order), desc="writing block shards", unit="block", disable=not progress)
    for number, group in enumerate(g for g in groups if g):
        name = f"blocks-{number:05d}.safetensors"
        entries = []
        for w, i in group:
            names = block_tensor_names(weights[w].name, i, parts[w])
            entries += [(tensor, dtype, shape, end - begin)
                        for tensor, (_, begin, end, dtype, shape) in zip(names, part_spans(parts[w]))]
        digest = hashlib.sha256()
        offset = 0
        with atomic_open(work / name) as handle:
            head = encode_header(entries, {"format": "pt", "bitstack": "blocks"})
            handle.write(head)
            digest.update(head)
            for w, i in group:
                block = get_block(w, i)
                if tuple(block.parts) != tuple(part for part, _, _ in parts[w]):
                    raise ValueError(f"block {i} of {weights[w].name} has parts {tuple(block.parts)}, "
                                     f"its codec stores {tuple(part for part, _, _ in parts[w])}")
                block_digest = xxhash.xxh3_128()
                nbytes = 0
                for part in block.tensors:
                    data = tensor_bytes(part)
                    handle.write(data)
                    digest.update(data)
                    block_digest.update(data)
                    nbytes += len(data)
                if nbytes != weights[w].block_bytes:
                    raise ValueError(f"block {i} of {weights[w].name} has {nbytes} bytes, expected {weights[w].block_bytes}")
                stack.append(BlockEntry(weights[w].name, i, number, offset, nbytes, block_digest.hexdigest()))
                offset += nbytes
                bar.update(1)
        shards.append(ShardEntry(name, offset, digest.hexdigest()))
    bar.close()
    return shards, stack


def write_tokenizer(work: Path, tokenizer) -> dict | None:
    """Save the tokenizer under ``tokenizer/``; return the manifest's ``tokenizer`` section."""
    if tokenizer is None:
        return None
    target = work / TOKENIZER_DIR
    if target.exists():
        shutil.rmtree(target)
    tokenizer.save_pretrained(str(target))
    files = {p.relative_to(target).as_posix(): sha256_file(p) for p in sorted(target.rglob("*")) if p.is_file()}
    return {"dir": TOKENIZER_DIR, "files": files}


def finish(path: str | Path, work: Path, manifest: Manifest, *, overwrite: bool) -> Path:
    """Write the manifest last, then move the complete directory into place."""
    manifest.validate()
    atomic_write_bytes(work / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise InputError(f"output {path} already exists: choose another path or pass --overwrite")
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        work.rename(path)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        work.rename(path)
    return path
