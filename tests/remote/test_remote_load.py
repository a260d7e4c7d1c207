"""Loading remote artifacts: only the prefix's bytes travel, the weights are those of a local load."""

import socket

import pytest
from remote_util import block_ranges, manifest_of, same_model, shard_ranges_sent

import bitstack
from bitstack.artifact.safetensors_io import read_header
from bitstack.errors import ArtifactError, RemoteError
from bitstack.remote.urls import RemoteOptions


@pytest.fixture(scope="module")
def local_models(served_root):
    """Local loads of tiny.bstk, by block count (built on demand, shared by the module's tests)."""
    path = served_root / "tiny.bstk"
    manifest = manifest_of(path)
    cache = {}

    def at(blocks):
        if blocks not in cache:
            cache[blocks] = bitstack.load(path, manifest.prefix_bytes[blocks], device="cpu")
        return cache[blocks]

    return manifest, at


def test_a_budget_fetches_its_prefix_and_nothing_else(served_root, server, options, local_models):
    m, local = local_models
    n = m.floor_blocks + 30
    model = bitstack.load(f"{server.url}/tiny.bstk", m.prefix_bytes[n], device="cpu", remote=options)
    assert model.bitstack.loaded == n and same_model(model, local(n))
    assert shard_ranges_sent(server, "tiny.bstk") == block_ranges(served_root / "tiny.bstk", 0, n)
    for name in ("manifest.json", "base.safetensors"):
        assert server.ranges_sent(f"tiny.bstk/{name}") == [(0, (served_root / "tiny.bstk" / name).stat().st_size)]
    assert not [s for s in server.served() if "tokenizer" in s.path]  # a load needs no tokenizer
    assert model.bitstack.reader.bytes_fetched == server.bytes_sent()


def test_blocks_travel_several_per_request_on_parallel_connections(served_root, server, options, local_models):
    m, local = local_models
    n = len(m.stack)
    server.rate = 300_000  # bytes/s: requests last long enough to overlap
    model = bitstack.load(f"{server.url}/tiny.bstk", None, device="cpu", remote=options)
    assert model.bitstack.loaded == n and same_model(model, local(n))
    data_start = {f"tiny.bstk/{s.file}": read_header(served_root / "tiny.bstk" / s.file).data_start for s in m.shards}
    block_gets = [s for s in server.served() if s.path in data_start and s.start >= data_start[s.path]]  # not headers
    assert len(block_gets) <= len(m.stack) / 4  # 6000 bytes per request: several blocks each
    largest = max(b.bytes for b in m.stack)  # a block larger than request_bytes is one request
    assert max(s.end - s.start for s in block_gets) <= max(options.request_bytes, largest)
    assert server.max_in_flight == options.connections  # 3 connections at once


def test_grow_fetches_only_the_missing_blocks_and_shrink_nothing(served_root, server, options, local_models):
    m, local = local_models
    a, b = m.floor_blocks + 10, m.floor_blocks + 70
    model = bitstack.load(f"{server.url}/tiny.bstk", m.prefix_bytes[a], device="cpu", remote=options)
    server.clear()
    report = model.bitstack.resize(m.prefix_bytes[b])
    assert report.new_blocks == b and same_model(model, local(b))
    assert shard_ranges_sent(server, "tiny.bstk") == block_ranges(served_root / "tiny.bstk", a, b)
    assert {s.path.split("/")[1][:7] for s in server.served()} == {"blocks-"}
    server.clear()
    model.bitstack.resize(m.floor_bytes)
    model.bitstack.resize(m.prefix_bytes[b])  # grows back from the cache
    assert server.served() == [] and same_model(model, local(b))


def test_a_second_load_comes_from_the_cache(served_root, server, options, local_models):
    m, local = local_models
    url = f"{server.url}/tiny.bstk"
    bitstack.load(url, m.prefix_bytes[m.floor_blocks + 5], device="cpu", remote=options)
    server.clear()
    model = bitstack.load(url, m.prefix_bytes[m.floor_blocks + 5], device="cpu", remote=options)
    assert [s.path for s in server.served()] == ["tiny.bstk/manifest.json"] and same_model(model, local(m.floor_blocks + 5))


