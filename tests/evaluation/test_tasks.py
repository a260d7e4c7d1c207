"""Tests of bitstack.evaluation.tasks: the task spec, task files and lm-eval's prompts."""

from __future__ import annotations

import pytest

from bitstack.evaluation import zeroshot as zs
from bitstack.evaluation.zeroshot import KNOWN_TASKS, ZeroShotError, evaluate_tasks, load_task, parse_task_spec


def test_prompts_follow_lm_eval():
    arc = zs.build_requests("arc_easy", [{"query": "Question: Why?", "choices": ["a", "b c"], "gold": 0}])
    assert [(r.context, r.continuation) for r in arc] == [
        ("Question: Why?\nAnswer:", " a"), ("Question: Why?\nAnswer:", " b c")
    ]
    piqa = zs.build_requests("piqa", [{"query": "Question: Open a jar\n", "choices": ["x", "y"], "gold": 0}])
    assert piqa[0].context == "Question: Open a jar\nAnswer:"
    done = zs.build_requests("arc_challenge", [{"query": "Question: Q\nAnswer:", "choices": ["x", "y"], "gold": 0}])
    assert done[0].context == "Question: Q\nAnswer:"
    wino = zs.build_requests("winogrande", [{"context_options": ["A so A", "A so B"], "continuation": "won.", "gold": 0}])
    assert [(r.context, r.continuation) for r in wino] == [("A so A", " won."), ("A so B", " won.")]
    lam = zs.build_requests("lambada_openai", [
        {"context": "he said", "continuation": "hello"},
        {"context": "he said", "continuation": " hello"},
        {"context": "saw the", "continuation": "\n\nrecorder"},
    ])
    assert [(r.context, r.continuation) for r in lam] == [
        ("he said", " hello"), ("he said", " hello"), ("saw", " the\n\nrecorder")
    ]

def test_parse_task_spec(random_task_files):
    spec = ",".join(f"{t}={p}" for t, p in random_task_files.items())
    parsed = parse_task_spec(spec)
    assert parsed == dict(random_task_files)
    assert parse_task_spec(f" LAMBADA = {random_task_files['lambada_openai']} ,") == {
        "lambada_openai": random_task_files["lambada_openai"]
    }

@pytest.mark.parametrize(
    "spec, words",
    [
        ("hellaswag=x.jsonl", ["unknown", "hellaswag", "arc_easy", "lambada_openai"]),
        ("arc_easy", ["no '='", "TASK=PATH"]),
        ("", ["empty"]),
        ("piqa=", ["empty path"]),
        ("piqa=/nonexistent/piqa.jsonl", ["not found", "/nonexistent/piqa.jsonl", "piqa"]),
    ],
)
def test_parse_task_spec_errors(spec, words):
    with pytest.raises(ZeroShotError) as e:
        parse_task_spec(spec)
    assert isinstance(e.value, ValueError)
    for w in words:
        assert w in str(e.value)

def test_parse_task_spec_duplicate(random_task_files):
    p = random_task_files["piqa"]
    with pytest.raises(ZeroShotError, match="twice"):
        parse_task_spec(f"piqa={p},piqa={p}")

def test_malformed_rows_name_file_and_line(tmp_path):
    bad = tmp_path / "arc.jsonl"
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q", "choices": ["a"], "gold": 0}\n')
    with pytest.raises(ZeroShotError, match=r"arc.jsonl:2"):
        load_task("arc_easy", bad)
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 5}\n')
    with pytest.raises(ZeroShotError, match="out of range"):
        load_task("arc_easy", bad)
    bad.write_text("not json\n")
    with pytest.raises(ZeroShotError, match="not valid JSON"):
        load_task("arc_easy", bad)
    with pytest.raises(ZeroShotError, match="missing field 'continuation'"):
        bad.write_text('{"context": "x"}\n')
        load_task("lambada_openai", bad)
    with pytest.raises(ZeroShotError, match="unknown"):
        evaluate_tasks(None, None, {"boolq": bad})

def test_real_files_parse_if_present():
    """The shared data files, when present, load with every row valid."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "zeroshot"
    if not root.is_dir():
        pytest.skip("shared/data/zeroshot not present")
    for task in KNOWN_TASKS:
        rows = load_task(task, root / f"{task}.jsonl")
        assert len(zs.build_requests(task, rows)) >= len(rows) > 1000
