"""transformers' from_pretrained of an artifact folder (the registered "bitstack" quantization
method) and save_pretrained of a loaded model."""

import json
import shutil

import pytest
import torch

import bitstack
from bitstack.errors import BitstackError, BudgetError
from bitstack.runtime.save import CONFIG_NAME, write_artifact_folder

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("bitstack.integrations.hf")
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def _folder(path, tmp_path, memory=None):
    """The artifact at ``path`` as a transformers folder (a copy: the original is never changed)."""
    with bitstack.load(path, None, device="cpu").bitstack.reader as reader:
        return write_artifact_folder(path, tmp_path / "folder", reader.manifest, memory=memory)


def test_from_pretrained_matches_bitstack_load_on_every_family(family_artifact, tmp_path):
    family, path = family_artifact
    full = bitstack.load(path, device="cpu")
    manifest = full.bitstack.manifest
    budget = (manifest.floor_bytes + manifest.full_bytes) // 2
    folder = _folder(path, tmp_path, memory=budget)
    model = AutoModelForCausalLM.from_pretrained(folder)
    reference = bitstack.load(path, budget, device="cpu")
    assert model.bitstack.loaded == reference.bitstack.loaded < len(manifest.stack)
    assert bitstack.memory_bytes(model) == bitstack.memory_bytes(reference) <= budget
    assert torch.equal(_logits(model), _logits(reference))
    # the load went through the quantizer: transformers knows the model is quantized by bitstack
    assert model.config.quantization_config.quant_method == "bitstack" and model.is_quantized


def test_config_json_says_what_transformers_needs(tiny_artifact, tmp_path):
    folder = _folder(tiny_artifact[0], tmp_path, memory="50kB")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["quantization_config"] == {"quant_method": "bitstack", "memory": "50kB", "verify": True}
    assert config["transformers_weights"] == "base.safetensors" and "auto_map" not in config
    assert (folder / "tokenizer.json").is_file()  # AutoTokenizer and pipeline read the top level
    assert bitstack.load(folder, "50kB", device="cpu").bitstack.loaded > 0  # still an artifact


def test_budget_override_dtype_and_resize(tiny_artifact, tmp_path):
    path = tiny_artifact[0]
    folder = _folder(path, tmp_path)
    full = AutoModelForCausalLM.from_pretrained(folder)
    manifest = full.bitstack.manifest
    assert full.bitstack.loaded == len(manifest.stack)
    floor = AutoModelForCausalLM.from_pretrained(folder, config=hf.folder_config(folder, memory=manifest.floor_bytes))
    assert floor.bitstack.loaded == manifest.floor_blocks
    with pytest.raises(BudgetError):
        AutoModelForCausalLM.from_pretrained(folder, config=hf.folder_config(folder, memory=manifest.floor_bytes - 1))
    half = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.model.layers[0].self_attn.q_proj.plane_step.dtype == torch.float16
    assert bitstack.memory_bytes(half) == bitstack.load(path, device="cpu", dtype="bfloat16").bitstack.resident_bytes
    full.bitstack.resize(manifest.floor_bytes)
    assert torch.equal(_logits(full), _logits(floor))


def test_pipeline_and_tokenizer(tiny_artifact, tmp_path):
    folder = _folder(tiny_artifact[0], tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("the cat").input_ids == bitstack.load_tokenizer(tiny_artifact[0])("the cat").input_ids
    generate = pipeline("text-generation", model=str(folder), device="cpu")
    out = generate("the cat sat", max_new_tokens=4, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    model = bitstack.load(tiny_artifact[0], device="cpu")
    ids = tokenizer("the cat sat", return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=4, do_sample=False)[0]
    assert list(out) == expected.tolist() and len(out) == ids.shape[1] + 4


def test_save_pretrained_round_trips(tiny_artifact, tmp_path):
    path = tiny_artifact[0]
    model = bitstack.load(path, device="cpu")
    manifest = model.bitstack.manifest
    model.bitstack.resize((manifest.floor_bytes + manifest.full_bytes) // 2)
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert again.bitstack.loaded == model.bitstack.loaded
    assert torch.equal(_logits(again), _logits(model))
    # a from_pretrained model saves the same way, and the copy is a whole artifact (any budget)
    again.save_pretrained(tmp_path / "saved2")
    assert bitstack.load(tmp_path / "saved2", device="cpu").bitstack.loaded == len(manifest.stack)
    assert (tmp_path / "saved2" / "blocks-00000.safetensors").read_bytes() == (path / "blocks-00000.safetensors").read_bytes()


def test_save_pretrained_never_writes_a_broken_folder(tiny_artifact, tmp_path):
    model = bitstack.load(tiny_artifact[0], device="cpu")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(BitstackError, match="only an artifact folder can be replaced"):
        model.save_pretrained(tmp_path / "taken")
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["notes.txt"]
    with pytest.raises(BitstackError, match="takes no other option"):
        model.save_pretrained(tmp_path / "x", max_shard_size="1MB")
    with pytest.raises(BitstackError, match="being copied"):
        model.save_pretrained(tiny_artifact[0])
    assert not (tmp_path / "x").exists()


def test_save_pretrained_refuses_a_corrupted_source(tiny_artifact, tmp_path):
    source = tmp_path / "src.bstk"
    shutil.copytree(tiny_artifact[0], source)
    model = bitstack.load(source, device="cpu")
    shard = source / "blocks-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BitstackError, match="corrupted"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_plain_model_cannot_be_quantized_on_the_fly(tiny_model_dir):
    with pytest.raises(BitstackError, match="artifact folders only"):
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=hf.BitstackConfig(memory="1MB"))


def test_a_device_map_across_devices_is_refused(tiny_artifact, tmp_path):
    folder = _folder(tiny_artifact[0], tmp_path)
    with pytest.raises(BitstackError, match="one device"):
        AutoModelForCausalLM.from_pretrained(folder, device_map={"model.embed_tokens": "cpu", "model.layers": "meta",
                                                                 "model.norm": "cpu", "lm_head": "cpu"})


def test_config_keys_are_checked():
    assert hf.BitstackConfig.from_dict({"quant_method": "bitstack", "memory": "1MB"}).budget == 1_000_000
    with pytest.raises(BitstackError, match="memroy"):
        hf.BitstackConfig.from_dict({"quant_method": "bitstack", "memroy": "1MB"})
    with pytest.raises(BitstackError):
        hf.BitstackConfig(memory="lots")
