"""``bitstack generate`` and ``bitstack chat``: streaming, sampling options, exact chat commands,
status lines on stderr; ``--quiet``; the interrupted message; ``eval``'s output and help."""

import io
import json
import sys

import pytest

from bitstack.cli import build_parser, main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_tokens_as_they_come(tiny_artifact, monkeypatch):
    path, _, _ = tiny_artifact
    writes = []

    class Recorder(io.StringIO):
        def write(self, text):
            writes.append(text)
            return super().write(text)

    monkeypatch.setattr(sys, "stdout", Recorder())
    assert main(["generate", str(path), "--prompt", "the cat", "--max-new-tokens", "6", "--device", "cpu"]) == 0
    text = "".join(writes)
    assert text.startswith("the cat") and text.endswith("\n")
    assert len([w for w in writes if w.strip()]) >= 3  # the prompt, then the new text in pieces, not one print at the end


def test_generate_sampling_options(tiny_artifact, capsys):
    path, _, _ = tiny_artifact
    base = ["generate", path, "--prompt", "the cat", "--max-new-tokens", "8", "--device", "cpu"]
    greedy = _run(capsys, *base)[1]
    one = _run(capsys, *base, "--temperature", "1.5", "--seed", "3")[1]
    assert one == _run(capsys, *base, "--temperature", "1.5", "--seed", "3")[1]  # --seed makes sampling repeatable
    assert _run(capsys, *base, "--temperature", "1.5", "--top-k", "1", "--seed", "4")[1] == greedy  # top-k 1 is greedy
    code, out, _ = _run(capsys, *base, "--temperature", "1.0", "--top-p", "0.5", "--seed", "1")
    assert code == 0 and out.startswith("the cat")
    code, out, _ = _run(capsys, *base, "--system", "be brief")
    assert code == 0 and out.strip()


def test_generate_quiet_has_no_status_lines(tiny_artifact, capsys):
    path, _, _ = tiny_artifact
    code, _, err = _run(capsys, "generate", path, "--prompt", "the cat", "--max-new-tokens", "2", "--memory", "99999TB",
                        "--device", "cpu", "--quiet")
    assert code == 0 and err == ""


def test_chat_commands_are_exact_and_never_sent_to_the_model(tiny_artifact, capsys, monkeypatch):
    path, _, _ = tiny_artifact
    lines = ["/help", "/memory", "/memoryX 10B", "/sizes", "/nonsense words", "/size", "the cat", "/reset", "/size now",
             "/memory full", "/quit"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code = main(["chat", str(path), "--device", "cpu", "--max-new-tokens", "2", "--memory",
                 str(json.loads((path / "manifest.json").read_text())["prefix_bytes"][-2])])
    captured = capsys.readouterr()
    out, err = captured.out.splitlines(), captured.err.splitlines()
    assert code == 0
    assert sum(line.startswith("bot> ") for line in out) == 1  # only "the cat" reached the model
    assert not any("/" in line for line in out)  # status and errors go to stderr
    assert any("/reset" in line for line in err) and any("/memory SIZE" in line for line in err)  # /help
    assert any("/memory needs a size" in line for line in err)  # a bare /memory does not grow the model
    assert any("unknown command /memoryX" in line for line in err)
    assert any("unknown command /sizes" in line for line in err) and any("unknown command /nonsense" in line for line in err)
    assert any("forgotten" in line for line in err) and any("/size takes no argument" in line for line in err)
    assert sum("MB resident" in line for line in err) == 1
    assert any("-> " in line and "blocks" in line for line in err)  # /memory full grew to the whole stack


@pytest.mark.parametrize("command,resumes", [("compress", True), ("sort", True), ("info", False)])
def test_interrupted_is_on_its_own_line_and_says_how_to_resume(command, resumes, tiny_artifact, capsys, monkeypatch):
    def interrupted(args):
        print("progress 50%", end="", file=sys.stderr)  # a bar without its newline
        raise KeyboardInterrupt

    argv = {"compress": ["compress", "m", "-o", "x"], "sort": ["sort", "a", "--strategy", "proxy"], "info": ["info", "a"]}[command]
    parser = build_parser()
    args = parser.parse_args(argv)
    monkeypatch.setattr("bitstack.cli.build_parser", lambda: _Fixed(args, interrupted))
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.startswith("progress 50%\nbitstack: interrupted")
    assert ("rerun the same command to resume" in err) == resumes


class _Fixed:
    def __init__(self, args, func):
        args.func = func
        self.args = args

    def parse_args(self, argv):
        return self.args


def test_eval_prints_a_table_not_a_python_repr(tiny_artifact, tmp_path, capsys):
    path, _, _ = tiny_artifact
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat " * 300)
    arc = tmp_path / "arc.jsonl"
    arc.write_text("".join(json.dumps({"query": "Question: the cat?", "choices": ["sat", "mat"], "gold": i % 2}) + "\n"
                           for i in range(4)))
    code, out, _ = _run(capsys, "eval", path, "--ppl", text, "--seqlen", "64", "--max-windows", "2",
                        "--tasks", f"arc_easy={arc}", "--device", "cpu", "--quiet")
    assert code == 0 and "{" not in out and "'" not in out
    assert "perplexity" in out and any(line.startswith("arc_easy") for line in out.splitlines())
    assert any(line.startswith("average") for line in out.splitlines())


def test_eval_help_names_only_its_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "auto" not in text and "generate" not in text and "chat" not in text
    assert "3.5bits" in text
