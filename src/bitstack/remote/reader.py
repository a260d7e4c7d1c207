"""``RemoteReader``: an :class:`~bitstack.artifact.reader.ArtifactReader` whose files arrive over HTTP.

It opens the cache entry of the URL's manifest (:mod:`bitstack.remote.cache`) as a local
artifact, and fetches into it what each read needs before the local reader reads it:

* opening fetches the manifest (always, unless offline: it names the cache entry) and the header
  of the first shard (a Range request, so that a server without Range support is refused before
  anything large is downloaded);
* :meth:`read_base` and :meth:`load_tokenizer` fetch those files whole;
* :meth:`read_blocks` fetches only the missing blocks of the range (:mod:`bitstack.remote.fetch`),
  then reads them from the cache, checksummed again; a block that fails that check (damaged on
  disk) is dropped from the index and fetched once more.

So a load at a budget fetches exactly the manifest, the base, the tokenizer, the shard headers
it touches and the blocks of its prefix; a grow fetches only the blocks it adds; a shrink reads
nothing.
"""

from __future__ import annotations

import threading

import torch
import xxhash

from bitstack.artifact.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, BlockEntry
from bitstack.artifact.reader import ArtifactReader
from bitstack.artifact.safetensors_io import read_into
from bitstack.codecs.base import Block
from bitstack.errors import ArtifactError, RemoteError
from bitstack.remote import intervals
from bitstack.remote.cache import Cache, manifest_key
from bitstack.remote.evict import make_room
from bitstack.remote.fetch import BlockFetcher, fetch_file
from bitstack.remote.http import HttpClient
from bitstack.remote.urls import RemoteOptions, options_for, resolve


