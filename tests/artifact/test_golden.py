"""Artifacts of format versions 1 and 2 (``tests/fixtures/``, made by the bitstack that wrote version
2: ``tests/fixtures/make_golden.py``) load bit for bit: the logits at two budgets and every dense
Ŵ are those that bitstack computed from them.  A re-sort writes them as version 3."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bitstack.artifact.opening import open_artifact
from bitstack.config import CompressConfig
from bitstack.sorting import sort_artifact
from fixtures.make_golden import expected_outputs

FIXTURES = Path(__file__).parent.parent / "fixtures"
GOLDEN = [("v1-avd", 1, "avd", {"rank": 4}), ("v2-planes", 2, "planes", {"group_size": 16})]


@pytest.fixture()
def one_thread(monkeypatch):
    # as the expected outputs were computed: one thread, the pure-PyTorch CPU path (the native
    # kernel's float32 sums are ordered differently; tests/codecs/planes/test_runtime_cpu.py)
    monkeypatch.setenv("BITSTACK_NATIVE", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, version, codec, params", GOLDEN)
def test_old_formats_load_bit_exactly(name, version, codec, params, one_thread):
    path = FIXTURES / f"{name}.bstk"
    assert json.loads((path / "manifest.json").read_text())["format_version"] == version
    with open_artifact(path) as reader:
        m = reader.manifest
    assert m.format_version == version and m.codecs == (codec,) and all(w.params == params for w in m.weights)
    assert CompressConfig.from_dict(m.compression).codec == codec
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    got = expected_outputs(path)
    assert sorted(got) == sorted(expected) and len(got) == 2 + len(m.weights)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


@pytest.mark.parametrize("name, version, codec, params", GOLDEN)
def test_a_resorted_old_artifact_is_version_3(name, version, codec, params, tmp_path, one_thread):
    path = tmp_path / f"{name}.bstk"
    shutil.copytree(FIXTURES / f"{name}.bstk", path)
    original = json.loads((path / "manifest.json").read_text())
    sort_artifact(path, "random", progress=False)
    data = json.loads((path / "manifest.json").read_text())
    assert data["format_version"] == 3 and all(w["codec"] == codec and w["params"] == params for w in data["weights"])
    assert data["compression"]["version"] == original["compression"]["version"]  # the settings keep theirs
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    got = expected_outputs(path)
    for key, tensor in expected.items():
        if key.startswith("dense."):  # the full stack: the same blocks in another order
            assert torch.equal(got[key], tensor), key
