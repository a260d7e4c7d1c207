"""Tests of bitstack.evaluation.zeroshot (metrics, evaluate_tasks) and the optional lm-eval adapter
(CPU, offline, tiny models; fixtures in conftest.py)."""

from __future__ import annotations

import math
import sys

import pytest
from zeroshot_models import bigram_model, write_rows

from bitstack.evaluation import zeroshot as zs
from bitstack.evaluation.zeroshot import KNOWN_TASKS, evaluate_tasks, load_task


def test_evaluate_is_deterministic_and_batch_size_independent(random_model, bpe_tokenizer, random_task_files):
    r1 = evaluate_tasks(random_model, bpe_tokenizer, random_task_files, batch_size=1, progress=False)
    r2 = evaluate_tasks(random_model, bpe_tokenizer, random_task_files, batch_size=5, progress=False)
    r3 = evaluate_tasks(random_model, bpe_tokenizer, random_task_files, batch_size=5, progress=False)
    assert list(r1["tasks"]) == list(KNOWN_TASKS)
    for task in KNOWN_TASKS:
        for key in ("acc", "acc_norm", "n"):
            assert r1["tasks"][task].get(key) == r2["tasks"][task].get(key)
        assert r2["tasks"][task] | {"seconds": 0} == r3["tasks"][task] | {"seconds": 0}
    assert r1["tasks"]["lambada_openai"]["perplexity"] == pytest.approx(
        r2["tasks"]["lambada_openai"]["perplexity"], rel=1e-4
    )
    assert r1["average"] == pytest.approx(sum(r1["tasks"][t]["acc"] for t in KNOWN_TASKS) / 5)