class RemoteReader(ArtifactReader):
    """A remote artifact (``https://``, ``http://``, ``hf://``) read through the local cache.

    ``url``: the artifact folder's location; ``options``: :class:`RemoteOptions` (cache folder and
    limit, connections, timeouts, offline; default: :func:`~bitstack.remote.urls.options_for`).  Blocks fetched over the network are always verified;
    ``verify`` governs the checks of what is read back from the cache, as for a local artifact.
    """

    def __init__(self, url: str, *, verify: bool = True, options: RemoteOptions | None = None):
        self.options = options_for(url, options).check()
        self.url = url
        self.location = resolve(url, self.options)
        self.cache = Cache(self.options.resolved_cache_dir(), self.options.resolved_cache_limit())
        self.client = HttpClient(self.location.headers, self.location.hint, self.options)
        self.entry = None
        self.fetcher = None
        self._handles = {}  # ArtifactReader's, set again by its __init__ (close() may run before it)
        self._header_lock = threading.Lock()
        try:
            self._open(verify)
        except BaseException:
            self.close()
            raise

    def _open(self, verify: bool) -> None:
        if self.options.offline:
            key = self.cache.recall(self.url)
            entry = self.cache.entry(key) if key else None
            if entry is None or not entry.has_manifest():
                raise RemoteError(f"{self.url} is not in the cache at {self.cache.root}, and remote options say offline")
            entry.open_for_use()
        else:
            url = self.location.file_url(MANIFEST_NAME)
            raw = self.client.get_bytes(url, limit=MAX_MANIFEST_BYTES, what=f"the manifest of {self.url}")
            entry = self.cache.entry(manifest_key(raw))
            entry.open_for_use()
            fresh = not entry.has_manifest()
            entry.write_manifest(raw)
        self.entry = entry
        try:
            super().__init__(entry.path, verify=verify)  # parses and validates the manifest
        except ArtifactError as err:
            if not self.options.offline and fresh:  # a bad manifest does not stay in the cache
                (entry.path / MANIFEST_NAME).unlink(missing_ok=True)
            raise ArtifactError(f"{self.url} does not hold a usable bitstack manifest: {err}") from err
        if not self.options.offline:
            self.cache.remember(self.url, entry.key)
        self.fetcher = BlockFetcher(entry, self.client, self.location, self.manifest, self.options.connections,
                                    self.options.request_bytes, self._check_header)
        if self.manifest.stack and not self.options.offline:
            self._ensure_headers({self.manifest.stack[0].shard})

    def close(self) -> None:
        super().close()
        if self.fetcher is not None:
            self.fetcher.close()
        self.client.close()
        if self.entry is not None:
            self.entry.close()

    @property
    def bytes_fetched(self) -> int:
        """Body bytes received over the network by this reader so far."""
        return self.client.bytes_received

    def disk_bytes(self) -> int:
        """Bytes this artifact occupies in the cache (allocated on disk: only what was fetched)."""
        return self.entry.disk_bytes()

    def _check_header(self, shard: int, header) -> None:
        self._check_shard_header(shard, header, self.path / self.manifest.shards[shard].file)

    def _offline_missing(self, what: str) -> RemoteError:
        return RemoteError(f"{what} of {self.url} is not in the cache at {self.cache.root}, and remote options say offline")

    # ---- whole files -------------------------------------------------------------------------
    def read_base(self, dtype: torch.dtype | None = None, **kwargs) -> dict[str, torch.Tensor]:
        name = self.manifest.base["file"]
        if not (self.path / name).is_file():
            if self.options.offline:
                raise self._offline_missing("the base weights")
            make_room(self.cache, self.manifest.base_bytes, self.entry)
            fetch_file(self.entry, self.client, self.location, name, self.manifest.base["sha256"], f"the base weights ({name})")
        return super().read_base(dtype, **kwargs)

    def load_tokenizer(self):
        section = self.manifest.tokenizer
        if section is not None:
            for name, digest in section["files"].items():
                path = f"{section['dir']}/{name}"
                if not (self.path / path).is_file():
                    if self.options.offline:
                        raise self._offline_missing(f"tokenizer file {name}")
                    fetch_file(self.entry, self.client, self.location, path, digest, f"tokenizer file {name}")
        return super().load_tokenizer()

    # ---- blocks ----------------------------------------------------------------------------------
    def cached_prefix(self, start: int = 0) -> int:
        """The largest n such that stack positions ``[start, n)`` are all in the cache."""
        return intervals.prefix_end(self.entry.read_index()[0], start)

    def prefetch(self, start: int, stop: int, on_record=None, cancel: threading.Event | None = None) -> None:
        """Make stack positions ``[start, stop)`` valid in the cache (fetching only what is missing).

        ``on_record()`` is called on a fetch thread whenever verified blocks enter the index;
        ``cancel`` stops starting new requests.
        """
        if not 0 <= start <= stop <= len(self.manifest.stack):
            raise ValueError(f"block range [{start}, {stop}) is outside the stack of {len(self.manifest.stack)}")
        blocks, headers = self.entry.read_index()
        todo = intervals.missing(blocks, start, stop)
        if not todo:
            return
        if self.options.offline:
            a, b = todo[0]
            raise self._offline_missing(f"stack blocks {a}..{b - 1}")
        stack = self.manifest.stack
        self._ensure_headers({stack[p].shard for a, b in todo for p in range(a, b)}, headers)
        make_room(self.cache, sum(stack[p].bytes for a, b in todo for p in range(a, b)), self.entry)
        self.fetcher.fetch(start, stop, on_record, cancel)

    def _ensure_headers(self, shards: set[int], in_index: set[int] | None = None) -> None:
        if in_index is None:
            in_index = self.entry.read_index()[1]
        with self._header_lock:
            for shard in sorted(shards):
                if shard not in self.fetcher.data_start:
                    self.fetcher.ensure_header(shard, shard in in_index)

    def read_blocks(self, start: int, stop: int, device: torch.device | str | None = None) -> list[tuple[BlockEntry, Block]]:
        self.prefetch(start, stop)
        try:
            return super().read_blocks(start, stop, device)
        except ArtifactError:
            if not self._scrub(start, stop):
                raise
        self.prefetch(start, stop)
        return super().read_blocks(start, stop, device)

    def read_block(self, position: int, device: torch.device | str | None = None) -> Block:
        self.prefetch(position, position + 1)
        return super().read_block(position, device)

    def _scrub(self, start: int, stop: int) -> bool:
        """Drop from the index the blocks of ``[start, stop)`` whose cached bytes fail their checksum."""
        bad = []
        for position in range(start, stop):
            entry = self.manifest.stack[position]
            try:
                handle, header = self._shard(entry.shard)
                data = read_into(handle, header.data_start + entry.offset, entry.bytes, what="cache")
                ok = xxhash.xxh3_128(data.numpy()).hexdigest() == entry.xxh3_128
            except ArtifactError:
                ok = False
            if not ok:
                bad.append((position, position + 1))
        if bad:
            self.entry.forget(intervals.normalize(bad))
        return bool(bad)