def test_hf_locations(served_root, server, options, local_models, monkeypatch):
    m, local = local_models
    server.hf_repos["org/tiny"] = "tiny.bstk"
    server.hf_redirect = True  # like the Hub: resolve answers 302 to a CDN URL
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    model = bitstack.load("hf://org/tiny@main", m.prefix_bytes[m.floor_blocks + 3], device="cpu", remote=options)
    assert same_model(model, local(m.floor_blocks + 3))
    resolves = [s for s in server.served() if "/resolve/main/" in s.path]
    assert resolves and all(s.headers.get("authorization") == "Bearer hf_test_token" for s in resolves)
    tokenizer = bitstack.load_tokenizer("hf://org/tiny", remote=options)
    assert tokenizer("the cat").input_ids == [4, 5]


def _block_offset(folder, position):
    m = manifest_of(folder)
    e = m.stack[position]
    file = m.shards[e.shard].file
    return file, read_header(folder / file).data_start + e.offset + e.bytes // 2


def test_a_wrong_block_is_fetched_again_once_then_refused(served_root, server, options, local_models):
    m, local = local_models
    position = m.floor_blocks + 3
    file, offset = _block_offset(served_root / "tiny.bstk", position)
    server.corrupt[(f"tiny.bstk/{file}", offset)] = 1
    url, budget = f"{server.url}/tiny.bstk", m.prefix_bytes[m.floor_blocks + 8]
    assert same_model(bitstack.load(url, budget, device="cpu", remote=options), local(m.floor_blocks + 8))
    server.corrupt[(f"tiny.bstk/{file}", offset)] = 2
    e = m.stack[position]
    fresh = RemoteOptions(cache_dir=options.cache_dir.parent / "other-cache", backoff=0.01)
    with pytest.raises(ArtifactError, match=f"block {e.index} of {e.tensor} .stack position {position}. .* twice"):
        bitstack.load(url, budget, device="cpu", remote=fresh)


def test_a_wrong_base_is_fetched_again_once_then_refused(served_root, server, options, local_models):
    m, local = local_models
    server.corrupt[("tiny.bstk/base.safetensors", 5000)] = 1
    url = f"{server.url}/tiny.bstk"
    assert same_model(bitstack.load(url, m.floor_bytes, device="cpu", remote=options), local(m.floor_blocks))
    server.corrupt[("tiny.bstk/base.safetensors", 5000)] = 2
    fresh = RemoteOptions(cache_dir=options.cache_dir.parent / "other-cache", backoff=0.01)
    with pytest.raises(ArtifactError, match="the base weights .* sha256, twice"):
        bitstack.load(url, m.floor_bytes, device="cpu", remote=fresh)
    assert not list((options.cache_dir.parent / "other-cache").rglob("base.safetensors"))  # nothing half-written


def test_dropped_connections_resume(served_root, server, options, local_models):
    m, local = local_models
    server.drop_after, server.drops = 700, 12
    model = bitstack.load(f"{server.url}/tiny.bstk", m.full_bytes, device="cpu", remote=options)
    assert same_model(model, local(len(m.stack)))
    assert server.drops == 0
    total = sum((served_root / "tiny.bstk" / f).stat().st_size for f in ["manifest.json", "base.safetensors"]
                + [s.file for s in m.shards])
    assert server.bytes_sent() < total + 12 * 700  # resumed at the last verified block, not from the start


def test_errors_are_one_line_remote_errors(served_root, server, options):
    server.ignore_range = True
    with pytest.raises(RemoteError, match="does not support HTTP Range requests"):
        bitstack.load(f"{server.url}/tiny.bstk", device="cpu", remote=options)
    assert not server.served("tiny.bstk/base.safetensors")  # refused before anything large was fetched
    server.ignore_range = False
    with pytest.raises(RemoteError, match="HTTP 404"):
        bitstack.load(f"{server.url}/missing.bstk", device="cpu", remote=options)
    server.status["tiny.bstk/base.safetensors"] = 403
    with pytest.raises(RemoteError, match="denied .HTTP 403."):
        bitstack.load(f"{server.url}/tiny.bstk", device="cpu", remote=options)


