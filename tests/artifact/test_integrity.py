"""Integrity: every file read from an artifact is checked; damage is reported naming the file (and block)."""

import hashlib
import json
import shutil

import pytest

import bitstack
from bitstack.artifact.manifest import Manifest
from bitstack.artifact.reader import ArtifactReader
from bitstack.errors import ArtifactError


@pytest.fixture
def copy(tiny_artifact, tmp_path):
    target = tmp_path / "copy.bstk"
    shutil.copytree(tiny_artifact[0], target)
    return target


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path, data):
    (path / "manifest.json").write_text(json.dumps(data))


def _resign_tokenizer(path, data):
    folder = path / data["tokenizer"]["dir"]
    data["tokenizer"]["files"] = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                                  for p in sorted(folder.rglob("*")) if p.is_file()}
    _write_manifest(path, data)


def _read_all(path):
    with ArtifactReader(path) as reader:
        reader.read_base()
        reader.read_blocks(0, len(reader.manifest.stack))
        reader.load_tokenizer()


def test_every_part_is_verified_when_read(copy):
    """Flip one byte anywhere in the data of any file: reading that part fails, naming the file."""
    files = sorted(p for p in copy.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert any(p.name.startswith("blocks-") for p in files) and any(p.parent.name == "tokenizer" for p in files)
    for file in files:
        original = file.read_bytes()
        for position in (len(original) - 1, len(original) // 2):
            raw = bytearray(original)
            raw[position] ^= 0x01
            file.write_bytes(bytes(raw))
            with pytest.raises(ArtifactError) as info:
                _read_all(copy)
            assert file.name in str(info.value)
        file.write_bytes(original)
    _read_all(copy)  # intact again


def test_missing_shard_names_file_and_block(copy):
    last = sorted(copy.glob("blocks-*.safetensors"))[-1]
    last.unlink()
    with pytest.raises(ArtifactError, match=rf"{last.name} is missing \(reading block \d+ of model\.layers\.\d+\.\S+\)"):
        bitstack.load(copy, device="cpu")


def test_truncated_shard_names_file(copy):
    shard = sorted(copy.glob("blocks-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(ArtifactError, match=rf"{shard.name} is truncated.*\(reading block"):
        bitstack.load(copy, device="cpu")


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped", "folder"])
def test_damaged_base_is_named(copy, damage):
    base = copy / "base.safetensors"
    raw = base.read_bytes()
    if damage == "missing":
        base.unlink()
    elif damage == "truncated":
        base.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":
        base.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0x80]))
    else:
        base.unlink()
        base.mkdir()
    with pytest.raises(ArtifactError, match="base.safetensors"):
        bitstack.load(copy, device="cpu")


@pytest.mark.parametrize("damage", ["missing", "flipped", "unlisted"])
def test_damaged_tokenizer_is_named(copy, damage):
    file = copy / "tokenizer" / "tokenizer.json"
    if damage == "missing":
        file.unlink()
    elif damage == "flipped":
        file.write_bytes(file.read_bytes().replace(b"cat", b"cot"))
    else:
        (copy / "tokenizer" / "special_tokens_map.json").write_text("{}")
    with pytest.raises(ArtifactError, match="special_tokens_map.json" if damage == "unlisted" else "tokenizer.json"):
        bitstack.load_tokenizer(copy)


def test_consistently_forged_tokenizer_fails_cleanly(copy):
    (copy / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    _resign_tokenizer(copy, _manifest(copy))
    with pytest.raises(ArtifactError, match="cannot be loaded"):
        bitstack.load_tokenizer(copy)


CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\nfrom transformers import LlamaForCausalLM as Evil\n"


def test_auto_map_in_model_config_runs_no_code(copy, tmp_path):
    marker = tmp_path / "ran.txt"
    (copy / "evil.py").write_text(CODE.format(marker=str(marker)))
    data = _manifest(copy)
    data["model"]["config"]["auto_map"] = {"AutoConfig": "evil.Evil", "AutoModelForCausalLM": "evil.Evil"}
    data["model"]["config"]["_name_or_path"] = str(copy)
    _write_manifest(copy, data)
    model = bitstack.load(copy, device="cpu")
    assert type(model).__module__.startswith("transformers.models.llama")  # the built-in class, auto_map ignored
    assert not marker.exists()


def test_auto_map_in_tokenizer_config_runs_no_code(copy, tmp_path):
    marker = tmp_path / "ran.txt"
    folder = copy / "tokenizer"
    (folder / "evil.py").write_text(CODE.format(marker=str(marker)))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.Evil", "evil.Evil"]}
    config["tokenizer_class"] = "Evil"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    _resign_tokenizer(copy, _manifest(copy))  # even with matching checksums
    with pytest.raises(ArtifactError, match="custom code"):
        bitstack.load_tokenizer(copy)
    assert not marker.exists()


def _set(path, value):
    def mutate(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _drop(path):
    def mutate(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


@pytest.mark.parametrize("mutate,message", [
    (_set(("weights", 0, "surprise"), 1), r"weights\[0\] has unknown field"),
    (_drop(("weights", 1, "params")), r"weights\[1\] is missing field"),
    (_set(("stack", 5, "extra"), "x"), r"stack\[5\] has unknown field"),
    (_drop(("stack", 2, "shard")), r"stack\[2\] is missing field"),
    (_set(("shards", 0, "extra"), 0), r"shards\[0\] has unknown field"),
    (_drop(("shards", 0, "sha256")), r"shards\[0\] is missing field"),
    (_set(("base", "extra"), 0), "base has unknown field"),
    (_drop(("base", "aliases")), "base is missing field"),
    (_set(("base", "tensors", 0, "extra"), 0), r"base.tensors\[0\] must have exactly"),
    (_set(("tokenizer", "extra"), 0), "tokenizer has unknown field"),
    (_drop(("tokenizer", "files")), "tokenizer is missing field"),
    (_set(("model", "extra"), 0), "model has unknown field"),
    (_drop(("model", "generation_config")), "model is missing field"),
    (_set(("model", "source"), 5), "model.source must be a string"),
    (_set(("model", "generation_config"), [1]), "generation_config must be an object"),
    (_set(("compression", "dtype"), ["bfloat16"]), "compression.dtype"),
    (_set(("base", "tensors", 0, "dtype"), ["F32"]), "bad name, kind or dtype"),
    (_set(("base", "aliases"), {"lm_head.weight": ["x"]}), "base alias"),
    (_set(("base", "sha256"), "nothex"), "malformed checksum"),
    (_set(("tokenizer", "files", "tokenizer.json"), 5), "malformed checksum"),
    (_set(("base_bytes",), 1), "base_bytes is 1"),
    (_set(("floor_blocks",), 2), "floor_blocks must be the number of weights"),
    (_set(("stack", 0, "offset"), -1), "points outside its shard"),
    (_set(("shards", 0, "file"), "/abs/path"), "unsafe file name"),
    (_set(("tokenizer", "dir"), "../x"), "unsafe file name"),
    (_set(("format_version",), 4), "newer than this bitstack reads"),
    (_set(("format_version",), "1"), "integer format_version"),
])
def test_nested_records_are_strict(tiny_artifact, mutate, message):
    data = _manifest(tiny_artifact[0])
    mutate(data)
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_dict(data)


def test_base_tensors_listed_twice(tiny_artifact):
    data = _manifest(tiny_artifact[0])
    data["base"]["tensors"].append(dict(data["base"]["tensors"][0]))
    with pytest.raises(ArtifactError, match="listed twice"):
        Manifest.from_dict(data)


@pytest.mark.parametrize("text", [b"\xff\xfe", b"[" * 100000, b'{"format": "bitstack", "format_version": 1' + b"9" * 5000 + b"}",
                                  b"", b"null"])
def test_unparseable_manifests(text):
    with pytest.raises(ArtifactError):
        Manifest.from_json(text)
