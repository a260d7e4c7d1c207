"""The cache: shared by concurrent processes, resumable after a kill, size-limited with eviction."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from remote_util import blocks_digest, data_bytes_sent, manifest_of, same_model

import bitstack
from bitstack.artifact.reader import ArtifactReader
from bitstack.errors import RemoteError
from bitstack.remote import intervals
from bitstack.remote.cache import Cache
from bitstack.remote.evict import make_room
from bitstack.remote.reader import RemoteReader
from bitstack.remote.urls import RemoteOptions

# A process that fetches the whole artifact through the cache and prints its blocks' digest.
FETCH = """
import json, sys
sys.path.insert(0, {tests!r})
from remote_util import blocks_digest
from bitstack.remote.reader import RemoteReader
from bitstack.remote.urls import RemoteOptions
options = RemoteOptions(cache_dir={cache!r}, backoff=0.01, connections=3, request_bytes=6000)
with RemoteReader({url!r}, options=options) as reader:
    reader.read_base()
    print(json.dumps({{"digest": blocks_digest(reader, len(reader.manifest.stack))}}))
"""


def _fetcher(url, cache):
    code = FETCH.format(tests=os.path.dirname(__file__), cache=str(cache), url=url)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _local_digest(folder):
    with ArtifactReader(folder) as reader:
        return blocks_digest(reader, len(reader.manifest.stack))


def _entry_index(cache_dir):
    (entry,) = [p for p in (cache_dir / "artifacts").iterdir()]
    data = json.loads((entry / ".remote" / "index.json").read_text())
    return [tuple(span) for span in data["blocks"]], entry


def test_concurrent_processes_share_the_cache(served_root, server, options):
    folder, m = served_root / "tiny.bstk", manifest_of(served_root / "tiny.bstk")
    server.rate = 150_000  # so that the two processes overlap
    url = f"{server.url}/tiny.bstk"
    procs = [_fetcher(url, options.cache_dir) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    local = _local_digest(folder)
    assert [json.loads(out)["digest"] for out, _ in outs] == [local, local]
    # every block and the base travelled once: a unit is fetched under a lock, the base under another
    assert data_bytes_sent(server, folder, "tiny.bstk") == sum(e.bytes for e in m.stack)
    assert server.bytes_sent("tiny.bstk/base.safetensors") == (folder / "base.safetensors").stat().st_size
    assert _entry_index(options.cache_dir)[0] == [(0, len(m.stack))]
    server.clear()
    with RemoteReader(url, options=options) as reader:
        assert blocks_digest(reader, len(m.stack)) == local
    assert [s.path for s in server.served()] == ["tiny.bstk/manifest.json"]


def _kill_when(proc, server, condition, timeout=60):
    started = time.monotonic()
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - started < timeout
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_killed_download_resumes_with_what_it_verified(served_root, server, options):
    folder, m = served_root / "tiny.bstk", manifest_of(served_root / "tiny.bstk")
    url, base = f"{server.url}/tiny.bstk", "tiny.bstk/base.safetensors"
    base_size = (folder / "base.safetensors").stat().st_size
    server.rate = 40_000
    # killed in the middle of the base: its partial download is resumed, not restarted
    _kill_when(_fetcher(url, options.cache_dir), server, lambda: server.bytes_sent(base) > base_size // 2)
    server.rate = None
    with RemoteReader(url, options=options) as reader:
        reader.read_base()
    assert server.served(base)[-1].start > 0 and server.bytes_sent(base) < 2 * base_size
    # killed in the middle of the blocks: the verified ones are kept, the rest is fetched
    server.rate = 40_000
    total = sum(e.bytes for e in m.stack)
    _kill_when(_fetcher(url, options.cache_dir), server, lambda: data_bytes_sent(server, folder, "tiny.bstk") > total // 2)
    kept, _ = _entry_index(options.cache_dir)
    assert kept and kept != [(0, len(m.stack))]
    server.rate = None
    server.clear()
    with RemoteReader(url, options=options) as reader:
        assert blocks_digest(reader, len(m.stack)) == _local_digest(folder)
    missing = intervals.missing(kept, 0, len(m.stack))
    assert data_bytes_sent(server, folder, "tiny.bstk") == sum(m.stack[p].bytes for a, b in missing for p in range(a, b))


def _disk(cache_dir):
    return Cache(cache_dir, 1).disk_bytes()


def test_eviction_drops_the_tail_of_the_least_recently_used_first(served_root, server, options):
    m = manifest_of(served_root / "tiny.bstk")
    with RemoteReader(f"{server.url}/other.bstk", options=options) as reader:
        reader.read_base()
        reader.read_blocks(0, len(m.stack))
        other = reader.entry
    with RemoteReader(f"{server.url}/tiny.bstk", options=options) as reader:
        cache = Cache(options.cache_dir, _disk(options.cache_dir) + 4000)
        make_room(cache, 12000, reader.entry)  # some of other's tail gives way, no more
        blocks, _ = other.read_index()
        assert len(blocks) == 1 and m.floor_blocks <= blocks[0][1] < len(m.stack) and blocks[0][0] == 0
        assert _disk(options.cache_dir) + 12000 <= cache.limit and other.has_manifest()
        make_room(cache, cache.limit - reader.entry.disk_bytes() - 1000, reader.entry)  # all of other
        assert not other.has_manifest() and other.read_index() == ([], set()) and other.disk_bytes() == 0
        with pytest.raises(RemoteError, match="more than the cache limit"):
            make_room(cache, cache.limit + 1, reader.entry)


def test_artifacts_in_use_are_never_evicted(served_root, server, options, tmp_path):
    m = manifest_of(served_root / "tiny.bstk")
    solo = RemoteOptions(cache_dir=tmp_path / "solo", backoff=0.01)
    bitstack.load(f"{server.url}/tiny.bstk", device="cpu", remote=solo).bitstack.reader.close()
    alone = _disk(tmp_path / "solo")  # the whole of tiny.bstk in a cache
    in_use = bitstack.load(f"{server.url}/other.bstk", device="cpu", remote=options)
    limited = RemoteOptions(cache_dir=options.cache_dir, cache_limit=alone + 8192, backoff=0.01)
    with pytest.raises(RemoteError, match="cannot take .* more; raise the limit"):
        bitstack.load(f"{server.url}/tiny.bstk", device="cpu", remote=limited)
    assert in_use.bitstack.reader.entry.read_index()[0] == [(0, len(m.stack))]
    in_use.bitstack.reader.close()  # no longer in use: it gives way, whole
    model = bitstack.load(f"{server.url}/tiny.bstk", device="cpu", remote=limited)
    assert same_model(model, bitstack.load(served_root / "tiny.bstk", device="cpu"))
    assert not in_use.bitstack.reader.entry.has_manifest() and _disk(options.cache_dir) <= alone + 8192
