"""Progressive loading: the model comes back at the floor and grows to its budget as blocks arrive."""

import time

import pytest
import torch
from remote_util import block_ranges, data_bytes_sent, manifest_of, same_model, shard_ranges_sent

import bitstack
from bitstack.errors import RemoteError


@pytest.fixture(scope="module")
def local(served_root):
    path = served_root / "tiny.bstk"
    manifest = manifest_of(path)
    return manifest, lambda blocks: bitstack.load(path, manifest.prefix_bytes[blocks], device="cpu")


def test_progressive_starts_at_the_floor_and_reaches_the_budget(served_root, server, options, local):
    m, local_at = local
    folder, n = served_root / "tiny.bstk", m.floor_blocks + 80
    events = []

    def slow_after_the_floor(progress):  # the first report comes before any block beyond the floor is asked for
        server.rate = 60_000
        events.append(progress)

    model = bitstack.load(f"{server.url}/tiny.bstk", m.prefix_bytes[n], device="cpu", remote=options,
                          progressive=True, on_progress=slow_after_the_floor)
    needed = sum(e.bytes for e in m.stack[:n])
    assert data_bytes_sent(server, folder, "tiny.bstk") < needed  # returned before the budget arrived
    with torch.no_grad():
        logits = model(torch.tensor([[4, 5, 6]])).logits  # runs while blocks arrive
    assert logits.shape == (1, 3, 64)
    assert model.bitstack.progressive.wait(timeout=60) is True
    assert same_model(model, local_at(n))
    assert events[0].loaded_blocks == m.floor_blocks and events[-1].done and not events[-1].stopped
    assert len(events) >= 3  # the floor, at least one step between, the budget
    loaded = [e.loaded_blocks for e in events]
    assert loaded == sorted(loaded) and all(e.target_blocks == n for e in events)
    assert events[-1].resident_bytes == events[-1].target_bytes == m.prefix_bytes[n] == bitstack.memory_bytes(model)
    assert shard_ranges_sent(server, "tiny.bstk") == block_ranges(folder, 0, n)  # only the budget's prefix
    assert events[-1].fetched_bytes == server.bytes_sent()


def test_stop_keeps_what_is_attached_and_fetches_no_more(served_root, server, options, local):
    m, local_at = local
    events = []

    def slow_after_the_floor(progress):
        server.rate = 20_000
        events.append(progress)

    model = bitstack.load(f"{server.url}/tiny.bstk", device="cpu", remote=options, progressive=True,
                          on_progress=slow_after_the_floor)
    handle = model.bitstack.progressive
    handle.stop()
    assert handle.wait() is False and events[-1].stopped and not events[-1].done
    count = len(server.served())
    time.sleep(0.3)
    assert len(server.served()) == count and model.bitstack.loaded < len(m.stack)
    assert same_model(model, local_at(model.bitstack.loaded))


def test_a_failure_is_reported_and_raised_by_wait(served_root, server, options, local):
    m, _ = local
    last_shard = m.shards[m.stack[-1].shard].file
    server.status[f"tiny.bstk/{last_shard}"] = 404
    events = []
    model = bitstack.load(f"{server.url}/tiny.bstk", device="cpu", remote=options, progressive=True,
                          on_progress=events.append)
    with pytest.raises(RemoteError, match="HTTP 404"):
        model.bitstack.progressive.wait(timeout=60)
    assert events[-1].stopped and isinstance(events[-1].error, RemoteError)
    assert m.floor_blocks <= model.bitstack.loaded < len(m.stack)


def test_a_local_artifact_grows_in_one_step(served_root, local):
    m, local_at = local
    events = []
    model = bitstack.load(served_root / "tiny.bstk", m.prefix_bytes[m.floor_blocks + 40], device="cpu",
                          progressive=True, on_progress=events.append)
    assert model.bitstack.progressive.wait(timeout=60)
    assert [e.loaded_blocks for e in events] == [m.floor_blocks, m.floor_blocks + 40]
    assert same_model(model, local_at(m.floor_blocks + 40))
