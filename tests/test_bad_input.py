"""Nonsense given to the public functions and the CLI: a BitstackError (CLI: one line, exit 2), nothing written.

tests/test_cli.py holds the first CLI cases (sizes, floor, missing paths, unsupported models); this
file adds the public Python functions and the remaining CLI commands and options.
"""

import json
import math
import shutil

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

import bitstack
from bitstack.cli import main
from bitstack.config import CompressConfig
from bitstack.errors import ArtifactError, BitstackError, BudgetError, InputError

SMALL = CompressConfig(nsamples=2, seqlen=16, niter=2, rank=2, dtype="float32", batch_size=2)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("size", [-1, -0.5, "-5MB", "lots", "5 XB", "", "1e400", "nan", float("nan"), float("inf"),
                                  None, True, [1], {"MB": 1}, b"120MB"])
def test_parse_memory_rejects(size):
    with pytest.raises(InputError):
        bitstack.parse_memory(size)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"memory": "-1MB"}, InputError, "non-negative"),
    ({"memory": "a lot"}, InputError, "cannot parse"),
    ({"memory": 10}, BudgetError, "floor"),
    ({"device": "gpu9"}, InputError, "cannot parse device"),
    ({"device": "meta"}, InputError, "not supported"),
    ({"device": 3.5}, InputError, "device must be"),
    ({"dtype": "int8"}, InputError, "dtype must be"),
    ({"dtype": torch.int8}, InputError, "dtype must be"),
])
def test_load_rejects_bad_arguments(tiny_artifact, kwargs, error, message):
    path, _, _ = tiny_artifact
    with pytest.raises(error, match=message):
        bitstack.load(path, **{"device": "cpu", **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_on_missing_gpu(tiny_artifact):
    with pytest.raises(InputError, match="no usable CUDA GPU"):
        bitstack.load(tiny_artifact[0], device="cuda:0")


@pytest.mark.parametrize("function", ["load", "load_tokenizer"])
def test_loading_nonsense_paths(function, tmp_path):
    call = getattr(bitstack, function)
    for path in (tmp_path / "missing.bstk", tmp_path, None, 42):
        with pytest.raises(BitstackError):
            call(path)
    (tmp_path / "file.bstk").write_text("hello")
    with pytest.raises(BitstackError, match="not a bitstack artifact"):
        call(tmp_path / "file.bstk")


def test_load_tokenizer_of_artifact_without_one(tiny_artifact, tmp_path):
    copy = tmp_path / "notok.bstk"
    shutil.copytree(tiny_artifact[0], copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["tokenizer"] = None
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="has no tokenizer"):
        bitstack.load_tokenizer(copy)


@pytest.mark.parametrize("case", ["config", "output", "model", "missing", "not-a-model", "exists", "parent", "device",
                                  "calib-missing", "calib-short", "calib-binary", "no-tokenizer", "nan"])
def test_compress_rejects_and_writes_nothing(case, model_dir, tmp_path):
    out = tmp_path / "out.bstk"
    model, config, kwargs = str(model_dir), SMALL, {"device": "cpu", "progress": False}
    if case == "config":
        config = {"nsamples": 2}
    elif case == "output":
        out = None
    elif case == "model":
        model = 42
    elif case == "missing":
        model = str(tmp_path / "no-such-model")
    elif case == "not-a-model":
        (tmp_path / "folder").mkdir()
        model = str(tmp_path / "folder")
    elif case == "exists":
        out.mkdir()
    elif case == "parent":
        out = tmp_path / "a" / "b" / "out.bstk"
    elif case == "device":
        kwargs["device"] = "cuda:99"
    elif case == "calib-missing":
        config = CompressConfig(**{**SMALL.to_dict(), "calib": str(tmp_path / "nope.txt")})
    elif case == "calib-short":
        (tmp_path / "short.txt").write_text("the cat")
        config = CompressConfig(**{**SMALL.to_dict(), "calib": str(tmp_path / "short.txt")})
    elif case == "calib-binary":
        (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81" * 100)
        config = CompressConfig(**{**SMALL.to_dict(), "calib": str(tmp_path / "bin.txt")})
    elif case == "no-tokenizer":
        model = tiny_model("llama")
    elif case == "nan":
        model = tiny_model("llama")
        with torch.no_grad():
            model.lm_head.weight[0, 0] = math.inf
        kwargs["tokenizer"] = tiny_tokenizer()
    before = _listing(tmp_path)
    with pytest.raises(BitstackError):
        bitstack.compress(model, out, config, **kwargs)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "8"])
def test_compress_config_rejects(value):
    with pytest.raises(InputError):
        CompressConfig(nsamples=value)
    with pytest.raises(InputError):
        CompressConfig(shard_mb=float("inf") if value == 0 else -1.0)


def test_resize_rejects_bad_sizes(tiny_artifact):
    path, _, _ = tiny_artifact
    model = bitstack.load(path, device="cpu")
    for size in ("-5MB", "lots", 10):
        with pytest.raises(BitstackError):
            bitstack.resize(model, size)


@pytest.mark.parametrize("argv,message", [
    (["eval", "{art}", "--device", "gpu9", "--ppl", "{text}"], "cannot parse device"),
    (["eval", "{art}", "--seqlen", "0", "--ppl", "{text}"], "--seqlen must be a positive number"),
    (["eval", "{art}", "--max-windows", "-2", "--ppl", "{text}"], "--max-windows must be a positive"),
    (["eval", "{art}", "--batch-size", "0", "--ppl", "{text}"], "--batch-size must be a positive"),
    (["eval", "{art}", "--ppl", "{binary}"], "not UTF-8"),
    (["eval", "{art}", "--tasks", "nonsense", "--device", "cpu"], ""),
    (["generate", "{art}", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be a positive"),
    (["generate", "{art}", "--prompt", "hi", "--temperature", "-1"], "--temperature must be a non-negative"),
    (["generate", "{art}", "--prompt", "hi", "--temperature", "nan"], "--temperature must be a non-negative"),
    (["generate", "{art}", "--prompt", "  ", "--device", "cpu"], "--prompt is empty"),
    (["generate", "{tmp}/nope.bstk", "--prompt", "hi"], "does not exist"),
    (["generate", "{art}", "--prompt", "hi", "--memory", "12 parsecs"], "unknown unit"),
    (["compress", "{model}", "-o", "{tmp}/x", "--shard-mb", "inf"], "shard_mb must be a positive"),
    (["compress", "{model}", "-o", "{tmp}/x", "--nsamples", "0"], "nsamples must be a positive"),
    (["compress", "{model}", "-o", "{tmp}/x", "--device", "cuda:7"], "cuda:7"),
    (["compress", "{model}", "-o", "{tmp}/no/x"], "does not exist"),
    (["compress", "{model}", "-o", "{tmp}/x", "--calib", "{binary}"], "not UTF-8"),
    (["compress", "{text}", "-o", "{tmp}/x"], "is a file, not a model folder"),
    (["demo", "--ppl", "{tmp}/nope.txt", "--output", "{tmp}/demo.bstk"], "does not exist"),
    (["demo", "--device", "tpu", "--output", "{tmp}/demo.bstk"], "device"),
    (["info", "{text}"], "not a bitstack artifact"),
])
def test_cli_bad_input_one_line_exit_2(argv, message, tiny_artifact, model_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat " * 20)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 64)
    subs = {"{art}": str(tiny_artifact[0]), "{tmp}": str(tmp_path), "{model}": str(model_dir), "{text}": str(text),
            "{binary}": str(binary)}
    for key, value in subs.items():
        argv = [a.replace(key, value) for a in argv]
    before = _listing(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("bitstack: error: ") and message in last
    assert _listing(tmp_path) == before


def test_corrupted_artifact_through_the_cli(tiny_artifact, tmp_path, capsys):
    copy = tmp_path / "bad.bstk"
    shutil.copytree(tiny_artifact[0], copy)
    (copy / "base.safetensors").write_bytes(b"\0" * 16)
    code = main(["generate", str(copy), "--prompt", "the cat", "--device", "cpu"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "base.safetensors" in last


def test_artifact_errors_are_library_errors():
    assert issubclass(ArtifactError, BitstackError) and issubclass(InputError, ValueError)