def test_known_answers_give_acc_1(word_tokenizer, tmp_path):
    model = bigram_model(
        word_tokenizer,
        {(":", "blue"): 10.0, ("Maria", "lost"): 10.0, ("Sarah", "won"): 10.0, ("the", "mat"): 10.0},
    )
    files = {
        "arc_easy": write_rows(tmp_path / "a.jsonl", [
            {"query": "Question: Which color is the sky?", "choices": ["red", "blue", "green"], "gold": 1},
            {"query": "Question: Which color is the sky?", "choices": ["blue", "red"], "gold": 0},
        ]),
        "winogrande": write_rows(tmp_path / "w.jsonl", [
            {"context_options": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"], "continuation": "lost the game.", "gold": 1},
            {"context_options": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"], "continuation": "won the game.", "gold": 0},
        ]),
        "lambada": write_rows(tmp_path / "l.jsonl", [{"context": "the cat sat on the", "continuation": "mat"}]),
    }
    res = evaluate_tasks(model, word_tokenizer, files, batch_size=2, progress=False)
    assert res["tasks"]["arc_easy"]["acc"] == 1.0
    assert res["tasks"]["arc_easy"]["acc_norm"] == 1.0
    assert res["tasks"]["winogrande"]["acc"] == 1.0
    assert "acc_norm" not in res["tasks"]["winogrande"]
    assert res["tasks"]["lambada_openai"]["acc"] == 1.0
    assert res["average"] == 1.0

    # The same files scored by a model that prefers the wrong answers get acc 0.
    wrong = bigram_model(
        word_tokenizer,
        {(":", "red"): 10.0, ("Sarah", "lost"): 10.0, ("Maria", "won"): 10.0, ("the", "cat"): 10.0},
    )
    res = evaluate_tasks(wrong, word_tokenizer, files, batch_size=2, progress=False)
    assert res["tasks"]["winogrande"]["acc"] == 0.0
    assert res["tasks"]["lambada_openai"]["acc"] == 0.0
    assert res["tasks"]["arc_easy"]["acc"] == 0.0

def test_lambada_exact_match_and_perplexity(word_tokenizer, tmp_path):
    model = bigram_model(word_tokenizer, {("the", "mat"): 10.0, ("dog", "ran"): 10.0, ("mat", "."): 6.0})
    rows = [
        {"context": "the cat sat on the", "continuation": "mat"},  # greedy: mat -> hit
        {"context": "the cat saw the dog", "continuation": "barked"},  # greedy: ran -> miss
        {"context": "the cat sat on the", "continuation": "mat."},  # tokens mat + '.', both greedy
        {"context": "the cat sat on the", "continuation": "mat?"},  # '?' is not the argmax after mat
    ]
    path = write_rows(tmp_path / "lambada_openai.jsonl", rows)
    res = evaluate_tasks(model, word_tokenizer, {"lambada_openai": path}, batch_size=3, progress=False)
    m = res["tasks"]["lambada_openai"]
    assert m["acc"] == 0.5 and m["n"] == 4

    v = len(word_tokenizer)
    lse = lambda hi: math.log(math.exp(hi) + (v - 1))  # noqa: E731  row with one logit `hi`, others 0
    ll = [
        10 - lse(10),
        0 - lse(10),
        (10 - lse(10)) + (6 - lse(6)),
        (10 - lse(10)) + (0 - lse(6)),
    ]
    assert m["perplexity"] == pytest.approx(math.exp(-sum(ll) / 4), rel=1e-4)

def test_acc_norm_divides_by_choice_length_in_chars_or_bytes(word_tokenizer, tmp_path):
    model = bigram_model(word_tokenizer, {})  # uniform: every token costs log(V)
    # choice 0: 1 token, 5 chars, 10 bytes; choice 1: 2 tokens, 11 chars, 11 bytes.
    rows = [{"query": "Question: Which?", "choices": ["ééééé", "abcdefgh ij"], "gold": 1}]
    path = write_rows(tmp_path / "arc_challenge.jsonl", rows)
    chars = evaluate_tasks(model, word_tokenizer, {"arc_challenge": path}, progress=False)
    byts = evaluate_tasks(model, word_tokenizer, {"arc_challenge": path}, progress=False, norm="bytes")
    assert chars["tasks"]["arc_challenge"]["acc"] == 0.0  # fewer tokens wins unnormalized
    assert chars["tasks"]["arc_challenge"]["acc_norm"] == 1.0  # -L/5 < -2L/11
    assert byts["tasks"]["arc_challenge"]["acc_norm"] == 0.0  # -L/10 > -2L/11
    assert chars["average_acc_norm"] == 1.0 and chars["average"] == 0.0

def test_acc_norm_length_excludes_the_target_delimiter():
    rows = [{"query": "q", "choices": ["x", "abcdefghij"], "gold": 1}]
    reqs = zs.build_requests("piqa", rows)
    assert [r.continuation for r in reqs] == [" x", " abcdefghij"]
    # -1/1 < -8/10 -> choice 1; with the space counted: -1/2 > -8/11 -> choice 0.
    m = zs._task_metrics("piqa", rows, reqs, [(-1.0, False), (-8.0, False)], "chars")
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0

def test_limit_scores_only_the_first_documents(random_model, bpe_tokenizer, random_task_files, tmp_path):
    res = evaluate_tasks(random_model, bpe_tokenizer, random_task_files, limit=2, progress=False)
    assert all(res["tasks"][t]["n"] == 2 for t in KNOWN_TASKS)
    # Same as scoring files that hold only those rows.
    head = {}
    for task, path in random_task_files.items():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:2]
        head[task] = tmp_path / f"head_{task}.jsonl"
        head[task].write_text("".join(lines), encoding="utf-8")
    ref = evaluate_tasks(random_model, bpe_tokenizer, head, progress=False)
    for task in KNOWN_TASKS:
        assert {k: v for k, v in res["tasks"][task].items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in ref["tasks"][task].items() if k != "seconds"}, nan_ok=True
        )
    assert len(load_task("piqa", random_task_files["piqa"], limit=3)) == 3

def test_lm_eval_missing_gives_install_hint(monkeypatch, random_model, bpe_tokenizer):
    from bitstack.evaluation import lm_eval_adapter as ad

    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail
    with pytest.raises(ad.LmEvalNotInstalledError, match="pip install lm-eval") as e:
        ad.make_lm_eval_model(random_model, bpe_tokenizer)
    assert isinstance(e.value, ImportError)
    with pytest.raises(ad.LmEvalNotInstalledError, match="pip install lm-eval"):
        ad.evaluate_with_lm_eval(random_model, bpe_tokenizer, ["arc_easy"])

def test_lm_eval_real_wrapper_if_installed(random_model, bpe_tokenizer):
    pytest.importorskip("lm_eval")
    from bitstack.evaluation import lm_eval_adapter as ad

    lm = ad.make_lm_eval_model(random_model, bpe_tokenizer, batch_size=2)
    assert lm.model is random_model
