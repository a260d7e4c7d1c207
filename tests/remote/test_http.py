import socket
import threading
import time

import pytest

from bitstack.errors import ArtifactError, RemoteError
from bitstack.remote.http import HttpClient
from bitstack.remote.urls import RemoteOptions

SHARD = "tiny.bstk/blocks-00001.safetensors"


def client(**overrides):
    return HttpClient({"x-token": "t"}, ": log in", RemoteOptions(backoff=0.01, timeout=5.0, **overrides))


class Collect:
    """A sink that keeps everything it was given (so it resumes where it stopped)."""

    def __init__(self, start):
        self.start, self.data = start, bytearray()

    def write(self, offset, data):
        assert offset == self.start + len(self.data)
        self.data += data

    def resume_at(self):
        return self.start + len(self.data)


def test_whole_and_ranged_gets(server, served_root):
    raw = (served_root / SHARD).read_bytes()
    http = client()
    assert http.get_bytes(f"{server.url}/{SHARD}", limit=10**6, what="x") == raw
    server.drop_after, server.drops = 5000, 2
    assert http.get_bytes(f"{server.url}/{SHARD}", limit=10**6, what="x") == raw  # resumed
    assert [s.start for s in server.served(SHARD)] == [0, 0, 5000, 10000]
    sink = Collect(100)
    http.stream(f"{server.url}/{SHARD}", 100, 5000, sink, what="x")
    assert bytes(sink.data) == raw[100:5000]
    assert server.served(SHARD)[-1].headers["x-token"] == "t"
    assert http.requests == 5 and http.bytes_received == 2 * len(raw) + 4900
    with pytest.raises(ArtifactError, match="implausibly large"):
        http.get_bytes(f"{server.url}/{SHARD}", limit=100, what="x")


def test_dropped_connections_resume_from_the_last_byte_kept(server, served_root):
    raw = (served_root / SHARD).read_bytes()
    server.drop_after, server.drops = 3000, 4
    sink = Collect(0)
    client(retries=1).stream(f"{server.url}/{SHARD}", 0, len(raw), sink, what="x")  # progress resets the count
    assert bytes(sink.data) == raw
    assert [s.start for s in server.served(SHARD)] == [0, 3000, 6000, 9000, 12000]
    assert server.bytes_sent(SHARD) == len(raw)


def test_download_resumes_a_partial_file(server, served_root, tmp_path):
    raw = (served_root / SHARD).read_bytes()
    part = tmp_path / "part"
    part.write_bytes(raw[:1000])
    client().download(f"{server.url}/{SHARD}", part, what="x")
    assert part.read_bytes() == raw and server.served(SHARD)[0].start == 1000
    server.drop_after, server.drops = 2000, 2
    part.unlink()
    client().download(f"{server.url}/{SHARD}", part, what="x")
    assert part.read_bytes() == raw and server.bytes_sent(SHARD) == 2 * len(raw) - 1000


@pytest.mark.parametrize("status, message", [(404, "not found .HTTP 404.: check the artifact's URL"),
                                             (403, r"denied \(HTTP 403\): log in"), (401, "HTTP 401"),
                                             (418, "HTTP 418")])
def test_client_errors_are_one_line_and_not_retried(server, status, message):
    server.status[SHARD] = status
    with pytest.raises(RemoteError, match=message) as info:
        client().get_bytes(f"{server.url}/{SHARD}", limit=10**6, what="x")
    assert "\n" not in str(info.value) and len(server.served(SHARD)) == 1


def test_server_errors_are_retried_then_refused(server):
    server.status[SHARD] = 503
    with pytest.raises(RemoteError, match="failed 3 times in a row, last: HTTP 503"):
        client(retries=2).stream(f"{server.url}/{SHARD}", 0, 10, Collect(0), what="x")
    assert len(server.served(SHARD)) == 3


def test_no_range_support_is_refused(server):
    server.ignore_range = True
    with pytest.raises(RemoteError, match="does not support HTTP Range requests"):
        client().stream(f"{server.url}/{SHARD}", 10, 20, Collect(10), what="x")


def test_range_beyond_the_end(server, served_root):
    size = (served_root / SHARD).stat().st_size
    with pytest.raises(ArtifactError, match="shorter than the manifest says"):
        client().stream(f"{server.url}/{SHARD}", size + 5, size + 10, Collect(size + 5), what="x")


def test_redirects_are_followed(server, served_root):
    server.hf_repos["org/repo"] = "tiny.bstk"
    server.hf_redirect = True
    raw = (served_root / SHARD).read_bytes()
    http = client()
    url = f"{server.url}/org/repo/resolve/main/blocks-00001.safetensors"
    assert http.get_bytes(url, limit=10**6, what="x") == raw
    sink = Collect(5)
    http.stream(url, 5, 50, sink, what="x")  # the redirect target is remembered: one request
    assert bytes(sink.data) == raw[5:50]
    assert [s.status for s in server.served()] == [302, 200, 206]


def test_timeouts_are_retried_then_refused():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():  # accept connections, never answer
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.perf_counter()
        with pytest.raises(RemoteError, match="failed 2 times in a row, last: TimeoutError"):
            HttpClient({}, "", RemoteOptions(timeout=0.3, retries=1, backoff=0.01)).get_bytes(
                f"http://127.0.0.1:{listener.getsockname()[1]}/x", limit=10, what="x")
        assert time.perf_counter() - started < 3
    finally:
        stop.set()
        thread.join()
        listener.close()
        for conn in accepted:
            conn.close()


def test_a_kept_alive_connection_closed_by_the_server_is_replaced_at_once(server, served_root):
    http = HttpClient({}, "", RemoteOptions(backoff=5.0, retries=0))  # a back-off or a retry would show
    url = f"{server.url}/{SHARD}"
    assert http.get_bytes(url, limit=10**6, what="x")
    server.close_connections()
    time.sleep(0.1)  # the close reaches the client's socket
    started = time.perf_counter()
    assert http.get_bytes(url, limit=10**6, what="x") == (served_root / SHARD).read_bytes()
    assert time.perf_counter() - started < 4  # no back-off of 5 s
    assert http.requests == 2 and len(server.served(SHARD)) == 2
