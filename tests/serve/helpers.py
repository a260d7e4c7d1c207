"""Helpers of the serve tests: a server started on 127.0.0.1 at a free port (in this process,
uvicorn on a thread), plain HTTP requests to it, and polling."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}you {% endif %}")


class Running:
    """A server listening on ``base`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, server, port: int):
        self.server, self.port = server, port
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body=None, *, key: str | None = None, raw: bytes | None = None,
                headers: dict | None = None, timeout: float = 60):
        """(status, headers, parsed JSON or text) of one request; never raises for HTTP errors."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, head, text = response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as err:
            status, head, text = err.code, dict(err.headers), err.read().decode()
        try:
            return status, head, json.loads(text)
        except ValueError:
            return status, head, text

    def admin_memory(self, memory, reserve=None):
        body = {"memory": memory} if reserve is None else {"memory": memory, "reserve": reserve}
        status, _, data = self.request("POST", "/admin/memory", body, key=self.server.admin_key)
        assert status == 200, data
        return data


@contextmanager
def running(artifact, model=None, tokenizer=None, **options):
    """Build a server from ``artifact`` with ``options`` and serve it on a free port until the block ends."""
    from bitstack.serve.options import ServeOptions
    from bitstack.serve.server import build, serve_forever

    opts = ServeOptions(**{"memory": "1GB", "port": 0, **options})
    server = build(artifact, opts, model=model, tokenizer=tokenizer)
    ready = threading.Event()
    port = []
    thread = threading.Thread(target=serve_forever, args=(server, "127.0.0.1", 0),
                              kwargs={"on_ready": lambda p: (port.append(p), ready.set())}, daemon=True)
    thread.start()
    if not ready.wait(30):
        server.close()
        raise RuntimeError("the server did not start within 30 s")
    handle = Running(server, port[0])
    try:
        yield handle
    finally:
        server.request_exit()
        thread.join(15)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
