"""A loaded model's stack against the ways PyTorch and transformers change or copy a model:
``.to()`` and friends, ``get_memory_footprint()``, ``copy.deepcopy``."""

import copy
import threading

import pytest
import torch

import bitstack
from bitstack.errors import InputError
from bitstack.runtime.budget import memory_bytes


@pytest.fixture
def model(tiny_artifact):
    path, _, _ = tiny_artifact
    m = bitstack.load(path, device="cpu", dtype="bfloat16")
    full = m.bitstack.full_bytes
    m.bitstack.resize((m.bitstack.floor_bytes + full) // 2)
    return m


@pytest.mark.parametrize("change", [lambda m: m.to(torch.float32), lambda m: m.float(), lambda m: m.half(),
                                    lambda m: m.to(torch.bfloat16), lambda m: m.to("meta"),
                                    lambda m: m.to(device="cpu", dtype=torch.float16)])
def test_dtype_or_device_change_is_refused_and_changes_nothing(model, change):
    before = memory_bytes(model)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(InputError, match=r"load it again with bitstack.load\(path, memory, device=\.\.\., dtype=\.\.\.\)"):
        change(model)
    assert memory_bytes(model) == before == model.bitstack.resident_bytes
    assert all(torch.equal(t, state[n]) and t.dtype == state[n].dtype for n, t in model.state_dict().items())
    report = model.bitstack.resize(model.bitstack.floor_bytes)
    assert report.old_bytes == before and report.new_bytes == memory_bytes(model)


def test_a_move_to_the_same_device_is_allowed(model):
    x = torch.tensor([[1, 2, 3, 4]])
    before = model(x).logits
    assert model.to("cpu") is model and model.cpu() is model
    assert torch.equal(model(x).logits, before)


def test_get_memory_footprint_is_the_resident_bytes(model):
    assert model.get_memory_footprint() == memory_bytes(model) == model.bitstack.resident_bytes


def test_deepcopy_is_an_independent_model(model):
    x = torch.tensor([[1, 2, 3, 4]])
    twin = copy.deepcopy(model)
    assert twin.bitstack is not model.bitstack and twin.bitstack.reader is not model.bitstack.reader
    assert all(twin.get_submodule(name) is module for name, module in twin.bitstack.modules.items())
    assert torch.equal(twin(x).logits, model(x).logits)
    assert memory_bytes(twin) == memory_bytes(model) and twin.bitstack.loaded == model.bitstack.loaded
    before = model(x).logits
    twin.bitstack.resize(None)  # grows the copy alone
    assert twin.bitstack.loaded == len(twin.bitstack.manifest.stack) and memory_bytes(twin) == twin.bitstack.full_bytes
    assert torch.equal(model(x).logits, before) and memory_bytes(model) == model.bitstack.resident_bytes
    held, release = threading.Event(), threading.Event()

    def hold():  # another thread holds the original's lock (as its forward pass would)
        with model.bitstack.lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        twin(x)  # the copy's forward takes its own lock: it does not wait for the original's
    finally:
        release.set()
        thread.join()
