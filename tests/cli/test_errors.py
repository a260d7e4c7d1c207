"""Every command of the CLI, given bad input, answers with exactly one line on stderr and exit code 2
(and writes nothing); an operating-system error (a full disk) is such a line too."""

import errno
import os

import pytest

import bitstack.artifact.workdir as workdir
from bitstack.cli import build_parser, main

# at least one case per command: a new command without a case fails test_every_command_has_a_case
CASES = {
    "compress": [["compress", "{model}", "-o", "{tmp}/no/x"], ["compress", "{model}", "-o", "{tmp}/x", "--nsamples", "0"]],
    "info": [["info", "{tmp}/nope.bstk"], ["info", "{text}"]],
    "verify": [["verify", "{tmp}/nope.bstk"], ["verify", "{tmp}"]],
    "eval": [["eval", "{art}", "--tasks", "arc_easy=/etc/passwd", "--limit", "2", "--device", "cpu"],
             ["eval", "{art}", "--tasks", "arc_easy={binary}", "--device", "cpu"],
             ["eval", "{art}", "--tasks", "boolq={text}", "--device", "cpu"],
             ["eval", "{art}", "--ppl", "{text}", "--seqlen", "100000", "--device", "cpu"],
             ["eval", "{art}", "--ppl", "{text}", "--memory", "12 parsecs"]],
    "generate": [["generate", "{art}", "--prompt", "hi", "--memory=-5MB"],
                 ["generate", "{art}", "--prompt", "hi", "--top-p", "1.5"],
                 ["generate", "{art}", "--prompt", "hi", "--top-k", "0"]],
    "chat": [["chat", "{art}", "--memory", "lots"]],
    "demo": [["demo", "--ppl", "{tmp}/nope.txt", "--output", "{tmp}/demo.bstk"]],
    "sort": [["sort", "{tmp}/nope.bstk", "--strategy", "proxy"]],
    "curve": [["curve", "{art}", "--ppl", "{text}", "--points", "2", "--out", "{tmp}/no/dir/c", "--device", "cpu"],
              ["curve", "{art}", "--ppl", "{text}", "--points", "2", "--seqlen", "100000", "--device", "cpu"]],
    "serve": [["serve", "{tmp}/nope.bstk"]],
    "export": [["export", "{tmp}/nope.bstk", "-o", "{tmp}/out"], ["export", "{art}", "-o", "{tmp}/out", "--memory", "lots"]],
}


def _commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)


def test_every_command_has_a_case():
    assert set(_commands()) <= set(CASES)


@pytest.fixture
def files(tmp_path, tiny_artifact, tiny_model_dir):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat " * 200)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 64)
    return {"{art}": str(tiny_artifact[0]), "{tmp}": str(tmp_path), "{model}": str(tiny_model_dir),
            "{text}": str(text), "{binary}": str(binary)}


def _one_line_exit_2(argv, files, capsys) -> str:
    for key, value in files.items():
        argv = [a.replace(key, value) for a in argv]
    root = files["{tmp}"]
    before = sorted(os.listdir(root))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.endswith("\n"), err
    assert sorted(os.listdir(root)) == before
    return err.strip()


@pytest.mark.parametrize("argv", [argv for command in sorted(CASES) for argv in CASES[command]],
                         ids=lambda argv: " ".join(argv[:1] + argv[2:4]))
def test_bad_input_is_one_line_exit_2(argv, files, capsys):
    if argv[0] not in _commands():
        pytest.skip(f"no {argv[0]} command in this build")
    line = _one_line_exit_2(argv, files, capsys)
    assert line.startswith("bitstack: error: ")


@pytest.mark.parametrize("command", _commands())
def test_unknown_option_is_one_line_exit_2(command, files, capsys):
    line = _one_line_exit_2([command, "--no-such-option"], files, capsys)
    assert "error" in line and "--help" in line


def test_messages_name_the_problem(files, capsys):
    line = _one_line_exit_2(CASES["eval"][0], files, capsys)
    assert "/etc/passwd:1" in line and "not valid JSON" in line
    line = _one_line_exit_2(CASES["eval"][3], files, capsys)
    assert "--seqlen 100000 is longer than the model's context of 256 tokens" in line
    line = _one_line_exit_2(CASES["curve"][0], files, capsys)
    assert "no/dir does not exist" in line


def test_expensive_work_waits_for_the_checks(files, capsys, monkeypatch):
    """eval and curve refuse a bad --seqlen, a bad task file and a bad --out before any model is loaded."""
    import bitstack.runtime.loader as loader
    import bitstack.sorting.measure as measure

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(loader, "load", never)
    monkeypatch.setattr(measure.StackEvaluator, "__init__", never)
    for argv in CASES["eval"][:4] + CASES["curve"]:
        _one_line_exit_2(argv, files, capsys)


def test_a_full_disk_during_compress_is_one_line_exit_2_and_resumable(files, capsys, monkeypatch, tmp_path):
    real = workdir.write_safetensors

    def full_at_layer_1(path, tensors, metadata):
        if path.name == "layer-00001.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, tensors, metadata)

    monkeypatch.setattr(workdir, "write_safetensors", full_at_layer_1)
    out = tmp_path / "full" / "x.bstk"
    out.parent.mkdir()
    argv = ["compress", files["{model}"], "-o", str(out), "--nsamples", "2", "--seqlen", "16", "--niter", "2",
            "--sort", "proxy", "--signs", "nearest", "--device", "cpu", "--quiet"]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("bitstack: error: compression stopped: ")  # --quiet: no bar
    assert "layer-00001.safetensors: no space left on the device" in err[0] and "rerun the same command" in err[0]
    assert (tmp_path / "full" / "x.bstk.partial" / "work" / "layer-00000.safetensors").is_file()
    monkeypatch.setattr(workdir, "write_safetensors", real)
    assert main(argv) == 0 and (out / "manifest.json").is_file()
    assert capsys.readouterr().err == ""  # --quiet silences every bar, transformers' loading bar too


def test_an_os_error_in_any_command_is_one_line_exit_2(files, capsys, monkeypatch):
    """An OSError the library does not name itself (here: reading --ppl without permission) is one line."""
    import pathlib

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    line = _one_line_exit_2(["eval", files["{art}"], "--ppl", files["{text}"]], files, capsys)
    assert line.startswith("bitstack: error: eval failed: ") and "text.txt: permission denied" in line
