"""``bitstack info`` (budget table, settings actually used) and ``bitstack verify``."""

import json
import shutil

import pytest

import bitstack
from bitstack.cli import main
from bitstack.runtime.budget import memory_bytes


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_budget_table_matches_loads(tiny_artifact, capsys):
    path, _, _ = tiny_artifact
    code, out, _ = _run(capsys, "info", path, "--json")
    info = json.loads(out)
    assert code == 0 and info["budgets"][0]["blocks"] == info["floor_blocks"]
    assert info["budgets"][-1]["blocks"] == info["num_blocks"]
    for row in info["budgets"]:
        model = bitstack.load(path, f"{row['bits_per_param']}bits", device="cpu")
        assert model.bitstack.loaded == row["blocks"] and memory_bytes(model) == row["memory_bytes"] <= row["budget_bytes"]
    code, out, _ = _run(capsys, "info", path)
    assert code == 0 and "bits/param" in out and "budget" in out and "no measured curve" in out


def test_info_shows_the_measured_curve(tiny_artifact, tmp_path, capsys):
    path = tmp_path / "art.bstk"
    shutil.copytree(tiny_artifact[0], path)
    (tmp_path / "art.bstk-curve.csv").write_text("label,memory_bytes,ppl,blocks\nart.bstk,123456,42.5,7\n")
    code, out, _ = _run(capsys, "info", path)
    assert code == 0 and "measured perplexity" in out and "42.500" in out
    info = json.loads(_run(capsys, "info", path, "--json")[1])
    assert info["curve"][0]["ppl"] == 42.5 and info["curve"][0]["blocks"] == 7


def test_info_shows_only_the_used_codec_settings(tiny_artifact, tiny_avd_artifact, capsys):
    planes = json.loads(_run(capsys, "info", tiny_artifact[0], "--json")[1])
    avd = json.loads(_run(capsys, "info", tiny_avd_artifact[0], "--json")[1])
    assert "rank" not in planes["compression"] and "group_size" in planes["compression"]
    assert "group_size" not in avd["compression"] and avd["compression"]["rank"] == 4


def test_verify_finds_damage_beyond_any_loaded_prefix(tiny_artifact, tmp_path, capsys):
    path = tmp_path / "art.bstk"
    shutil.copytree(tiny_artifact[0], path)
    code, out, _ = _run(capsys, "verify", path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert code == 0 and f"{len(manifest['stack'])} blocks" in out
    last = path / manifest["shards"][-1]["file"]
    raw = bytearray(last.read_bytes())
    raw[-1] ^= 1
    last.write_bytes(bytes(raw))
    assert bitstack.load(path, manifest["prefix_bytes"][manifest["floor_blocks"]], device="cpu")  # a floor load does not see it
    code, out, err = _run(capsys, "verify", path)
    assert code == 2 and last.name in out and "corrupted" in out
    assert len(err.strip().splitlines()) == 1 and "problem(s)" in err
    (path / manifest["shards"][0]["file"]).unlink()
    code, out, err = _run(capsys, "verify", path, "--json")
    report = json.loads(out)
    assert code == 2 and not report["ok"] and any(manifest["shards"][0]["file"] in p for p in report["problems"])
    assert any(last.name in p for p in report["problems"])


@pytest.mark.parametrize("part", ["base", "tokenizer"])
def test_verify_checks_base_and_tokenizer(part, tiny_artifact, tmp_path, capsys):
    path = tmp_path / "art.bstk"
    shutil.copytree(tiny_artifact[0], path)
    manifest = json.loads((path / "manifest.json").read_text())
    file = path / manifest["base"]["file"] if part == "base" else path / "tokenizer" / next(iter(manifest["tokenizer"]["files"]))
    file.write_bytes(file.read_bytes() + b" ")
    code, out, _ = _run(capsys, "verify", path)
    assert code == 2 and file.name in out
