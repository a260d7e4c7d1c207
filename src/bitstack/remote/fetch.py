"""Fetching into the cache: stack ranges over parallel Range requests, and whole files.

The stack is cut, once per manifest, into **units**: runs of back-to-back blocks of one shard of
at most ``request_bytes`` (a larger block is a unit alone), from the start of the stack.  A
fetch of stack positions ``[start, stop)`` takes the units that hold missing blocks, in stack
order, and ``connections`` threads take them one at a time.  Each unit is one Range request for
its missing blocks (its run within ``[start, stop)``; a unit with a hole is one request per
piece), streamed straight into the sparse shard file and hashed block by block on the way:

* a block whose xxh3-128 matches the manifest becomes valid when the index next records it
  (every 8 MB of a request, and at its end, after an ``fdatasync``);
* a block that does not match is fetched once more (the response is dropped and re-requested
  from that block); a second mismatch raises :class:`ArtifactError` naming the block;
* a dropped connection re-requests from the first block not yet verified
  (:meth:`HttpClient.stream`).

Processes fetching the same artifact share the work: a unit is fetched under a lock on it
(``.remote/fetch``, one byte per unit); another process skips a locked unit, comes back to it,
and finds it in the index.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import xxhash

from bitstack.artifact.manifest import Manifest
from bitstack.artifact.safetensors_io import MAX_HEADER_BYTES, SafetensorsHeader, parse_header, sha256_file
from bitstack.errors import ArtifactError
from bitstack.remote import intervals
from bitstack.remote.cache import Entry
from bitstack.remote.http import HttpClient, Restart
from bitstack.remote.urls import Location

FLUSH_BYTES = 8 * 1000 * 1000  # verified bytes of one request between index updates
_POLL_SECONDS = 0.02  # wait before looking again at a unit that another process is fetching


@dataclass(frozen=True)
class Unit:
    number: int
    start: int  # stack positions [start, stop)
    stop: int


def plan_units(manifest: Manifest, request_bytes: int) -> list[Unit]:
    """Cut the whole stack into units (see the module docstring); deterministic for a manifest."""
    stack, units, position = manifest.stack, [], 0
    while position < len(stack):
        end, size = position + 1, stack[position].bytes
        while (end < len(stack) and stack[end].shard == stack[position].shard
               and stack[end].offset == stack[end - 1].offset + stack[end - 1].bytes
               and size + stack[end].bytes <= request_bytes):
            size += stack[end].bytes
            end += 1
        units.append(Unit(len(units), position, end))
        position = end
    return units


class _BlockSink:
    """Writes a response for stack positions ``[start, stop)`` (back to back in one shard) into
    the shard file, verifying each block as it completes; records verified blocks in the index."""

    def __init__(self, fetcher: "BlockFetcher", start: int, stop: int, fd: int, on_record: Callable[[], None] | None):
        self.fetcher, self.stop, self.fd, self.on_record = fetcher, stop, fd, on_record
        self.stack = fetcher.manifest.stack
        self.data_start = fetcher.data_start[self.stack[start].shard]
        self.retried: set[int] = set()
        self.verified_from = start  # first position not yet recorded in the index
        self._at(start)

    def offset_of(self, position: int) -> int:
        """File offset of block ``position`` (of ``stop``: the end of the run)."""
        if position == self.stop:
            last = self.stack[position - 1]
            return self.data_start + last.offset + last.bytes
        return self.data_start + self.stack[position].offset

    def _at(self, position: int) -> None:
        self.position, self.filled, self.hasher = position, 0, xxhash.xxh3_128()

    def resume_at(self) -> int:
        return self.offset_of(self.position)

    def write(self, offset: int, data: memoryview) -> None:
        if offset != self.offset_of(self.position) + self.filled:  # a resumed request starts at a block
            self._at(next(p for p in range(self.verified_from, self.stop + 1) if self.offset_of(p) == offset))
        while len(data):
            entry = self.stack[self.position]
            take = min(len(data), entry.bytes - self.filled)
            piece = data[:take]
            written = 0
            while written < take:
                written += os.pwrite(self.fd, piece[written:], offset + written)
            self.hasher.update(piece)
            self.filled += take
            offset += take
            data = data[take:]
            if self.filled == entry.bytes:
                self._finish_block(entry)

    def _finish_block(self, entry) -> None:
        position = self.position
        if self.hasher.hexdigest() != entry.xxh3_128:
            if position in self.retried:
                raise ArtifactError(f"block {entry.index} of {entry.tensor} (stack position {position}) fetched from "
                                    f"{self.fetcher.url_of(entry.shard)} does not match its checksum, twice: the remote "
                                    "artifact is corrupted or was changed")
            self.retried.add(position)
            self._at(position)
            raise Restart(self.offset_of(position))
        self._at(position + 1)
        if self.offset_of(self.position) - self.offset_of(self.verified_from) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Record the verified blocks not yet in the index (after syncing their bytes)."""
        if self.position > self.verified_from:
            os.fdatasync(self.fd)
            self.fetcher.entry.add_verified([(self.verified_from, self.position)])
            self.verified_from = self.position
            if self.on_record is not None:
                self.on_record()


