"""HTTP GETs of whole files and byte ranges, with retries that resume, on stdlib ``http.client``.

Each thread keeps one persistent connection per host.  Redirects (301-308) are followed, at most
5 deep; headers (the ``hf://`` token) go to the original host only.  A redirect's target is
remembered per URL and forgotten when it answers 403/404/410 (signed CDN URLs expire).

What fails how:

* connection errors, timeouts, dropped bodies, HTTP 408/425/429/5xx: retried after
  ``backoff`` × 2^k seconds, at most ``retries`` times in a row without progress; a ranged GET
  resumes at the offset its sink names (its last verified byte), not at the start;
* HTTP 404, 401/403 and other 4xx: :class:`RemoteError` at once, one line;
* HTTP 200 to a Range request: :class:`RemoteError` (the server lacks Range support);
* HTTP 416: :class:`ArtifactError` (the remote file is shorter than the manifest says).
"""

from __future__ import annotations

import http.client
import io
import re
import threading
import time
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urljoin, urlsplit

from bitstack.errors import ArtifactError, RemoteError
from bitstack.remote.urls import RemoteOptions

CHUNK = 1 << 20  # bytes read from a response body at a time
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


class Transient(Exception):
    """A failure worth retrying (network, timeout, 5xx)."""


class Restart(Exception):
    """Raised by a sink: close this response and re-request from ``offset`` (not a failure)."""

    def __init__(self, offset: int):
        super().__init__(offset)
        self.offset = offset


class Sink(Protocol):
    def write(self, offset: int, data: memoryview) -> None:
        """Take ``data``, the body bytes at absolute file ``offset``; may raise :class:`Restart`."""

    def resume_at(self) -> int:
        """The offset to re-request from after a failure (everything before it is kept)."""


