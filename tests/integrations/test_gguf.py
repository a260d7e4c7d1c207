"""bitstack export --format gguf: exact Q4_1/Q5_1 grids where a prefix is one, float16 elsewhere;
transformers' GGUF loader gives the model of bitstack.load at that budget."""

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

import bitstack
from bitstack.cli import main
from bitstack.config import CompressConfig
from bitstack.errors import BitstackError
from bitstack.integrations.export import ExportConfig, export
from bitstack.runtime.budget import prefix_bytes_at

gguf = pytest.importorskip("gguf")
from transformers import AutoModelForCausalLM  # noqa: E402


@pytest.fixture(scope="module")
def llama32(tmp_path_factory):
    """A tiny Llama whose widths are multiples of 32, planes on groups of 32 (Q4_1's blocks)."""
    path = tmp_path_factory.mktemp("g") / "l32.bstk"
    model = tiny_model("llama", hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    config = CompressConfig(nsamples=4, seqlen=16, niter=6, dtype="float32", batch_size=4, group_size=32)
    return bitstack.compress(model, path, config, tokenizer=tiny_tokenizer(), device="cpu", progress=False)


def _float32_reference(path, memory):
    manifest = bitstack.load(path, device="cpu").bitstack.manifest
    blocks = bitstack.load(path, memory, device="cpu").bitstack.loaded
    return bitstack.load(path, prefix_bytes_at(manifest, torch.float32)[blocks], device="cpu", dtype="float32")


def test_grids_are_exact_and_the_file_is_the_model(llama32, tmp_path):
    manifest = bitstack.load(llama32, device="cpu").bitstack.manifest
    budget = manifest.prefix_bytes[manifest.floor_blocks + len(manifest.weights) * 2]  # about 3 blocks a weight
    report = export(llama32, tmp_path / "m.gguf", ExportConfig(format="gguf", memory=str(budget)))
    types = {t["name"]: t["type"] for t in report["tensors"]}
    reference = _float32_reference(llama32, budget)
    assert report["blocks"] == reference.bitstack.loaded
    exact = [n for n, t in types.items() if t in ("Q4_1", "Q5_1")]
    assert exact  # o_proj keeps a run-time input scale (GQA): float16
    assert types["model.layers.0.self_attn.o_proj.weight"] == "F16"
    # an exact grid differs from Ŵ only by the float16 rounding of each block's minimum m
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    stored = {t.name: t for t in reader.tensors}
    for name in exact:
        module = reference.get_submodule(name.removesuffix(".weight"))
        weight = module.dense_weight(torch.float32)
        if ".q_proj." in name or ".k_proj." in name:
            continue  # rows permuted for llama.cpp; covered by the logits below
        tensor = stored[name.replace("model.layers.", "blk.").replace(".self_attn.q_proj", ".attn_q")
                        .replace(".self_attn.v_proj", ".attn_v").replace(".mlp.gate_proj", ".ffn_gate")
                        .replace(".mlp.up_proj", ".ffn_up").replace(".mlp.down_proj", ".ffn_down")]
        restored = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type)).reshape(weight.shape)
        bound = (weight.abs() + 4 * module.plane_step.float().repeat_interleave(32, 1)) * 2.0**-11
        assert bool(((restored - weight).abs() <= bound + 1e-7).all()), name
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    ids = torch.randint(4, 64, (2, 12))
    with torch.no_grad():
        ref, out = reference(ids).logits, loaded(ids).logits
    assert float((out - ref).norm() / ref.norm()) < 2e-3


def test_float16_elsewhere_and_the_report(tiny_artifact, tmp_path, capsys):
    path = tiny_artifact[0]  # groups of 16: no exact GGUF grid
    assert main(["export", str(path), "--format", "gguf", "-o", str(tmp_path / "t.gguf"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {t["type"] for t in report["tensors"]} == {"F16", "F32"}
    assert all(t["rel_error"] < 1e-3 for t in report["tensors"])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="t.gguf", dtype=torch.float32)
    reference = bitstack.load(path, device="cpu", dtype="float32")
    ids = torch.randint(4, 64, (2, 12))
    with torch.no_grad():
        ref, out = reference(ids).logits, loaded(ids).logits
    assert float((out - ref).norm() / ref.norm()) < 2e-3


def test_other_architectures_are_refused(family_artifact, tmp_path, capsys):
    family, path = family_artifact
    if family in ("llama", "mistral"):
        pytest.skip("written as GGUF")
    assert main(["export", str(path), "--format", "gguf", "-o", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert "llama-architecture" in err and err.count("\n") == 1 and not (tmp_path / "m.gguf").exists()


def test_bfloat16_gguf_is_refused(tiny_artifact, tmp_path):
    with pytest.raises(BitstackError, match="float16 or float32"):
        export(tiny_artifact[0], tmp_path / "m.gguf", ExportConfig(format="gguf", dtype="bfloat16"))
    assert not list(tmp_path.iterdir())


def test_pack_affine_matches_gguf_dequantize():
    from bitstack.integrations.gguf import pack_affine

    out, inp = 3, 64
    d = (torch.rand(out, inp // 32) + 0.1).to(torch.float16)
    m = torch.randn(out, inp // 32).to(torch.float16)
    for bits, qtype in ((4, gguf.GGMLQuantizationType.Q4_1), (5, gguf.GGMLQuantizationType.Q5_1)):
        q = torch.randint(0, 2**bits, (out, inp)).float()
        weight = m.float().repeat_interleave(32, 1) + d.float().repeat_interleave(32, 1) * q
        data = pack_affine(weight, d, m, bits)
        restored = gguf.quants.dequantize(data, qtype).reshape(out, inp)
        np.testing.assert_array_equal(restored, weight.numpy())


def test_a_planes_prefix_is_its_uniform_grid(llama32):
    """Codec.uniform_grid of planes: every prefix of J blocks is m + d·q with integer q in [0, 2^J)."""
    model = bitstack.load(llama32, device="cpu", dtype="float32")
    module = model.get_submodule("model.layers.0.mlp.up_proj")
    blocks = list(module.blocks)
    for j in range(1, 6):
        module.set_blocks(blocks[:j])
        d, m, bits = module.codec.uniform_grid(module, 32)
        assert bits == j
        weight = module.dense_weight(torch.float32)
        q = (weight - m.repeat_interleave(32, 1)) / d.repeat_interleave(32, 1)
        assert float((q - q.round()).abs().max()) < 1e-3 and q.round().min() >= 0 and q.round().max() <= 2**j - 1
    assert module.codec.uniform_grid(module, 48) is None  # runs that cross groups of 32
