import gc
import random
import shutil
import threading
import weakref

import pytest
import torch

import bitstack
from bitstack.artifact.reader import ArtifactReader
from bitstack.errors import ArtifactError, BudgetError
from bitstack.runtime.auto import AutoResizer
from bitstack.runtime.linear import BitStackLinear


def _manifest(path):
    with ArtifactReader(path) as reader:
        return reader.manifest


def _same_weights(a, b):
    for name, module in a.bitstack.modules.items():
        other = b.bitstack.modules[name].blocks
        if len(module.blocks) != len(other):
            return False
        for x, y in zip(module.blocks, other):
            if not (torch.equal(x.signs, y.signs) and torch.equal(x.u, y.u) and torch.equal(x.v, y.v)):
                return False
    return True


@pytest.mark.parametrize("artifact", ["tiny_artifact", "tiny_avd_artifact"])
def test_random_grow_shrink_sequence_matches_fresh_loads(artifact, request):
    path, _, _ = request.getfixturevalue(artifact)
    m = _manifest(path)
    rng = random.Random(0)
    model = bitstack.load(path, m.floor_bytes, device="cpu")
    fresh_cache = {}
    for step in range(220):
        budget = rng.randint(m.floor_bytes, m.full_bytes + 1000)
        report = bitstack.resize(model, budget)
        resident = bitstack.memory_bytes(model)
        assert resident <= budget and resident == report.new_bytes == m.prefix_bytes[model.bitstack.loaded]
        if step % 20 == 0 or step > 210:
            n = model.bitstack.loaded
            if n not in fresh_cache:
                fresh_cache[n] = bitstack.load(path, budget, device="cpu")
            assert _same_weights(model, fresh_cache[n])


def test_grow_reads_only_the_missing_blocks(tiny_artifact, monkeypatch):
    path, _, _ = tiny_artifact
    m = _manifest(path)
    model = bitstack.load(path, m.prefix_bytes[m.floor_blocks + 3], device="cpu")
    read = []
    original = ArtifactReader._read_run
    monkeypatch.setattr(ArtifactReader, "_read_run", lambda self, pos, bufs: read.extend(range(pos, pos + len(bufs))) or original(self, pos, bufs))
    report = model.bitstack.resize(m.prefix_bytes[m.floor_blocks + 10])
    assert read == list(range(m.floor_blocks + 3, m.floor_blocks + 10))
    assert report.bytes_read == m.prefix_bytes[m.floor_blocks + 10] - m.prefix_bytes[m.floor_blocks + 3]
    read.clear()
    model.bitstack.resize(m.prefix_bytes[m.floor_blocks + 1])
    assert read == []  # shrinking reads nothing


def test_shrink_really_frees_blocks(tiny_artifact):
    path, _, _ = tiny_artifact
    m = _manifest(path)
    model = bitstack.load(path, device="cpu")
    last = m.stack[-1]
    ref = weakref.ref(model.bitstack.modules[last.tensor].blocks[-1].u)
    model.bitstack.resize(m.floor_bytes)
    gc.collect()
    assert ref() is None


def test_below_floor_changes_nothing(tiny_artifact):
    path, _, _ = tiny_artifact
    m = _manifest(path)
    model = bitstack.load(path, device="cpu")
    with pytest.raises(BudgetError):
        bitstack.resize(model, m.floor_bytes - 1)
    assert model.bitstack.loaded == len(m.stack) and bitstack.memory_bytes(model) == m.full_bytes


def test_corrupted_block_during_grow_leaves_model_unchanged(tiny_artifact, tmp_path):
    path, _, _ = tiny_artifact
    copy = tmp_path / "c.bstk"
    shutil.copytree(path, copy)
    m = _manifest(copy)
    model = bitstack.load(copy, m.floor_bytes, device="cpu")
    last = m.stack[-1]
    shard = copy / m.shards[last.shard].file
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x55
    shard.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="corrupted"):
        model.bitstack.resize(None)
    assert model.bitstack.loaded == m.floor_blocks and bitstack.memory_bytes(model) == m.floor_bytes


def test_resize_from_another_thread_never_lands_inside_a_forward(tiny_artifact):
    path, _, _ = tiny_artifact
    m = _manifest(path)
    model = bitstack.load(path, m.floor_bytes, device="cpu")
    layers = [mod for mod in model.modules() if isinstance(mod, BitStackLinear)]
    seen: list[tuple[int, ...]] = []
    torn = []

    def snapshot(module, args):
        seen.append(tuple(len(layer.blocks) for layer in layers))

    def check(module, args, output):
        if tuple(len(layer.blocks) for layer in layers) != seen[-1]:
            torn.append(seen[-1])

    # the pre-hook runs after load's lock-taking hook, the post-hook before its lock-releasing one
    model.register_forward_pre_hook(snapshot)
    model.register_forward_hook(check, prepend=True)
    stop = threading.Event()
    errors = []

    def resizer():
        rng = random.Random(1)
        try:
            while not stop.is_set():
                model.bitstack.resize(rng.randint(m.floor_bytes, m.full_bytes))
        except Exception as err:  # pragma: no cover - surfaced below
            errors.append(err)

    thread = threading.Thread(target=resizer)
    thread.start()
    ids = torch.randint(4, 64, (1, 8))
    try:
        for _ in range(4):
            model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=3)
    finally:
        stop.set()
        thread.join()
    assert not errors and not torn and len(seen) >= 32
    assert len(set(seen)) > 1  # resizes really happened between forward passes


class _FakeMemory:
    def __init__(self, free):
        self.free = free

    def __call__(self):
        return self.free


def test_auto_resizer_follows_free_memory(tiny_artifact):
    path, _, _ = tiny_artifact
    m = _manifest(path)
    model = bitstack.load(path, m.floor_bytes, device="cpu")
    probe = _FakeMemory(10**9)
    events = []
    auto = AutoResizer(model, reserve=1000, hysteresis=2000, probe=probe, on_change=events.append)
    assert auto.step() is not None and model.bitstack.loaded == len(m.stack)  # lots free: grow to full
    probe.free = 1000 + 500  # within hysteresis of the reserve: no churn
    assert auto.step() is None
    probe.free = 0  # pressure: shrink below resident - reserve
    event = auto.step()
    assert event is not None and bitstack.memory_bytes(model) <= m.full_bytes - 1000
    probe.free = -10**9  # far below the floor: stays at the floor
    auto.step()
    assert model.bitstack.loaded == m.floor_blocks
    assert len(events) == 3
    assert events[-1].report.new_bytes == bitstack.memory_bytes(model) == m.floor_bytes


def test_auto_resizer_thread_starts_and_stops(tiny_artifact):
    path, _, _ = tiny_artifact
    m = _manifest(path)
    model = bitstack.load(path, m.floor_bytes, device="cpu")
    probe = _FakeMemory(10**9)
    with AutoResizer(model, reserve=0, hysteresis=0, interval=0.01, probe=probe) as auto:
        assert model.bitstack.loaded == len(m.stack)
        probe.free = -(m.full_bytes - m.floor_bytes) // 2
        for _ in range(200):
            if model.bitstack.loaded < len(m.stack):
                break
            threading.Event().wait(0.01)
    assert model.bitstack.loaded < len(m.stack) and auto._thread is None
