import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks/ is importable

import json

import pytest

from benchmarks.quality.common import summary
from benchmarks.quality.seeded_table import _winner, table


def _entry(ppl, zs=0.4, memory=100_000_000):
    return {"ppl": ppl, "memory_bytes": memory, "zs_avg": zs,
            "zs": {t: zs for t in ("arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai")}}


def test_table_rows_are_means_over_seeds():
    results = {"float": {**_entry(21.6, 0.44), "memory_bytes": 269_030_000},
               "bitstack-s0@w3g64": _entry(40.0), "bitstack-s1@w3g64": _entry(44.0), "gptq-w3g64-s0": _entry(50.0),
               "rtn-w3g64": _entry(77.0, 0.36)}
    columns, rows = table(results, ["w3g64"], ["0", "1"], zeroshot=True)
    assert columns[:5] == ["memory", "method", "seeds", "memory MB", "WikiText-2 ppl (mean)"]
    assert [r[1] for r in rows] == ["float (bf16)", "BitStack", "GPTQ (act-order)", "RTN"]
    bitstack = rows[1]
    assert bitstack[2] == 2 and bitstack[4] == 42.0 and bitstack[5] == pytest.approx(2.828, abs=1e-3)
    assert bitstack[6] == "40.00-44.00" and bitstack[7] == 40.0
    assert rows[3][2] == 1 and rows[3][5] == 0.0


def test_winner_needs_every_candidate(tmp_path):
    def write(name, w3, w4):
        (tmp_path / f"tune-{name}.json").write_text(json.dumps({"val": {"w3g64": {"ppl": w3}, "w4g64": {"ppl": w4}}}))

    write("a", 40.0, 25.0)
    assert _winner(tmp_path, {"a": "", "b": "rotate=hadamard"}, ["w3g64", "w4g64"]) is None
    write("b", 35.0, 26.0)
    assert _winner(tmp_path, {"a": "", "b": "rotate=hadamard"}, ["w3g64", "w4g64"]) == "b"
    assert _winner(tmp_path, {"a": "", "b": "rotate=hadamard"}, ["w4g64"]) == "a"


def test_summary():
    assert summary([1.0, 3.0])["mean"] == 2.0 and summary([5.0])["std"] == 0.0
    assert summary([float("nan")])["n"] == 0


@pytest.mark.slow
def test_seeded_table_end_to_end_on_a_tiny_model(tmp_path):
    """Every job kind runs (candidates, the choice, seeds, evaluations, GPTQ, RTN, float) and the
    result file holds the table: a tiny Llama stands in for SmolLM2."""
    import random

    from tiny_models import WORDS, tiny_model, tiny_tokenizer

    from benchmarks.quality.seeded_table import main
    from benchmarks.resultfile import read_result

    model = tiny_model("llama", hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    rng = random.Random(0)
    sentence = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))
    data = tmp_path / "data"
    (data / "zeroshot").mkdir(parents=True)
    (data / "calibration_wikipedia.txt").write_text("\n\n".join(sentence(200) for _ in range(20)))
    (data / "wikitext2_test.txt").write_text(sentence(3000))
    rows = {"arc_easy": {"query": "Question: the cat\nAnswer:", "choices": ["sat", "ran"], "gold": 0},
            "winogrande": {"context_options": ["the cat", "the dog"], "continuation": "sat on a mat", "gold": 1},
            "lambada_openai": {"context": "the cat sat on", "continuation": "mat"}}
    rows["arc_challenge"] = rows["piqa"] = rows["arc_easy"]
    for task, row in rows.items():
        (data / "zeroshot" / f"{task}.jsonl").write_text((json.dumps(row) + "\n") * 3)
    out = tmp_path / "table.json"
    argv = ["--model", str(tmp_path / "model"), "--data", str(data), "--work", str(tmp_path / "work"),
            "--candidate", "near=signs=nearest niter=4", "--candidate", "rot=rotate=hadamard niter=4",
            "--seeds", "0,1", "--memories", "w4g64,w2g64", "--select", "w4g64", "--nsamples", "4", "--seqlen", "128",
            "--max-windows", "2", "--val-seqlen", "128", "--eval-seqlen", "128", "--jobs", "4", "--out", str(out)]
    assert main(argv) == 0
    result = read_result(out)
    methods = [(r[0], r[1], r[2]) for r in result["rows"]]
    assert methods[0][1] == "float (bf16)"
    for tag in ("w4g64", "w2g64"):
        assert (tag, "BitStack", 2) in methods and (tag, "GPTQ (act-order)", 2) in methods and (tag, "RTN", 1) in methods
    assert result["extra"]["chosen"]["winner"] in ("near", "rot")
    assert set(result["extra"]["validation_ppl"]) == {"near", "rot"}
    bitstack = [r for r in result["rows"] if r[1] == "BitStack"]
    gptq = {r[0]: r[3] for r in result["rows"] if r[1].startswith("GPTQ")}
    assert all(r[3] <= gptq[r[0]] for r in bitstack)  # matched memory: never more than the baseline's


def test_winner_skips_failed_candidates(tmp_path):
    (tmp_path / "tune-a.json").write_text(json.dumps({"val": {"w3g64": {"ppl": 40.0}}}))
    assert _winner(tmp_path, {"a": "", "b": ""}, ["w3g64"], failed={"b"}) == "a"
    assert _winner(tmp_path, {"b": ""}, ["w3g64"], failed={"b"}) is None
