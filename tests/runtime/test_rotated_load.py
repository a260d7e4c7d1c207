"""Artifacts of rotated models (CompressConfig.rotate): load, full stack, budgets, evaluator."""

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

import bitstack
from bitstack.artifact.reader import ArtifactReader
from bitstack.config import CompressConfig
from bitstack.evaluation.stack_eval import StackEvaluator
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
