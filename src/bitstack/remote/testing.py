"""A static file server on 127.0.0.1 for tests and benchmarks of remote artifacts.

:class:`ArtifactServer` serves a folder over HTTP/1.1 (keep-alive) with single-range ``Range``
support, and can misbehave on purpose: a shared rate limit (the link's bandwidth), connections
dropped after N body bytes, corrupted bytes at chosen file offsets, Range requests ignored (200
with the whole file), fixed error statuses for chosen paths.  It also serves Hugging Face style
URLs, ``/{repo}/resolve/{revision}/{file}``, optionally through a 302 to ``/cdn/…`` like the Hub.
Every response is logged (:class:`Served`), so that tests can count the bytes of each file sent,
and ``max_in_flight`` is the most bodies that were being sent at once.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 64 * 1024


@dataclass
class Served:
    """One response: the file it was for (relative to the served folder), the byte range sent
    ``[start, start + sent)`` of the ``[start, end)`` promised, its status and request headers.
    Logged when the response starts; ``sent`` counts each chunk before it is written (and is
    taken back if the write fails), so a client never holds a byte the log does not count."""

    path: str
    status: int
    start: int
    end: int
    sent: int
    headers: dict = field(default_factory=dict, repr=False)


class _Pace:
    """A rate limit shared by all connections: each chunk waits for its slot on the wire."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self._lock = threading.Lock()
        self._free_at = 0.0

    def take(self, nbytes: int) -> None:
        if not self.rate:
            return
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + nbytes / self.rate
            done = self._free_at
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class ArtifactServer:
    """Serve ``root`` on 127.0.0.1 (a free port) from a background thread.  Use as a context manager.

    Knobs (set any time; thread-safe enough for tests):
      ``rate``: bytes per second for all connections together (None: unlimited);
      ``drop_after`` / ``drops``: the next ``drops`` responses with a body longer than
        ``drop_after`` bytes are cut off after that many bytes (the connection is closed);
      ``corrupt``: {(file, offset): times} flips the byte at that file offset in the next
        ``times`` responses that carry it;
      ``ignore_range``: answer Range requests with 200 and the whole file;
      ``status``: {file: HTTP status} answered instead of the file (e.g. 404, 403, 503);
      ``hf_repos``: {"org/name": folder under root ("" for root)} served at
        ``/{org}/{name}/resolve/{rev}/{file}``; ``hf_redirect``: answer those with a 302 to
        ``/cdn/{folder}/{file}`` first.
    """

    def __init__(self, root: str | Path, *, rate: float | None = None):
        self.root = Path(root).resolve()
        self.pace = _Pace(rate)
        self.drop_after: int | None = None
        self.drops = 0
        self.corrupt: dict[tuple[str, int], int] = {}
        self.ignore_range = False
        self.status: dict[str, int] = {}
        self.hf_repos: dict[str, str] = {}
        self.hf_redirect = False
        self.log: list[Served] = []
        self.max_in_flight = 0  # the most response bodies sent at the same time
        self._in_flight = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []  # connections accepted (for close_connections)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="artifact-server", daemon=True)

    @property
    def rate(self) -> float | None:
        return self.pace.rate

    @rate.setter
    def rate(self, value: float | None) -> None:
        self.pace.rate = value

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "ArtifactServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- what was served ---------------------------------------------------------------------
    def served(self, path: str | None = None) -> list[Served]:
        with self._lock:
            return [s for s in self.log if path is None or s.path == path]

    def bytes_sent(self, path: str | None = None) -> int:
        return sum(s.sent for s in self.served(path))

    def ranges_sent(self, path: str) -> list[tuple[int, int]]:
        """The byte ranges of ``path`` sent (merged where they touch)."""
        spans = sorted((s.start, s.start + s.sent) for s in self.served(path) if s.sent)
        out: list[tuple[int, int]] = []
        for a, b in spans:
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return out

    def close_connections(self) -> None:
        """Close every connection accepted so far, as a server closes idle kept-alive connections."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def clear(self) -> None:
        with self._lock:
            self.log.clear()
            self.max_in_flight = 0

    def _sending(self, change: int) -> None:
        with self._lock:
            self._in_flight += change
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    # ---- serving (called by the handler) ----------------------------------------------------------
    def _resolve(self, raw_path: str) -> tuple[str | None, str | None]:
        """(file relative to root, redirect target) for a request path."""
        path = unquote(urlsplit(raw_path).path).lstrip("/")
        for repo, folder in self.hf_repos.items():
            match = re.match(re.escape(repo) + r"/resolve/[^/]+/(.+)$", path)
            if match:
                rel = f"{folder}/{match.group(1)}".lstrip("/")
                if self.hf_redirect:
                    return None, "/cdn/" + rel
                return rel, None
        if path.startswith("cdn/"):
            path = path[4:]
        return path, None

    def _record(self, served: Served) -> None:
        with self._lock:
            self.log.append(served)

    def _take_drop(self, length: int) -> int | None:
        with self._lock:
            if self.drops > 0 and self.drop_after is not None and length > self.drop_after:
                self.drops -= 1
                return self.drop_after
        return None

    def _corruptions(self, rel: str, start: int, end: int) -> list[int]:
        with self._lock:
            hits = [offset for (name, offset), times in self.corrupt.items()
                    if name == rel and times > 0 and start <= offset < end]
            for offset in hits:
                self.corrupt[(rel, offset)] -= 1
        return hits


def _handler(server: ArtifactServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # quiet
            pass

        def setup(self):
            super().setup()
            with server._lock:
                server._sockets.append(self.connection)

        def do_GET(self):
            rel, redirect = server._resolve(self.path)
            headers = dict(self.headers.items())
            if redirect is not None:
                server._record(Served(self.path, 302, 0, 0, 0, headers))
                self._reply(302, {"Location": redirect, "Content-Length": "0"})
                return
            file = (server.root / rel).resolve() if rel else None
            if rel in server.status:
                self._error(server.status[rel], rel, headers)
                return
            if file is None or server.root not in file.parents or not file.is_file():
                self._error(404, rel or self.path, headers)
                return
            size = file.stat().st_size
            start, end, status = 0, size, 200
            match = _RANGE.match(self.headers.get("Range", "")) if not server.ignore_range else None
            if match:
                start = int(match.group(1))
                end = min(size, int(match.group(2)) + 1) if match.group(2) else size
                if start >= size or end <= start:
                    server._record(Served(rel, 416, start, start, 0, headers))
                    self._reply(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
                    return
                status = 206
            reply = {"Content-Length": str(end - start), "Accept-Ranges": "none" if server.ignore_range else "bytes"}
            if status == 206:
                reply["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            self._reply(status, reply)
            limit = server._take_drop(end - start)
            bad = server._corruptions(rel, start, end)
            sent = 0
            served = Served(rel, status, start, end, 0, headers)
            server._record(served)
            server._sending(+1)
            try:
                with open(file, "rb") as handle:
                    handle.seek(start)
                    while start + sent < end and (limit is None or sent < limit):
                        chunk = _CHUNK if not server.rate else max(1024, min(_CHUNK, int(server.rate / 50)))
                        n = min(chunk, end - start - sent, (limit - sent) if limit is not None else chunk)
                        data = bytearray(handle.read(n))
                        for offset in bad:
                            if start + sent <= offset < start + sent + len(data):
                                data[offset - start - sent] ^= 0xFF
                        server.pace.take(len(data))
                        served.sent += len(data)
                        try:
                            self.wfile.write(data)
                        except OSError:
                            served.sent -= len(data)
                            raise
                        sent += len(data)
                if limit is not None:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
            except OSError:  # the client went away
                self.close_connection = True
            finally:
                server._sending(-1)

        def _reply(self, status: int, headers: dict) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def _error(self, status: int, rel: str, headers: dict) -> None:
            body = f'{{"error": "HTTP {status}"}}'.encode()
            server._record(Served(rel, status, 0, 0, 0, headers))
            self._reply(status, {"Content-Type": "application/json", "Content-Length": str(len(body))})
            self.wfile.write(body)

    return Handler

