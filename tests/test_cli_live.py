import io
import json

from bitstack.cli import main


def _floor(path):
    return json.loads((path / "manifest.json").read_text())


def test_chat_resizes_in_place(tiny_artifact, capsys, monkeypatch):
    path, _, _ = tiny_artifact
    m = _floor(path)
    floor = m["prefix_bytes"][m["floor_blocks"]]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"the cat sat\n/size\n/memory {floor}\n/memory 10B\nthe dog\n/quit\nnever read\n"))
    code = main(["chat", str(path), "--device", "cpu", "--max-new-tokens", "3"])
    captured = capsys.readouterr()
    out, err = captured.out.splitlines(), captured.err.splitlines()  # replies on stdout, status lines on stderr
    assert code == 0
    assert sum(line.startswith("bot> ") for line in out) == 2
    assert any("MB resident" in line for line in err)
    assert any(f"-> {floor / 1e6:.1f} MB" in line for line in err)
    assert any("below this artifact's floor" in line for line in err)  # a bad size is reported, the chat goes on


def test_generate_memory_auto_grows_with_free_memory(tiny_artifact, capsys):
    path, _, _ = tiny_artifact
    code = main(["generate", str(path), "--memory", "auto", "--reserve", "1MB", "--prompt", "the cat", "--max-new-tokens", "3", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.startswith("the cat")
    assert "[bitstack]" in captured.err and "MB free" in captured.err  # the resizer grew the model and said so
