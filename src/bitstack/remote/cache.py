"""The local cache of remote artifacts: one folder per artifact, readable as an artifact.

Layout under the cache root (default ``~/.cache/bitstack``, see :func:`~bitstack.remote.urls.default_cache_dir`)::

    lock                         flock: eviction decisions (bitstack.remote.evict)
    urls/<sha256(url)[:32]>.json {"url", "key"}: the artifact a URL served last (for offline use)
    artifacts/<key>/             key = sha256 of the manifest's bytes, first 32 hex digits
        manifest.json            written atomically once fetched
        <base file>, <tokenizer dir>/…   fetched whole, checked against the manifest's sha256,
                                         then renamed into place (absent until complete)
        <shard files>            sparse files of the shard's full length: the safetensors header
                                 at 0, the blocks at their offsets, holes elsewhere
        .remote/index.json       what is valid: {"version": 1, "headers": [shard numbers],
                                 "blocks": [[a, b], ...]} (verified stack positions, half-open)
        .remote/index.lock       flock: read-modify-write of the index
        .remote/use              flock shared by every process that has the artifact open
        .remote/fetch            lockf byte k: someone is fetching unit k (bitstack.remote.fetch)
        .remote/files.lock       flock: one whole-file download at a time
        .remote/parts/           partial whole-file downloads (resumed at their size)
        .remote/used             its mtime is the artifact's last use (eviction order)

Nothing is valid unless the index says so, and the index is replaced atomically (temp file, then
rename) after the bytes it adds were written and synced.  Bytes written but not yet indexed (a
killed download) are simply fetched again.  Every read from the cache is checksummed again by the
reader, so a block damaged on disk is dropped from the index and fetched again.

Locks are POSIX (``fcntl``); the cache needs a POSIX system.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bitstack.artifact.atomic import atomic_write_bytes, fsync_dir
from bitstack.artifact.manifest import MANIFEST_NAME
from bitstack.errors import ArtifactError, InputError
from bitstack.remote import intervals
from bitstack.remote.intervals import Intervals

INDEX_VERSION = 1


def lock_file(path: Path, mode: str = "a+b"):
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, mode)


@contextmanager
def flocked(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an flock on ``path`` (created if needed) for the block."""
    with lock_file(path) as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class Entry:
    """One cached artifact (``artifacts/<key>/``).  Thread-safe."""

    def __init__(self, cache: "Cache", key: str):
        self.cache = cache
        self.key = key
        self.path = cache.root / "artifacts" / key
        self.meta = self.path / ".remote"
        self._mutex = threading.Lock()
        self._use = None  # the open file holding our shared "in use" flock
        self._fetch = None  # the open file of the per-unit fetch locks

    # ---- use and recency ----------------------------------------------------------------
    def open_for_use(self) -> None:
        """Mark the entry in use by this process (a shared flock kept until :meth:`close`)."""
        self.meta.mkdir(parents=True, exist_ok=True)
        if self._use is None:
            handle = lock_file(self.meta / "use")
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)  # waits while an eviction empties the entry
            self._use = handle
        self.touch()

    def close(self) -> None:
        for attr in ("_use", "_fetch"):
            handle = getattr(self, attr)
            if handle is not None:
                handle.close()  # releases its locks
                setattr(self, attr, None)

    def touch(self) -> None:
        used = self.meta / "used"
        used.touch()
        os.utime(used)

    def last_used(self) -> float:
        try:
            return (self.meta / "used").stat().st_mtime
        except FileNotFoundError:
            return 0.0

    # ---- whole files --------------------------------------------------------------------
    def has_manifest(self) -> bool:
        return (self.path / MANIFEST_NAME).is_file()

    def write_manifest(self, raw: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.has_manifest():
            atomic_write_bytes(self.path / MANIFEST_NAME, raw)

    def part_path(self, name: str) -> Path:
        """Where a partial download of the artifact file ``name`` lives."""
        return self.meta / "parts" / name.replace("/", "%2F")

    def files_lock(self):
        return flocked(self.meta / "files.lock")

    def install(self, part: Path, name: str) -> None:
        """Move a verified download into place (atomically) and make it durable."""
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(part, target)
        fsync_dir(target.parent)

    # ---- the index ------------------------------------------------------------------------
    def read_index(self) -> tuple[Intervals, set[int]]:
        """(verified stack positions, shard numbers whose header is in place); empty if none."""
        try:
            data = json.loads((self.meta / "index.json").read_bytes())
            if data.get("version") != INDEX_VERSION:
                return [], set()
            return intervals.normalize(tuple(span) for span in data["blocks"]), {int(n) for n in data["headers"]}
        except FileNotFoundError:
            return [], set()
        except (ValueError, KeyError, TypeError):
            return [], set()  # unreadable: treat as empty, everything is fetched again

    @contextmanager
    def updating_index(self) -> Iterator[dict]:
        """Read-modify-write of the index, exclusive across threads and processes.

        Yields ``{"blocks": Intervals, "headers": set}``; what the block leaves there is written
        atomically when it ends without an exception.
        """
        with self._mutex, flocked(self.meta / "index.lock"):
            blocks, headers = self.read_index()
            state = {"blocks": blocks, "headers": headers}
            yield state
            data = {"version": INDEX_VERSION, "headers": sorted(state["headers"]),
                    "blocks": [list(span) for span in intervals.normalize(state["blocks"])]}
            tmp = self.meta / f".index.json.tmp-{os.getpid()}-{threading.get_ident()}"
            tmp.write_bytes(json.dumps(data, separators=(",", ":")).encode())
            os.replace(tmp, self.meta / "index.json")

    def add_verified(self, spans: Intervals, headers: set[int] = frozenset()) -> None:
        with self.updating_index() as state:
            state["blocks"] = intervals.union(state["blocks"], spans)
            state["headers"] |= set(headers)

    def forget(self, spans: Intervals) -> None:
        with self.updating_index() as state:
            state["blocks"] = intervals.subtract(state["blocks"], spans)

    # ---- per-unit fetch locks ---------------------------------------------------------------
    def try_lock_unit(self, unit: int) -> bool:
        """Take the fetch lock of ``unit`` if no other process holds it (POSIX record lock, so a
        process never excludes itself: the caller hands each unit to one thread)."""
        with self._mutex:
            if self._fetch is None:
                self._fetch = lock_file(self.meta / "fetch")
            try:
                fcntl.lockf(self._fetch.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, unit)
                return True
            except OSError:
                return False

    def unlock_unit(self, unit: int) -> None:
        with self._mutex:
            if self._fetch is not None:
                fcntl.lockf(self._fetch.fileno(), fcntl.LOCK_UN, 1, unit)

    # ---- size and eviction --------------------------------------------------------------------
    def disk_bytes(self) -> int:
        return _disk_bytes(self.path)

    def remove_data(self) -> None:
        """Delete everything but the lock files (so that a process waiting on ``use`` sees an empty entry)."""
        with self.updating_index() as state:
            state["blocks"], state["headers"] = [], set()
        for child in self.path.iterdir():
            if child == self.meta:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        shutil.rmtree(self.meta / "parts", ignore_errors=True)
        (self.meta / "index.json").unlink(missing_ok=True)


class Cache:
    """The cache root.  ``limit``: bytes on disk it may hold (:mod:`bitstack.remote.evict`)."""

    def __init__(self, root: str | Path, limit: int):
        self.root = Path(root)
        self.limit = limit
        try:
            (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
            (self.root / "urls").mkdir(exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the cache folder {self.root}: {err} (choose another with cache_dir / --cache-dir)") from err

    def entry(self, key: str) -> Entry:
        if len(key) != 32 or any(c not in "0123456789abcdef" for c in key):
            raise ArtifactError(f"malformed cache key {key!r}")
        return Entry(self, key)

    def entries(self) -> list[Entry]:
        folder = self.root / "artifacts"
        return [Entry(self, p.name) for p in sorted(folder.iterdir()) if p.is_dir() and len(p.name) == 32]

    def lock(self):
        return flocked(self.root / "lock")

    def disk_bytes(self) -> int:
        return _disk_bytes(self.root / "artifacts")

    # ---- which artifact a URL served ------------------------------------------------------------
    def _url_file(self, url: str) -> Path:
        return self.root / "urls" / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".json")

    def remember(self, url: str, key: str) -> None:
        atomic_write_bytes(self._url_file(url), json.dumps({"url": url, "key": key}).encode())

    def recall(self, url: str) -> str | None:
        try:
            data = json.loads(self._url_file(url).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return data.get("key") if isinstance(data, dict) and data.get("url") == url else None


def manifest_key(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:32]


def _disk_bytes(folder: Path) -> int:
    """Bytes that the files under ``folder`` occupy on disk (allocated blocks: holes are free)."""
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total