class HttpClient:
    """GETs for one remote artifact.  Thread-safe; each thread uses its own connections."""

    def __init__(self, headers: dict[str, str], hint: str, options: RemoteOptions):
        self.headers = dict(headers)
        self.hint = hint
        self.options = options
        self._local = threading.local()
        self._lock = threading.Lock()
        self._redirects: dict[str, str] = {}
        self._connections: list[http.client.HTTPConnection] = []
        self.bytes_received = 0  # body bytes received, all requests (guarded by _lock)
        self.requests = 0

    # ---- connections ------------------------------------------------------------------
    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        conn = pool.get((scheme, netloc))
        if conn is None:
            kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = kind(netloc, timeout=self.options.timeout)
            pool[(scheme, netloc)] = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = getattr(self._local, "pool", {}).pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    # ---- one attempt --------------------------------------------------------------------
    def _open(self, url: str, start: int | None, end: int | None, what: str) -> tuple[http.client.HTTPResponse, tuple]:
        """Send one GET (``Range: bytes=start-end`` when ``start`` is given), following redirects.

        Returns the response with a 2xx status and the connection key it came on; raises
        :class:`Transient`, :class:`RemoteError` or :class:`ArtifactError`.
        """
        with self._lock:
            target = self._redirects.get(url, url)
        cached = target != url
        for _ in range(6):
            parts = urlsplit(target)
            key = (parts.scheme, parts.netloc)
            headers = {"Accept-Encoding": "identity"}
            if urlsplit(url).netloc == parts.netloc:
                headers.update(self.headers)
            if start is not None:
                headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end))
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            response = self._send(key, path, headers)
            with self._lock:
                self.requests += 1
            status = response.status
            if status in _REDIRECTS and response.getheader("Location"):
                self._finish(response, key)
                target = urljoin(target, response.getheader("Location"))
                continue
            if 200 <= status < 300:
                if target != url:
                    with self._lock:
                        self._redirects[url] = target
                return response, key
            self._finish(response, key)
            if cached and status in (403, 404, 410):  # an expired signed URL: ask the origin again
                with self._lock:
                    self._redirects.pop(url, None)
                return self._open(url, start, end, what)
            if status in _TRANSIENT_STATUS:
                raise Transient(f"HTTP {status} {response.reason}")
            if status == 404:
                raise RemoteError(f"{url} was not found (HTTP 404): check the artifact's URL")
            if status in (401, 403):
                raise RemoteError(f"access to {url} was denied (HTTP {status}){self.hint}")
            if status == 416:
                raise ArtifactError(f"{url} is shorter than the manifest says (HTTP 416 for bytes {start}-{end}): "
                                    "the remote artifact is truncated or changed")
            raise RemoteError(f"{url} answered HTTP {status} {response.reason}")
        raise RemoteError(f"{url} redirects more than 5 times")

    def _send(self, key: tuple, path: str, headers: dict) -> http.client.HTTPResponse:
        """One request on this thread's connection to ``key``.  A kept-alive connection that the
        server has closed meanwhile is replaced at once (no back-off); other failures are
        :class:`Transient`."""
        for attempt in range(2):
            conn = self._connection(*key)
            reused = conn.sock is not None
            try:
                conn.request("GET", path, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as err:
                self._drop(*key)
                if not reused or attempt:
                    raise Transient(f"{type(err).__name__}: {err}") from err
            except (OSError, http.client.HTTPException) as err:
                self._drop(*key)
                raise Transient(f"{type(err).__name__}: {err}") from err
        raise AssertionError("unreachable")

    def _finish(self, response: http.client.HTTPResponse, key: tuple) -> None:
        """Drain a small unwanted body so the connection can be reused, or drop the connection."""
        try:
            if (response.length or 0) <= 65536:
                response.read()
                return
        except (OSError, http.client.HTTPException):
            pass
        response.close()
        self._drop(*key)

    def _done(self, response: http.client.HTTPResponse, key: tuple) -> None:
        """Mark a fully read response closed, so that its connection serves the next request."""
        try:
            if response.length or response.read():  # more than the Content-Range promised
                self._drop(*key)
        except (OSError, http.client.HTTPException):
            self._drop(*key)

    def _retrying(self, attempt, what: str, url: str, progress=lambda: 0):
        """Run ``attempt()`` until it returns, retrying :class:`Transient` failures with backoff.

        ``progress()`` is a number that grows when a failed attempt still got somewhere; the count of
        failures in a row restarts then.
        """
        failures, last = 0, progress()
        while True:
            try:
                return attempt()
            except Transient as err:
                now = progress()
                failures = 1 if now > last else failures + 1
                last = now
                if failures > self.options.retries:
                    raise RemoteError(f"fetching {what} from {url} failed {failures} times in a row, last: {err} "
                                      "(check the network; the timeout and retries are remote options)") from err
                time.sleep(self.options.backoff * 2 ** (failures - 1))

    # ---- whole bodies ---------------------------------------------------------------------
    def get_bytes(self, url: str, *, limit: int, what: str) -> bytes:
        """The whole body at ``url`` (at most ``limit`` bytes, else :class:`ArtifactError`)."""
        store = io.BytesIO()
        self._whole(url, store, what, limit)
        return store.getvalue()

    def download(self, url: str, part: Path, *, what: str, limit: int | None = None) -> None:
        """Append the body at ``url`` to the file ``part`` until it is complete, resuming at its size.

        The caller verifies the result; bytes already in ``part`` are taken on trust until then.
        """
        with open(part, "ab") as store:
            self._whole(url, store, what, limit)

    def _whole(self, url: str, store: BinaryIO, what: str, limit: int | None) -> None:
        """Append the body at ``url`` to ``store`` (positioned at its end): a plain GET, or a Range
        GET from ``store``'s size when it holds a part already (a 200 answer restarts it)."""

        def size() -> int:
            return store.seek(0, io.SEEK_END)

        def attempt() -> None:
            have = size()
            response, key = self._open(url, have or None, None, what)
            if have and response.status == 200:  # the server ignored Range: take the whole body
                store.seek(0)
                store.truncate()
                have = 0
            elif have:
                self._check_range(response, key, have, None, url)
            if limit is not None and response.length is not None and have + response.length > limit:
                self._finish(response, key)
                raise ArtifactError(f"{what} at {url} is implausibly large ({have + response.length} bytes)")
            while True:
                try:
                    data = response.read1(CHUNK)  # what has arrived: kept even if the connection drops next
                except (OSError, http.client.HTTPException) as err:
                    self._drop(*key)
                    raise Transient(f"{type(err).__name__}: {err}") from err
                if not data:
                    break
                store.write(data)
                store.flush()
                self._count(len(data))
                if limit is not None and store.tell() > limit:
                    self._drop(*key)
                    raise ArtifactError(f"{what} at {url} is implausibly large")
            if response.length:  # bytes promised but not received: the connection ended early
                self._drop(*key)
                raise Transient(f"connection ended after {size()} bytes")
            self._done(response, key)

        self._retrying(attempt, what, url, size)

    # ---- ranges ---------------------------------------------------------------------------
    def stream(self, url: str, start: int, end: int, sink: Sink, *, what: str) -> None:
        """Feed bytes ``[start, end)`` of ``url`` to ``sink`` in order, resuming after failures.

        A :class:`Restart` from the sink closes the response and re-requests from its offset.
        """
        offset = start

        def attempt() -> None:
            nonlocal offset
            while offset < end:
                response, key = self._open(url, offset, end - 1, what)
                self._check_range(response, key, offset, end - 1, url)
                position = offset
                try:
                    while position < end:
                        data = response.read1(min(CHUNK, end - position))
                        if not data:
                            raise http.client.IncompleteRead(b"", end - position)
                        self._count(len(data))
                        sink.write(position, memoryview(data))
                        position += len(data)
                except Restart as restart:
                    response.close()
                    self._drop(*key)
                    offset = restart.offset
                    continue
                except (OSError, http.client.HTTPException) as err:
                    self._drop(*key)
                    offset = sink.resume_at()
                    raise Transient(f"{type(err).__name__}: {err}") from err
                except BaseException:
                    self._drop(*key)
                    raise
                self._done(response, key)
                offset = end

        self._retrying(attempt, what, url, sink.resume_at)

    def _check_range(self, response: http.client.HTTPResponse, key: tuple, start: int, end: int | None, url: str) -> int:
        """Check that a ranged response is a 206 for ``start``-``end``; return the file's total size (-1 if unknown)."""
        if response.status != 206:
            self._finish(response, key)
            host = urlsplit(url).netloc
            raise RemoteError(f"the server at {host} does not support HTTP Range requests (it answered {response.status} "
                              f"to one for {url}): serve the artifact with a server that does, or download it and load it locally")
        match = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
        if match is None or int(match.group(1)) != start or (end is not None and int(match.group(2)) != end):
            self._finish(response, key)
            raise RemoteError(f"{url} answered a Range request for bytes {start}-{end} with Content-Range "
                              f"{response.getheader('Content-Range')!r}")
        return -1 if match.group(3) == "*" else int(match.group(3))

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_received += n
