"""bitstack curve: perplexity at many budgets, CSV/JSON/PNG, extra series."""

import csv
import json

import pytest

import bitstack
from bitstack.errors import BudgetError, InputError
from bitstack.evaluation.curve import CurvePoint, measure_curve, read_series_csv, spread_budgets, write_curve


@pytest.fixture(scope="module")
def text():
    from tiny_models import WORDS

    import random

    rng = random.Random(0)
    return " ".join(rng.choice(WORDS) for _ in range(400))


def test_spread_budgets_covers_floor_to_full():
    assert spread_budgets(100, 200, 3) == [100, 150, 200]
    assert spread_budgets(100, 200, 1) == [200]
    with pytest.raises(InputError):
        spread_budgets(100, 200, 0)


def test_curve_matches_eval_at_each_budget(tiny_artifact, text):
    from bitstack.evaluation.perplexity import perplexity

    path, _, tokenizer = tiny_artifact
    points = measure_curve(path, text, points=3, seqlen=32, max_windows=3, device="cpu", progress=False)
    assert [p.blocks for p in points][-1] == len(bitstack.load(path, device="cpu").bitstack.manifest.stack)
    for p in points:
        model = bitstack.load(path, p.budget_bytes, device="cpu")
        assert bitstack.memory_bytes(model) == p.memory_bytes <= p.budget_bytes
        expected = perplexity(model, tokenizer, text, seqlen=32, max_windows=3, progress=False)
        assert p.ppl == pytest.approx(expected.ppl, rel=1e-6)
    with pytest.raises(BudgetError, match="floor"):
        measure_curve(path, text, budgets=["1kB"], seqlen=32, device="cpu", progress=False)


def test_curve_cli_writes_csv_json_png(tiny_artifact, text, tmp_path, capsys):
    from bitstack.cli import main

    path, _, _ = tiny_artifact
    text_file = tmp_path / "text.txt"
    text_file.write_text(text)
    baseline = tmp_path / "baseline.csv"
    baseline.write_text("label,memory_bytes,ppl\nbaseline,60000,80.5\nbaseline,150000,70.25\n")
    out = tmp_path / "curve"
    info = bitstack.cli.info_dict(str(path))
    budgets = f"{info['floor_bytes']},{(info['floor_bytes'] + info['full_bytes']) // 2},{info['full_bytes']}"
    code = main(["curve", str(path), "--ppl", str(text_file), "--budgets", budgets, "--seqlen", "32", "--max-windows", "2",
                 "--series", f"again={path}", "--series-csv", str(baseline), "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [r["label"] for r in rows] == [path.name] * 3 + ["again"] * 3 + ["baseline"] * 2
    assert [r["ppl"] for r in rows[:3]] == [r["ppl"] for r in rows[3:6]]
    data = json.loads(open(f"{out}.json").read())
    assert set(data["series"]) == {path.name, "again", "baseline"} and data["decomposed_params"] > 0
    assert open(f"{out}.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
    assert main(["curve", str(path), "--ppl", str(text_file), "--quiet"]) == 2
    assert "--budgets" in capsys.readouterr().err


def test_series_csv_needs_its_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,memory,ppl\nx,1,2\n")
    with pytest.raises(InputError, match="label,memory_bytes,ppl"):
        read_series_csv(bad)


def test_write_curve_handles_overflowing_perplexity(tmp_path):
    series = {"s": [CurvePoint("s", 100, float("inf")), CurvePoint("s", 200, 10.0)]}
    paths = write_curve(series, tmp_path / "c", base_bytes=50, params=1000)
    assert json.loads(paths["json"].read_text())["series"]["s"][0]["ppl"] is None
    assert paths["png"].stat().st_size > 0
