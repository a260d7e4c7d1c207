import json
import shutil

import pytest

import bitstack
from bitstack.artifact.manifest import Manifest
from bitstack.errors import ArtifactError, InputError


def _data(path):
    return json.loads((path / "manifest.json").read_text())


def test_roundtrip(tiny_artifact):
    path, _, _ = tiny_artifact
    data = _data(path)
    manifest = Manifest.from_dict(data)
    assert json.loads(manifest.to_json()) == data


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(format_version=99), "newer than this bitstack"),
    (lambda d: d.pop("stack"), "missing field"),
    (lambda d: d.update(surprise=1), "unknown field"),
    (lambda d: d["stack"][0].update(index=3), "expected block 0"),
    (lambda d: d["stack"][1].update(bytes=1), "bytes"),
    (lambda d: d["prefix_bytes"].__setitem__(-1, 5), "prefix_bytes"),
    (lambda d: d["shards"][0].update(file="../../etc/passwd"), "unsafe"),
    (lambda d: d.update(format="gguf"), "not a bitstack manifest"),
    (lambda d: d["weights"][0].update(block_bytes=7), "block_bytes"),
    (lambda d: d["weights"][0]["params"].update(group_size="4"), "type"),
])
def test_bad_manifests_are_rejected(tiny_artifact, mutate, message):
    path, _, _ = tiny_artifact
    data = _data(path)
    mutate(data)
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_dict(data)


def test_corrupted_block_is_named(tiny_artifact, tmp_path):
    path, _, _ = tiny_artifact
    copy = tmp_path / "c.bstk"
    shutil.copytree(path, copy)
    shard = copy / "blocks-00000.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"blocks-00000.safetensors \(block .* of .*\) is corrupted"):
        bitstack.load(copy, device="cpu")


def test_truncated_shard_is_rejected(tiny_artifact, tmp_path):
    path, _, _ = tiny_artifact
    copy = tmp_path / "t.bstk"
    shutil.copytree(path, copy)
    shard = copy / "blocks-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="truncated"):
        bitstack.load(copy, device="cpu")


def test_missing_path_and_non_artifact(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        bitstack.load(tmp_path / "nope", device="cpu")
    with pytest.raises(InputError, match="not a bitstack artifact"):
        bitstack.load(tmp_path, device="cpu")
