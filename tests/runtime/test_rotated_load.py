"""Artifacts of rotated models (CompressConfig.rotate): load, full stack, budgets, evaluator, and
the manifest's rotation section."""

import json
import shutil

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

import bitstack
from bitstack.artifact.reader import ArtifactReader
from bitstack.config import CompressConfig
from bitstack.errors import ArtifactError
from bitstack.sorting.measure import StackEvaluator
from bitstack.models.rotation import INPUT_ROTATION, NORM_ROTATION
from bitstack.runtime.linear import BitStackLinear

PLANES = {"codec": "planes", "niter": 24, "group_size": 16, "clip": "none", "signs": "nearest"}


@pytest.mark.parametrize("family,extra,codec", [("llama", {}, PLANES), ("llama", {"tie_word_embeddings": True}, PLANES),
                                                ("qwen2", {}, {"codec": "avd", "niter": 40, "rank": 8})])
def test_full_stack_of_a_rotated_artifact_matches_the_float_model(family, extra, codec, tmp_path):
    model, reference = tiny_model(family, **extra), tiny_model(family, **extra)
    config = CompressConfig(nsamples=4, seqlen=16, dtype="float32", batch_size=4, rotate="hadamard", **codec)
    path = bitstack.compress(model, tmp_path / "a.bstk", config, tokenizer=tiny_tokenizer(), device="cpu", progress=False)
    loaded = bitstack.load(path, device="cpu")
    ids = torch.randint(4, 64, (2, 24))
    with torch.no_grad():
        ref, out = reference(ids).logits, loaded(ids).logits
    assert float((out - ref).norm() / ref.norm()) < 1e-3
    downs = [m for n, m in loaded.named_modules() if isinstance(m, BitStackLinear) and n.endswith("down_proj")]
    assert downs and all(getattr(m, INPUT_ROTATION) is not None for m in downs)
    assert all(m.input_scale is not None for m in downs)  # no row fold across the rotation
    assert getattr(loaded.base_model.norm, NORM_ROTATION).dtype == torch.int8
    if extra.get("tie_word_embeddings"):
        assert loaded.lm_head.weight is loaded.get_input_embeddings().weight


def test_rotated_artifact_budgets_and_evaluator(tmp_path):
    model, reference = tiny_model("llama", num_hidden_layers=3), tiny_model("llama", num_hidden_layers=3)
    config = CompressConfig(nsamples=4, seqlen=32, niter=6, dtype="float32", batch_size=2, rotate="hadamard")
    path = bitstack.compress(model, tmp_path / "r.bstk", config, tokenizer=tiny_tokenizer(), device="cpu", progress=False)
    with ArtifactReader(path) as reader:
        manifest = reader.manifest
    names = {t.name for t in manifest.base_tensors}
    assert "model.norm.rotation_signs" in names and "model.layers.0.mlp.down_proj.input_rotation" in names
    assert manifest.rotation == {"version": 1, "kind": "hadamard", "norms": ["model.norm"],
                                 "inputs": [f"model.layers.{i}.mlp.down_proj" for i in range(3)]}
    ids = torch.randint(4, 64, (2, 32))
    evaluator = StackEvaluator(path, device="cpu", batch_size=2)
    errors = []
    for budget in (manifest.floor_bytes, (manifest.floor_bytes + manifest.full_bytes) // 2, manifest.full_bytes):
        loaded = bitstack.load(path, budget, device="cpu")
        assert bitstack.memory_bytes(loaded) == manifest.prefix_bytes[loaded.bitstack.loaded] <= budget
        counts = [len(m.blocks) for m in loaded.modules() if isinstance(m, BitStackLinear)]
        evaluator.set_counts(counts)
        with torch.no_grad():
            out, fast, ref = loaded(ids).logits, evaluator.model(ids).logits, reference(ids).logits
        assert torch.allclose(out, fast, atol=1e-5, rtol=1e-5)
        errors.append(float((out - ref).norm()))
    assert errors == sorted(errors, reverse=True)


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    config = CompressConfig(nsamples=4, seqlen=16, niter=3, dtype="float32", batch_size=4, rotate="hadamard")
    return bitstack.compress(tiny_model("llama", num_hidden_layers=2), tmp_path_factory.mktemp("rot") / "r.bstk", config,
                             tokenizer=tiny_tokenizer(), device="cpu", progress=False)


def _edited(path, tmp_path, edit):
    copy = tmp_path / "edited.bstk"
    shutil.copytree(path, copy)
    data = json.loads((copy / "manifest.json").read_text())
    edit(data)
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["rotation"].update(version=2), "rotation has version 2, this bitstack reads 1"),
    (lambda d: d["rotation"].update(kind="walsh"), "kind must be one of hadamard"),
    (lambda d: d["rotation"]["norms"].append("model.layers.0.input_layernorm"), "needs the base buffer model.layers.0"),
    (lambda d: d["rotation"]["inputs"].append("model.layers.0.mlp.up_proj"), "needs the base buffer model.layers.0.mlp.up"),
    (lambda d: d["rotation"]["inputs"].append("model.embed_tokens"), "is not a decomposed weight"),
    (lambda d: d["rotation"].pop("norms"), "exactly version, kind, inputs, norms"),
])
def test_a_bad_rotation_section_is_refused(rotated, tmp_path, edit, message):
    with pytest.raises(ArtifactError, match=message):
        bitstack.load(_edited(rotated, tmp_path, edit), device="cpu", verify=False)


def test_a_rotated_artifact_without_its_section_is_refused(rotated, tmp_path):
    """Without the section the rotation buffers have no module to go to: refused, never ignored."""
    with pytest.raises(ArtifactError, match="which the model does not have"):
        bitstack.load(_edited(rotated, tmp_path, lambda d: d.pop("rotation")), device="cpu", verify=False)


def test_an_unrotated_artifact_has_no_rotation_section(tmp_path):
    config = CompressConfig(nsamples=4, seqlen=16, niter=2, dtype="float32", batch_size=4)
    path = bitstack.compress(tiny_model("llama", num_hidden_layers=1), tmp_path / "u.bstk", config,
                             tokenizer=tiny_tokenizer(), device="cpu", progress=False)
    assert "rotation" not in json.loads((path / "manifest.json").read_text())
    with ArtifactReader(path) as reader:
        assert reader.manifest.rotation is None
