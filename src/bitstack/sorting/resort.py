"""Rewrite an artifact's universal order in place, without recompressing.

The blocks are read from the existing shards (each checked against its sha256), written into
new shards in the new order, and a new manifest is written; base weights and the tokenizer are
copied unchanged.  Everything is built in ``<path>.resort.partial/`` and swapped into place only
when complete (:func:`bitstack.artifact.writer.finish`), so an error at any point before the
swap leaves the original artifact untouched and removes the partial directory.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Sequence

from bitstack.artifact.atomic import atomic_write_bytes
from bitstack.artifact.manifest import MANIFEST_NAME, Manifest
from bitstack.artifact.opening import open_artifact
from bitstack.artifact.writer import finish, write_shards
from bitstack.sorting.strategies import check_head_first, check_order
from bitstack.errors import ArtifactError, InputError


def resort_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".resort.partial")


def stack_order(manifest: Manifest) -> list[tuple[int, int]]:
    """The artifact's current order as (weight index, block index) pairs."""
    index = manifest.weight_index
    return [(index[b.tensor], b.index) for b in manifest.stack]


def resort_artifact(
    path: str | Path,
    order: Sequence[tuple[int, int]],
    *,
    sort_info: dict | None = None,
    shard_mb: float | None = None,
    progress: bool = True,
    dest: str | Path | None = None,
) -> Path:
    """Rewrite ``path`` so that its stack follows ``order``.

    Args:
        path: an artifact directory.
        order: (weight index, block index) pairs, weight indices into ``manifest.weights``;
            every block exactly once, each weight's blocks in order, the head (block 0 of every
            weight) first.
        sort_info: recorded in the manifest as ``compression["sort_info"]`` (e.g. strategy,
            validation settings, forward passes; not its "seconds" or "cache" path, so that the same
            command writes the same manifest); ``compression["sort"]`` is set from its ``strategy``.
        shard_mb: target shard size (default: the artifact's ``compression["shard_mb"]``, else 64).
        dest: write the re-sorted artifact into this new folder instead and leave ``path`` as it is.
    Returns:
        ``path``, or ``dest`` when given.
    Raises:
        InputError for an invalid order; ArtifactError for a corrupted artifact.
    """
    path = Path(path)
    work = resort_dir(path) if dest is None else Path(dest)
    with open_artifact(path, verify=True) as reader:
        manifest = reader.manifest
        num_blocks = [w.num_blocks for w in manifest.weights]
        order = [(int(w), int(i)) for w, i in order]
        try:
            check_order(order, num_blocks)
            check_head_first(order, num_blocks)
        except ValueError as err:
            raise InputError(f"cannot re-sort {path}: {err}") from err
        if shard_mb is None:
            shard_mb = float(manifest.compression.get("shard_mb", 64.0))
        if not shard_mb > 0:
            raise InputError(f"shard size must be positive, got {shard_mb} MB")
        position = {(b.tensor, b.index): p for p, b in enumerate(manifest.stack)}
        names = [w.name for w in manifest.weights]
        if work.exists():
            shutil.rmtree(work)  # a leftover of an interrupted re-sort; never a complete artifact
        try:
            work.mkdir()
            shards, stack = write_shards(
                work, list(manifest.weights), order,
                lambda w, i: reader.read_block(position[(names[w], i)]),
                shard_bytes=int(shard_mb * 1000 * 1000), progress=progress,
            )
            shutil.copy2(path / manifest.base["file"], work / manifest.base["file"])
            if manifest.tokenizer is not None:
                shutil.copytree(path / manifest.tokenizer["dir"], work / manifest.tokenizer["dir"])
            prefix = [manifest.base_bytes]
            for block in stack:
                prefix.append(prefix[-1] + block.bytes)
            compression = dict(manifest.compression)
            if sort_info is not None:
                # no timings or machine paths: the same command must write the same manifest
                compression["sort_info"] = {k: v for k, v in sort_info.items() if k not in ("seconds", "cache")}
                if "strategy" in sort_info:
                    compression["sort"] = sort_info["strategy"]
            new = dataclasses.replace(manifest, shards=tuple(shards), stack=tuple(stack),
                                      prefix_bytes=tuple(prefix), compression=compression)
            try:
                new.validate()
            except ArtifactError as err:  # a bug, not a user error: keep the original
                raise ArtifactError(f"re-sorted manifest of {path} is inconsistent: {err}") from err
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    if dest is not None:
        try:
            atomic_write_bytes(work / MANIFEST_NAME, new.to_json().encode("utf-8"))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return work
    try:
        return finish(path, work, new, overwrite=True)
    except BaseException:
        old = path.with_name(path.name + ".old")  # finish() moves the original there for the swap
        if not path.exists() and old.is_dir():
            old.rename(path)
        shutil.rmtree(work, ignore_errors=True)
        raise
