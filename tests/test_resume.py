"""Resumable compression: an interrupted run, restarted, writes the same bytes as an uninterrupted one."""

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_models import WORDS, tiny_model, tiny_tokenizer

import bitstack
import bitstack.compressor as compressor
from bitstack.config import CompressConfig
from bitstack.errors import InputError

CONFIG = CompressConfig(nsamples=4, seqlen=32, niter=4, rank=4, dtype="float32", batch_size=2, shard_mb=0.02)
LAYERS = 4


def files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run(out: Path, config: CompressConfig = CONFIG, **kwargs) -> Path:
    model = tiny_model("llama", num_hidden_layers=LAYERS)
    return bitstack.compress(model, out, config, tokenizer=tiny_tokenizer(), device="cpu", progress=False, **kwargs)


class Killed(BaseException):
    """Stands in for SIGKILL / Ctrl-C: not an Exception, so the work is kept."""


def interrupt_at_layer(monkeypatch, layer: int) -> None:
    real = compressor._compress_layer
    calls = []

    def failing(*args, **kwargs):
        if len(calls) == layer:
            raise Killed
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(compressor, "_compress_layer", failing)


def interrupted_run(monkeypatch, out: Path, layer: int) -> None:
    """A run of ``out`` that dies when it starts decomposing layer ``layer``."""
    with monkeypatch.context() as patch:
        interrupt_at_layer(patch, layer)
        with pytest.raises(Killed):
            run(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = run(tmp_path_factory.mktemp("ref") / "ref.bstk")
    return files(out)


@pytest.mark.parametrize("layer", [0, 2])
def test_interrupted_layer_resumes_bitwise(layer, reference, tmp_path, monkeypatch):
    out = tmp_path / "a.bstk"
    interrupted_run(monkeypatch, out, layer)
    work = tmp_path / "a.bstk.partial" / "work"
    assert sorted(p.name for p in work.glob("layer-*")) == [f"layer-{i:05d}.safetensors" for i in range(layer)]
    assert (work / "samples.safetensors").is_file() and not out.exists()
    run(out)
    assert files(out) == reference
    assert not (tmp_path / "a.bstk.partial").exists()


def test_interrupted_final_stage_resumes_bitwise(reference, tmp_path, monkeypatch):
    out = tmp_path / "b.bstk"

    def dying_tokenizer(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(compressor, "write_tokenizer", dying_tokenizer)
        with pytest.raises(Killed):
            run(out)
    partial = tmp_path / "b.bstk.partial"
    assert (partial / "base.safetensors").is_file() and list(partial.glob("blocks-*"))
    (partial / ".blocks-00099.safetensors.tmp-1").write_bytes(b"left by a kill")
    run(out)
    assert files(out) == reference


def test_corrupted_work_file_is_recomputed(reference, tmp_path, monkeypatch):
    out = tmp_path / "c.bstk"
    interrupted_run(monkeypatch, out, 3)
    layer1 = tmp_path / "c.bstk.partial" / "work" / "layer-00001.safetensors"
    raw = bytearray(layer1.read_bytes())
    raw[-3] ^= 0x10
    layer1.write_bytes(bytes(raw))
    run(out)
    assert files(out) == reference


def test_other_settings_do_not_resume(tmp_path, monkeypatch):
    out = tmp_path / "d.bstk"
    interrupted_run(monkeypatch, out, 2)
    partial = tmp_path / "d.bstk.partial"
    before = files(partial)
    other = CompressConfig(**{**CONFIG.to_dict(), "niter": 3})
    with pytest.raises(InputError, match=r"niter 4 -> 3.*rerun that command to resume it, or pass --overwrite"):
        run(out, other)
    assert files(partial) == before  # the other run's work is untouched
    run(out, other, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["compression"]["niter"] == 3
    assert not partial.exists()


def test_a_running_compression_is_not_disturbed(tmp_path, monkeypatch):
    out = tmp_path / "e.bstk"
    interrupted_run(monkeypatch, out, 1)
    with open(tmp_path / "e.bstk.partial" / "work" / "lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process would
        with pytest.raises(InputError, match="another bitstack compression is writing"):
            run(out, overwrite=True)
    assert (tmp_path / "e.bstk.partial" / "work" / "layer-00000.safetensors").is_file()


def test_bad_input_midway_leaves_nothing(tmp_path, monkeypatch):
    real = compressor._compress_layer

    def failing(layer, linears, inputs, model, config, prefix, first, *rest):
        if prefix.endswith(".2"):
            raise InputError(f"{prefix} is bad")
        return real(layer, linears, inputs, model, config, prefix, first, *rest)

    monkeypatch.setattr(compressor, "_compress_layer", failing)
    with pytest.raises(InputError, match=r"model\.layers\.2 is bad"):
        run(tmp_path / "f.bstk")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_weights_fail_fast(tmp_path):
    model = tiny_model("llama", num_hidden_layers=LAYERS)
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match=r"model\.layers\.2\.mlp\.down_proj\.weight has NaN"):
        bitstack.compress(model, tmp_path / "f.bstk", CONFIG, tokenizer=tiny_tokenizer(), device="cpu", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_without_progress_is_replaced(reference, tmp_path):
    (tmp_path / "g.bstk.partial" / "work").mkdir(parents=True)
    (tmp_path / "g.bstk.partial" / "junk").write_text("x")
    run(tmp_path / "g.bstk")
    assert files(tmp_path / "g.bstk") == reference


def test_manifest_is_deterministic(reference):
    manifest = json.loads(reference["manifest.json"])
    assert "seconds" not in manifest["compression"]


# ---- real SIGKILLs of the CLI --------------------------------------------------------------
def _cli_args(model_dir: Path, calib: Path, out: Path) -> list[str]:
    return ["compress", str(model_dir), "-o", str(out), "--calib", str(calib), "--nsamples", "8", "--seqlen", "32",
            "--niter", "6", "--rank", "4", "--dtype", "float32", "--batch-size", "4", "--shard-mb", "0.05",
            "--device", "cpu", "--quiet"]


def test_sigkilled_cli_runs_resume_bitwise(tmp_path):
    """Two SIGKILLs at random moments of the working phase, then a run to the end."""
    rng = random.Random(int(os.environ.get("BITSTACK_KILL_SEED", "0")))
    model_dir = tmp_path / "model"
    tiny_model("llama", num_hidden_layers=6, hidden_size=64, intermediate_size=160).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(random.Random(0).choice(WORDS) for _ in range(2000)))
    out = tmp_path / "k.bstk"
    command = [sys.executable, "-m", "bitstack.cli", *_cli_args(model_dir, calib, out)]
    # the reference runs the same way as the killed runs (a fresh process: same thread count)
    ref = subprocess.run([sys.executable, "-m", "bitstack.cli", *_cli_args(model_dir, calib, tmp_path / "ref.bstk")],
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    fingerprint = tmp_path / "k.bstk.partial" / "work" / "fingerprint.json"
    reference = files(tmp_path / "ref.bstk")
    kills = attempts = 0
    while kills < 2:
        attempts += 1
        assert attempts <= 12, "the run kept finishing before the kill: the working phase is too short to hit"
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not fingerprint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():  # it finished before the kill landed: check it, then start again from scratch
            assert files(out) == reference
            shutil.rmtree(out)
        elif proc.returncode == -signal.SIGKILL:
            kills += 1
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert files(out) == reference
    assert not (tmp_path / "k.bstk.partial").exists()
