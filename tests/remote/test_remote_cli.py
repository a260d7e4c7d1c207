"""The CLI takes URLs wherever it takes an artifact; remote failures are one line and exit 2."""

import json

import pytest

from remote_util import manifest_of

from bitstack.cli import main


def test_info_eval_generate_take_urls(served_root, server, options, capsys, tmp_path):
    m = manifest_of(served_root / "tiny.bstk")
    url, cache = f"{server.url}/tiny.bstk", str(options.cache_dir)
    assert main(["info", url, "--cache-dir", cache, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_blocks"] == len(m.stack) and info["disk_bytes"] > 0
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on a mat and the dog ran to the house " * 8)
    assert main(["eval", url, "--cache-dir", cache, "--memory", str(m.prefix_bytes[m.floor_blocks + 10]),
                 "--ppl", str(text), "--seqlen", "16", "--device", "cpu", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["ppl"] > 1
    assert main(["generate", url, "--cache-dir", cache, "--memory", str(m.prefix_bytes[m.floor_blocks + 50]),
                 "--progressive", "--prompt", "the cat", "--max-new-tokens", "5", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()  # one per step: from the floor on; "stopped" if the text was done first
    assert out.startswith("the cat") and f"({m.floor_blocks}/{m.floor_blocks + 50} blocks" in lines[0]
    assert lines[-1].startswith(("[bitstack] done", "[bitstack] stopped")) and "Error" not in err


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitstack: error: ") and err.count("\n") == 1
    return err


def _usage_error(capsys, argv):
    """An error found while parsing the command line: argparse's one line, exit 2."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"bitstack {argv[0]}: error: ") and err.count("\n") == 1
    return err


def test_remote_failures_exit_2_with_one_line(served_root, server, options, capsys):
    cache = ["--cache-dir", str(options.cache_dir), "--timeout", "5"]
    assert "HTTP 404" in _error(capsys, ["info", f"{server.url}/missing.bstk", *cache])
    server.status["tiny.bstk/manifest.json"] = 403
    assert "denied (HTTP 403)" in _error(capsys, ["info", f"{server.url}/tiny.bstk", *cache])
    server.status.clear()
    server.ignore_range = True
    assert "Range" in _error(capsys, ["generate", f"{server.url}/tiny.bstk", *cache, "--prompt", "a", "--device", "cpu"])
    assert "local artifact" in _usage_error(capsys, ["sort", f"{server.url}/tiny.bstk", "--strategy", "fisher"])
    assert "cache_limit" in _usage_error(capsys, ["info", f"{server.url}/tiny.bstk", "--cache-limit", "lots"])
    assert "timeout" in _usage_error(capsys, ["info", "--timeout", "0", f"{server.url}/tiny.bstk"])
    assert "--progressive needs a fixed --memory" in _error(
        capsys, ["generate", f"{server.url}/tiny.bstk", *cache, "--memory", "auto", "--progressive", "--prompt", "a"])
    assert "not in the cache" in _error(capsys, ["info", f"{server.url}/other.bstk", *cache, "--offline"])