def test_an_unreachable_host_is_a_one_line_remote_error(options):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RemoteError) as error:
        bitstack.load(f"http://127.0.0.1:{port}/tiny.bstk", device="cpu", remote=options)
    message = str(error.value)
    assert "\n" not in message and f"127.0.0.1:{port}/tiny.bstk" in message and "Connection refused" in message
    assert not any(options.cache_dir.rglob("manifest.json"))  # nothing kept


def test_a_block_damaged_in_the_cache_is_fetched_again(served_root, server, options, local_models):
    m, local = local_models
    url, n = f"{server.url}/tiny.bstk", m.floor_blocks + 20
    bitstack.load(url, m.prefix_bytes[n], device="cpu", remote=options)
    entry = next((options.cache_dir / "artifacts").iterdir())
    file, offset = _block_offset(served_root / "tiny.bstk", m.floor_blocks + 2)
    with open(entry / file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    server.clear()
    assert same_model(bitstack.load(url, m.prefix_bytes[n], device="cpu", remote=options), local(n))
    e = m.stack[m.floor_blocks + 2]
    sent = server.ranges_sent(f"tiny.bstk/{file}")
    assert len(sent) == 1 and sent[0][1] - sent[0][0] == e.bytes  # that block alone


def test_offline_uses_the_cache_only(served_root, server, options, local_models):
    m, local = local_models
    url, n = f"{server.url}/tiny.bstk", m.floor_blocks + 20
    bitstack.load(url, m.prefix_bytes[n], device="cpu", remote=options)
    bitstack.load_tokenizer(url, remote=options)
    server.clear()
    offline = RemoteOptions(cache_dir=options.cache_dir, offline=True)
    assert same_model(bitstack.load(url, m.prefix_bytes[n], device="cpu", remote=offline), local(n))
    assert bitstack.load_tokenizer(url, remote=offline) is not None
    with pytest.raises(RemoteError, match="not in the cache .* offline"):
        bitstack.load(url, m.prefix_bytes[n + 5], device="cpu", remote=offline)
    with pytest.raises(RemoteError, match="not in the cache .* offline"):
        bitstack.load(f"{server.url}/other.bstk", device="cpu", remote=offline)
    assert server.served() == []


def test_a_shard_header_damaged_in_the_cache_is_fetched_again(served_root, server, options, local_models):
    m, local = local_models
    url, n = f"{server.url}/tiny.bstk", m.floor_blocks + 20
    bitstack.load(url, m.prefix_bytes[n], device="cpu", remote=options)
    entry = next((options.cache_dir / "artifacts").iterdir())
    file = m.shards[m.stack[0].shard].file
    with open(entry / file, "r+b") as handle:
        handle.seek(12)
        handle.write(b"\xff")  # inside the header's JSON
    server.clear()
    assert same_model(bitstack.load(url, m.prefix_bytes[n], device="cpu", remote=options), local(n))
    assert server.served(f"tiny.bstk/{file}")  # the header travelled again


def test_a_bad_manifest_is_refused_and_not_kept(served_root, server, options, tmp_path):
    bad = served_root.parent / "bad-served"
    (bad / "art.bstk").mkdir(parents=True, exist_ok=True)
    (bad / "art.bstk" / "manifest.json").write_text('{"format": "bitstack", "format_version": 2}')
    from bitstack.remote.testing import ArtifactServer

    with ArtifactServer(bad) as other:
        with pytest.raises(ArtifactError, match=f"{other.url}/art.bstk does not hold a usable bitstack manifest: .*missing field"):
            bitstack.load(f"{other.url}/art.bstk", device="cpu", remote=options)
    assert not list(options.cache_dir.rglob("manifest.json"))
