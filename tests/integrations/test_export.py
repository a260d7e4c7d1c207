"""bitstack export: a plain float transformers folder at a budget, the artifact as a transformers
folder; the command and the Python function agree."""

import json

import pytest
import torch

import bitstack
from bitstack.cli import main
from bitstack.errors import BitstackError
from bitstack.integrations.export import ExportConfig, export

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11], [2, 12, 13, 14, 15, 16, 17, 18]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_hf_export_is_the_model_at_that_budget_on_every_family(family_artifact, tmp_path):
    family, path = family_artifact
    manifest = bitstack.load(path, device="cpu").bitstack.manifest
    budget = (manifest.floor_bytes + manifest.full_bytes) // 2
    report = export(path, tmp_path / "dense", ExportConfig(format="hf", memory=str(budget)))
    reference = bitstack.load(path, budget, device="cpu")
    assert report["blocks"] == reference.bitstack.loaded and report["resident_bytes"] <= budget
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")  # plain transformers, no quantizer
    assert not getattr(dense, "is_quantized", False)
    ref = _logits(reference)
    assert float((_logits(dense) - ref).norm() / ref.norm()) < 1e-5  # float32: W = Ŵ·diag(s) up to rounding


def test_hf_export_in_bfloat16_and_tokenizer(tiny_artifact, tmp_path):
    path = tiny_artifact[0]
    export(path, tmp_path / "bf16", ExportConfig(format="hf", dtype="bfloat16"))
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert dense.dtype == torch.bfloat16
    reference = bitstack.load(path, device="cpu", dtype="bfloat16")
    ref = _logits(reference).float()
    assert float((_logits(dense).float() - ref).norm() / ref.norm()) < 2e-2
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "bf16")
    assert tokenizer("the cat").input_ids == bitstack.load_tokenizer(path)("the cat").input_ids


def test_bitstack_hf_export_loads_with_from_pretrained(tiny_artifact, tmp_path):
    pytest.importorskip("bitstack.integrations.hf")
    path = tiny_artifact[0]
    report = export(path, tmp_path / "art", ExportConfig(format="bitstack-hf", memory="50kB"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "art")
    assert model.bitstack.loaded == report["blocks"] == bitstack.load(path, "50kB", device="cpu").bitstack.loaded
    assert bitstack.memory_bytes(model) == report["resident_bytes"]


def test_cli_and_function_agree(tiny_artifact, tmp_path, capsys):
    path = tiny_artifact[0]
    assert main(["export", str(path), "-o", str(tmp_path / "cli"), "--memory", "50kB", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = export(path, tmp_path / "py", ExportConfig(memory="50kB"))
    assert {k: v for k, v in printed.items() if k != "output"} == {k: v for k, v in report.items() if k != "output"}
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == (tmp_path / "py" / "model.safetensors").read_bytes()


def test_bad_exports_are_one_line_errors(tiny_artifact, tmp_path, capsys):
    path = tiny_artifact[0]
    (tmp_path / "taken").mkdir()
    for argv in (["-o", str(tmp_path / "taken")],  # exists without --overwrite
                 ["-o", str(tmp_path / "no" / "such" / "dir")],
                 ["-o", str(tmp_path / "x"), "--memory", "1kB"],  # below the floor
                 ["-o", str(tmp_path / "x"), "--memory", "lots"]):
        assert main(["export", str(path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bitstack: error: ") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(BitstackError):
        ExportConfig(format="onnx")
    with pytest.raises(BitstackError, match="overwrite"):
        export(path, tmp_path / "taken", ExportConfig(overwrite=False))

