import json

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer
from torch import nn

import bitstack
from bitstack.artifact.reader import ArtifactReader
from bitstack.config import CompressConfig
from bitstack.errors import BudgetError
from bitstack.runtime.linear import BitStackLinear

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "opt", "gpt_neox", "phi3"]


# clip none: a clipped grid keeps its clipping error at every block, so only the full range converges to W;
# signs nearest: joint signs converge to the error-compensated weight, not to W (tests/core/test_planes.py)
CODECS = {"planes": {"codec": "planes", "niter": 24, "group_size": 16, "clip": "none", "signs": "nearest"},
          "avd": {"codec": "avd", "niter": 40, "rank": 8}}


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("family", FAMILIES)
def test_full_stack_matches_float_model(family, codec, tmp_path):
    """With every block loaded, logits match the float model within the decomposition's error."""
    model, reference = tiny_model(family), tiny_model(family)
    config = CompressConfig(nsamples=4, seqlen=16, dtype="float32", batch_size=4, **CODECS[codec])
    path = bitstack.compress(model, tmp_path / "a.bstk", config, tokenizer=tiny_tokenizer(), device="cpu", progress=False)
    loaded = bitstack.load(path, device="cpu")
    ids = torch.randint(4, 64, (2, 24))
    with torch.no_grad():
        ref, out = reference(ids).logits, loaded(ids).logits
    assert float((out - ref).norm() / ref.norm()) < 1e-3
    # no decomposed layer keeps a dense weight
    layers = [m for m in loaded.modules() if isinstance(m, BitStackLinear)]
    assert layers and all(not isinstance(m, nn.Linear) for m in loaded.modules() if m in layers)


def _loss(model, ids):
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


def test_budgets_resident_bytes_and_quality(tiny_artifact):
    path, reference, _ = tiny_artifact
    with ArtifactReader(path) as reader:
        manifest = reader.manifest
    ids = torch.randint(4, 64, (4, 32))
    with torch.no_grad():
        ref_logits = reference(ids).logits
    floor, full = manifest.floor_bytes, manifest.full_bytes
    errors = []
    for budget in torch.linspace(floor, full, 7).long().tolist() + [full + 10**6]:
        model = bitstack.load(path, budget, device="cpu")
        resident = bitstack.memory_bytes(model)
        assert resident <= budget
        n = model.bitstack.loaded
        assert resident == manifest.prefix_bytes[n]
        # longest prefix: one more block would not fit
        assert n == len(manifest.stack) or manifest.prefix_bytes[n + 1] > budget
        with torch.no_grad():
            errors.append(float((model(ids).logits - ref_logits).norm()))
    assert errors[-1] < errors[0] / 5
    assert errors == sorted(errors, reverse=True)  # more memory, closer to the float model


def test_budget_below_floor_names_floor_and_full(tiny_artifact):
    path, _, _ = tiny_artifact
    with ArtifactReader(path) as reader:
        m = reader.manifest
    with pytest.raises(BudgetError, match=rf"floor of .*\({m.floor_bytes} bytes\).*\({m.full_bytes} bytes\)"):
        bitstack.load(path, m.floor_bytes - 1, device="cpu")


def test_loaded_weights_are_the_stored_blocks(tiny_artifact):
    path, _, _ = tiny_artifact
    model = bitstack.load(path, device="cpu")
    with ArtifactReader(path) as reader:
        for position, entry in enumerate(reader.manifest.stack):
            block = model.bitstack.modules[entry.tensor].blocks[entry.index]
            stored = reader.read_block(position)
            assert torch.equal(block.signs, stored.signs) and torch.equal(block.u, stored.u) and torch.equal(block.v, stored.v)


def test_load_reads_only_a_prefix(tiny_artifact, monkeypatch):
    path, _, _ = tiny_artifact
    with ArtifactReader(path) as reader:
        m = reader.manifest
    read = []
    original = ArtifactReader._read_run
    monkeypatch.setattr(ArtifactReader, "_read_run", lambda self, pos, bufs: read.extend(range(pos, pos + len(bufs))) or original(self, pos, bufs))
    model = bitstack.load(path, m.prefix_bytes[m.floor_blocks + 5], device="cpu")
    assert read == list(range(m.floor_blocks + 5)) == list(range(model.bitstack.loaded))


def test_shards_are_in_stack_order(tiny_artifact):
    path, _, _ = tiny_artifact
    with ArtifactReader(path) as reader:
        stack = reader.manifest.stack
        assert len(reader.manifest.shards) > 1  # shard_mb=0.05 forces several shards
    positions = [(b.shard, b.offset) for b in stack]
    assert positions == sorted(positions)


def test_generate_and_tokenizer_from_artifact(tiny_artifact):
    path, _, _ = tiny_artifact
    model = bitstack.load(path, device="cpu")
    tokenizer = bitstack.load_tokenizer(path)
    ids = tokenizer("the cat sat", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.input_ids.shape[1] + 5)


def test_artifact_has_no_pickle_and_json_manifest(tiny_artifact):
    path, _, _ = tiny_artifact
    names = sorted(p.name for p in path.iterdir())
    assert "manifest.json" in names and "base.safetensors" in names and "tokenizer" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    data = json.loads((path / "manifest.json").read_text())
    assert data["format"] == "bitstack" and data["format_version"] == 3
    assert data["prefix_bytes"][0] == data["base_bytes"]
    assert len(data["prefix_bytes"]) == len(data["stack"]) + 1


def test_dtype_override_changes_accounting_consistently(tiny_artifact):
    path, _, _ = tiny_artifact
    with ArtifactReader(path) as reader:
        m = reader.manifest
    model = bitstack.load(path, m.full_bytes, device="cpu", dtype="bfloat16")
    assert bitstack.memory_bytes(model) <= m.full_bytes
    assert model.bitstack.loaded == len(m.stack)  # bf16 base is smaller than the stored float32 one
