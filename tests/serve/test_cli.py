"""``bitstack serve`` on the command line: a startup line saying where and at what size, a clean
stop on Ctrl-C (exit 130, as every command), and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bitstack.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def start(artifact, *options: str) -> subprocess.Popen:
    """``bitstack serve ARTIFACT --port 0 --device cpu OPTIONS`` in a new process (this tree's source)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "bitstack.cli", "serve", str(artifact), "--port", "0", "--device",
                             "cpu", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_serve_starts_answers_and_stops_on_ctrl_c(serve_artifact):
    proc = start(serve_artifact, "--memory", "1MB")
    try:
        line = proc.stdout.readline()
        match = re.match(r"bitstack serve: tiny-serve\.bstk on http://127\.0\.0\.1:(\d+)/v1 \(weights [0-9.]+ kB = "
                         r"[0-9.]+ bits/param, floor .*memory target 1\.00 MB; KV .*; admin key \S+$", line.strip())
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        port = int(match.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as response:
            assert json.loads(response.read())["data"][0]["id"] == "tiny-serve.bstk"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = proc.stderr.read()
    assert code == 130 and "Traceback" not in err, err  # the CLI's Ctrl-C exit, after uvicorn's graceful stop


def test_auto_by_default_and_sigterm_lets_a_stream_finish(serve_artifact):
    proc = start(serve_artifact, "--reserve", "0")  # --memory auto is the default
    try:
        line = proc.stdout.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)/v1 .*memory target auto \(free memory minus 0 B\);", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        base = f"http://127.0.0.1:{match.group(1)}"
        with urllib.request.urlopen(base + "/health", timeout=30) as response:
            health = json.loads(response.read())
        assert health["status"] == "ok" and health["target_bytes"] > health["weight_resident_bytes"] > 0
        body = json.dumps({"model": "tiny-serve.bstk", "prompt": "the", "max_tokens": 48, "stream": True,
                           "ignore_eos": True}).encode()
        request = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as stream:
            first = stream.readline()
            proc.send_signal(signal.SIGTERM)  # while the stream is under way
            rest = stream.read().decode()
        assert first.startswith(b"data: {")
        chunks = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("data: {")]
        assert rest.rstrip().endswith("data: [DONE]") and chunks[-1]["choices"][0]["finish_reason"] == "length"
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 143 and "bitstack serve: stopped" in err and "Traceback" not in err, (code, err)


@pytest.mark.parametrize("extra,message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 listens beyond this machine: give --api-key"),
    (["--memory", "1kB"], "below this artifact's floor"),
    (["--memory", "lots"], "cannot parse memory size 'lots'"),
    (["--memory", "45kB"], "cannot hold the weights' floor"),
    (["--max-batch", "0"], "--max-batch must be at least 1"),
    (["--port", "70000"], "--port must be 0..65535"),
    (["--max-body", "10"], "--max-body must be at least 1kB"),
    (["--device", "gpu7"], "device"),
])
def test_bad_input_is_one_line_and_exit_2(serve_artifact, capsys, extra, message):
    assert main(["serve", str(serve_artifact), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitstack: error: ") and err.count("\n") == 1 and message in err, err


def test_missing_artifact_and_bad_curve(tmp_path, serve_artifact, capsys):
    assert main(["serve", str(tmp_path / "nothing.bstk")]) == 2
    assert "nothing.bstk does not exist" in capsys.readouterr().err
    # a URL is an artifact too: one nobody answers is one line, exit 2 (port 9 on 127.0.0.1: closed)
    assert main(["serve", "http://127.0.0.1:9/smol.bstk", "--timeout", "2", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitstack: error: ") and err.count("\n") == 1 and "127.0.0.1:9" in err, err
    bad = tmp_path / "curve.json"
    bad.write_text("{}")
    assert main(["serve", str(serve_artifact), "--device", "cpu", "--memory", "1MB", "--curve", str(bad)]) == 2
    assert "is not a 'bitstack curve' JSON file" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--memory", "--reserve", "--host", "--port", "--api-key", "--device", "--dtype", "--max-batch",
                   "--max-prompt-tokens", "--max-tokens-limit"):
        assert option in out
