import json
import subprocess
import sys

import pytest
from tiny_models import WORDS, tiny_tokenizer

from bitstack.cli import main


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(3000)))
    return path


@pytest.fixture(scope="module")
def artifact(model_dir, calib_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny.bstk"
    code = main(["compress", str(model_dir), "-o", str(out), "--calib", str(calib_file), "--nsamples", "4",
                 "--seqlen", "32", "--niter", "4", "--rank", "4", "--dtype", "float32", "--device", "cpu", "--quiet"])
    assert code == 0
    return out


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json(artifact, capsys):
    code, out, _ = _run(capsys, "info", str(artifact), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["num_blocks"] == 4 * info["num_weights"]
    assert info["floor_bytes"] < info["full_bytes"]
    assert info["compression"]["niter"] == 4


def test_eval_json_memory_and_ppl(artifact, calib_file, capsys):
    _, out, _ = _run(capsys, "info", str(artifact), "--json")
    info = json.loads(out)
    budget = (info["floor_bytes"] + info["full_bytes"]) // 2
    code, out, _ = _run(capsys, "eval", str(artifact), "--memory", str(budget), "--ppl", str(calib_file),
                        "--seqlen", "64", "--max-windows", "3", "--device", "cpu", "--json", "--quiet")
    result = json.loads(out)
    assert code == 0
    assert result["memory_bytes"] <= budget and result["ppl"] > 1
    assert result["ppl_detail"]["windows"] == 3


def test_generate(artifact, capsys):
    code, out, _ = _run(capsys, "generate", str(artifact), "--prompt", "the cat", "--max-new-tokens", "4", "--device", "cpu")
    assert code == 0 and out.startswith("the cat")


@pytest.mark.parametrize("argv,message", [
    (["eval", "{art}", "--memory=-5MB", "--ppl", "{calib}"], "non-negative"),
    (["eval", "{art}", "--memory", "lots", "--ppl", "{calib}"], "cannot parse memory size"),
    (["eval", "{art}", "--memory", "1kB", "--ppl", "{calib}"], "below this artifact's floor"),
    (["eval", "{art}", "--ppl", "/nonexistent.txt"], "does not exist"),
    (["eval", "{art}"], "nothing to evaluate"),
    (["info", "/nonexistent.bstk"], "does not exist"),
    (["info", "{tmp}"], "not a bitstack artifact"),
    (["compress", "/no/such/model", "-o", "{tmp}/x"], "does not exist"),
    (["compress", "{tmp}", "-o", "{tmp}/x"], "no config.json"),
    (["compress", "{model}", "-o", "{tmp}/x", "--calib", "{tiny_text}", "--seqlen", "64", "--nsamples", "2"], "fewer than one sample"),
    (["compress", "{model}", "-o", "{art}"], "already exists"),
    (["compress", "{gpt2}", "-o", "{tmp}/y", "--nsamples", "2", "--seqlen", "8"], "not supported"),
    (["compress", "{notlm}", "-o", "{tmp}/z"], "could not be loaded as a causal language model"),
])
def test_bad_input_exits_2_with_one_line(argv, message, artifact, calib_file, model_dir, tmp_path, capsys):
    import gguf
    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel

    tiny_text = tmp_path / "tiny.txt"
    tiny_text.write_text("the cat sat")
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, n_positions=16)).save_pretrained(gpt2)
    tiny_tokenizer().save_pretrained(gpt2)
    notlm = tmp_path / "clip.gguf"
    writer = gguf.GGUFWriter(str(notlm), "clip")
    writer.add_tensor("v.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    subs = {"{art}": str(artifact), "{calib}": str(calib_file), "{tmp}": str(tmp_path), "{model}": str(model_dir),
            "{tiny_text}": str(tiny_text), "{gpt2}": str(gpt2), "{notlm}": str(notlm)}
    for key, value in subs.items():
        argv = [a.replace(key, value) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    code, out, err = _run(capsys, *argv)
    assert code == 2
    last = err.strip().splitlines()[-1]  # libraries may print progress bars before it
    assert last.startswith("bitstack: error: ") and message in last
    after = sorted(p.name for p in tmp_path.iterdir())
    assert before == after  # nothing half-written


def test_argparse_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "x", "--memory"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "expected one argument" in err


def test_help_of_every_command():
    for command in ("compress", "info", "eval", "generate", "demo"):
        out = subprocess.run([sys.executable, "-m", "bitstack.cli", command, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: bitstack " + command in out.stdout
