"""The cache's size limit and what gives way when it is reached.

Before a fetch of ``need`` bytes, if the cache's bytes on disk (allocated blocks, so the holes of
sparse shard files are free) plus ``need`` exceed the limit, artifacts give way in order of last
use, oldest first, skipping every artifact that some process has open (a shared flock on its
``.remote/use``; the artifact being fetched is always open).  Each gives way in two steps:

1. its blocks beyond a prefix, from the end of the stack down to the floor, as many as the
   deficit needs: the index forgets them first, then the shard files are cut back (truncated and
   re-extended, leaving holes).  What stays is still a usable prefix of the stack;
2. if that is not enough, the whole artifact (its manifest, base, tokenizer, shards).

If every other artifact has given way and the fetch still does not fit, it is refused with a
:class:`RemoteError` naming the limit.  Concurrent fetches check the limit each for itself, so the
cache can exceed it by what they fetch at the same time.
"""

from __future__ import annotations

import fcntl
import os

from bitstack.artifact.manifest import MANIFEST_NAME, Manifest
from bitstack.artifact.safetensors_io import read_header
from bitstack.errors import ArtifactError, RemoteError
from bitstack.memory import format_bytes
from bitstack.remote import intervals
from bitstack.remote.cache import Cache, Entry, lock_file


def make_room(cache: Cache, need: int, keep: Entry) -> None:
    """Evict until ``need`` more bytes fit within ``cache.limit``; :class:`RemoteError` if they cannot."""
    if need <= 0:
        return
    if need > cache.limit:
        raise RemoteError(f"this needs {format_bytes(need)} of cache, more than the cache limit of "
                          f"{format_bytes(cache.limit)}: raise the limit (cache_limit / --cache-limit) or lower the budget")
    with cache.lock():
        usage = cache.disk_bytes()
        if usage + need <= cache.limit:
            return
        for entry in sorted((e for e in cache.entries() if e.key != keep.key), key=Entry.last_used):
            handle = lock_file(entry.meta / "use")
            try:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # open in some process: never evicted
                while usage + need > cache.limit and shrink_tail(entry, usage + need - cache.limit):
                    usage = cache.disk_bytes()  # cut blocks free whole pages only: measure again
                if usage + need <= cache.limit:
                    return
                entry.remove_data()
                usage = cache.disk_bytes()
                if usage + need <= cache.limit:
                    return
            finally:
                handle.close()
    raise RemoteError(f"the cache at {cache.root} is limited to {format_bytes(cache.limit)} and holds "
                      f"{format_bytes(usage)} of artifacts in use: it cannot take {format_bytes(need)} more; "
                      "raise the limit (cache_limit / --cache-limit) or lower the budget")


def shrink_tail(entry: Entry, deficit: int) -> int:
    """Drop the cached blocks of ``entry`` from the end of the stack down to (not below) its floor,
    as few as free ``deficit`` bytes (all beyond the floor if they do not).  Returns the block bytes
    dropped.  The caller holds the entry's ``use`` lock exclusively."""
    try:
        manifest = Manifest.from_json((entry.path / MANIFEST_NAME).read_bytes(), what=str(entry.path / MANIFEST_NAME))
    except (OSError, ArtifactError):
        return 0  # nothing readable: the caller removes the whole entry if it needs the room
    blocks, headers = entry.read_index()
    stack = manifest.stack
    cut, freed = len(stack), 0
    for a, b in reversed(blocks):
        for position in range(b - 1, max(a, manifest.floor_blocks) - 1, -1):
            if freed >= deficit:
                break
            cut, freed = position, freed + stack[position].bytes
    if cut == len(stack):
        return 0
    first = {}  # shard -> smallest offset of a block at or after the cut
    for position in range(cut, len(stack)):
        e = stack[position]
        first[e.shard] = min(first.get(e.shard, e.offset), e.offset)
    dropped = [(cut, len(stack))] + [(p, p + 1) for p, e in enumerate(stack[:cut])
                                     if e.shard in first and e.offset >= first[e.shard]]
    entry.forget(intervals.normalize(dropped))  # first: nothing beyond the cut is valid any more
    for shard, offset in first.items():
        path = entry.path / manifest.shards[shard].file
        if shard not in headers or not path.is_file():
            continue
        try:
            header = read_header(path)
        except ArtifactError:
            continue
        full = os.path.getsize(path)
        os.truncate(path, header.data_start + offset)  # frees the blocks' disk space ...
        os.truncate(path, full)  # ... and keeps the file's length (a hole)
    return freed