class BlockFetcher:
    """Fetches stack ranges of one artifact into its cache entry.

    ``data_start``: {shard: file offset of its data section}, for shards whose header is in place;
    ``ensure_header(shard)`` puts a shard's header in place and fills ``data_start``.
    """

    def __init__(self, entry: Entry, client: HttpClient, location: Location, manifest: Manifest,
                 connections: int, request_bytes: int, check_header: Callable[[int, SafetensorsHeader], None]):
        self.entry, self.client, self.location, self.manifest = entry, client, location, manifest
        self.connections = connections
        self.units = plan_units(manifest, request_bytes)
        self._unit_of = [0] * len(manifest.stack)
        for unit in self.units:
            for position in range(unit.start, unit.stop):
                self._unit_of[position] = unit.number
        self.check_header = check_header
        self.data_start: dict[int, int] = {}
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self._claimed: set[int] = set()  # units a thread of this process is fetching

    def url_of(self, shard: int) -> str:
        return self.location.file_url(self.manifest.shards[shard].file)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    # ---- shard files ------------------------------------------------------------------------
    def _fd(self, shard: int) -> int:
        with self._lock:
            if shard not in self._fds:
                self._fds[shard] = os.open(self.entry.path / self.manifest.shards[shard].file, os.O_RDWR | os.O_CREAT, 0o644)
            return self._fds[shard]

    def ensure_header(self, shard: int, in_index: bool) -> None:
        """Fetch shard ``shard``'s safetensors header (two small Range requests) unless ``in_index``;
        check it against the manifest and create the sparse shard file of its full length."""
        path = self.entry.path / self.manifest.shards[shard].file
        if in_index and path.is_file():
            try:
                with open(path, "rb") as handle:
                    raw = handle.read(8)
                    raw += handle.read(min(struct.unpack("<Q", raw)[0], MAX_HEADER_BYTES) if len(raw) == 8 else 0)
                self.data_start[shard] = self._checked(shard, raw, path).data_start
                return
            except ArtifactError:
                pass  # damaged in the cache: fetched again below
        url, what = self.url_of(shard), f"the header of {self.manifest.shards[shard].file}"
        raw = self._get(url, 0, 8, what)
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise ArtifactError(f"{url} has a corrupt safetensors header length ({length})")
        raw += self._get(url, 8, 8 + length, what)
        header = self._checked(shard, raw, path)
        fd = self._fd(shard)
        os.pwrite(fd, raw, 0)
        size = len(raw) + self.manifest.shards[shard].bytes
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        os.fsync(fd)
        self.entry.add_verified([], {shard})
        self.data_start[shard] = header.data_start

    def _checked(self, shard: int, raw: bytes, path) -> SafetensorsHeader:
        """The parsed header ``raw`` of shard ``shard``, checked against the manifest."""
        header = parse_header(raw, len(raw) + self.manifest.shards[shard].bytes, what=str(path))
        self.check_header(shard, header)
        return header

    def _get(self, url: str, start: int, stop: int, what: str) -> bytes:
        buffer = bytearray(stop - start)

        class Collect:
            def write(self, offset: int, data: memoryview) -> None:
                buffer[offset - start : offset - start + len(data)] = data

            def resume_at(self) -> int:
                return start

        self.client.stream(url, start, stop, Collect(), what=what)
        return bytes(buffer)

    # ---- blocks -------------------------------------------------------------------------------
    def _claim(self, unit: int) -> bool:
        """Take ``unit`` for this thread: no other thread of this process, no other process has it."""
        with self._lock:
            if unit in self._claimed:
                return False
            self._claimed.add(unit)
        if self.entry.try_lock_unit(unit):
            return True
        with self._lock:
            self._claimed.discard(unit)
        return False

    def _release(self, unit: int) -> None:
        self.entry.unlock_unit(unit)
        with self._lock:
            self._claimed.discard(unit)

    def fetch(self, start: int, stop: int, on_record: Callable[[], None] | None = None,
              cancel: threading.Event | None = None) -> None:
        """Make stack positions ``[start, stop)`` valid in the cache, fetching what is missing.

        Shard headers must be in place (:meth:`ensure_header`).  ``on_record`` is called (on a
        worker thread) each time verified blocks are added to the index.  ``cancel``: when set,
        no further unit is started (the call returns when the units in flight end).
        """
        blocks, _ = self.entry.read_index()
        todo = intervals.missing(blocks, start, stop)
        if not todo:
            return
        numbers = sorted({self._unit_of[p] for a, b in todo for p in range(a, b)})
        queue = deque(self.units[n] for n in numbers)
        lock = threading.Lock()
        failed: list[BaseException] = []

        def work() -> None:
            while not failed and not (cancel is not None and cancel.is_set()):
                with lock:
                    if not queue:
                        return
                    unit = queue.popleft()
                lo, hi = max(unit.start, start), min(unit.stop, stop)
                if not self._claim(unit.number):  # another thread or process fetches it
                    if intervals.missing(self.entry.read_index()[0], lo, hi):
                        with lock:
                            queue.append(unit)
                        time.sleep(_POLL_SECONDS)
                    continue
                try:
                    for a, b in intervals.missing(self.entry.read_index()[0], lo, hi):
                        self._fetch_run(a, b, on_record)
                except BaseException as err:
                    failed.append(err)
                    raise
                finally:
                    self._release(unit.number)

        workers = min(self.connections, len(queue))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bitstack-fetch") as pool:
            for future in [pool.submit(work) for _ in range(workers)]:
                future.exception()
        if failed:
            raise failed[0]
        self.entry.touch()

    def _fetch_run(self, start: int, stop: int, on_record: Callable[[], None] | None) -> None:
        stack = self.manifest.stack
        shard = stack[start].shard
        sink = _BlockSink(self, start, stop, self._fd(shard), on_record)
        first = stack[start]
        what = f"blocks {start}..{stop - 1} of the stack (from block {first.index} of {first.tensor})"
        try:
            self.client.stream(self.url_of(shard), sink.resume_at(), sink.offset_of(stop), sink, what=what)
        finally:
            sink.flush()  # keep what was verified, even when the request failed


def fetch_file(entry: Entry, client: HttpClient, location: Location, name: str, sha256: str, what: str) -> None:
    """Put the artifact file ``name`` in place, downloaded whole (resuming a partial download) and
    checked against ``sha256``; one more download if it does not match, then :class:`ArtifactError`."""
    target = entry.path / name
    if target.is_file():
        return
    url = location.file_url(name)
    with entry.files_lock():
        if target.is_file():  # another process finished it meanwhile
            return
        part = entry.part_path(name)
        part.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            client.download(url, part, what=what)
            if sha256_file(part) == sha256:
                entry.install(part, name)
                return
            part.unlink()
    raise ArtifactError(f"{what} fetched from {url} does not match the manifest's sha256, twice: "
                        "the remote artifact is corrupted or was changed")
