"""Tests of bitstack.evaluation.zeroshot and the optional lm-eval adapter (CPU, offline, tiny models)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bitstack.evaluation import zeroshot as zs
from bitstack.evaluation.zeroshot import (
    KNOWN_TASKS,
    ZeroShotError,
    encode_pair,
    evaluate_tasks,
    load_task,
    parse_task_spec,
    score_requests,
)



@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster, and the setting must not leak into other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ---------------------------------------------------------------------------------------------
# Fixtures: tokenizers, models, task files
# ---------------------------------------------------------------------------------------------

CORPUS = [
    "Question: Which color is the sky on a clear day?\nAnswer: blue",
    "Question: How do I open a jar?\nAnswer: twist the lid with a towel.",
    "Sarah was a much better surgeon than Maria so Maria always got the harder cases.",
    "The cat sat on the mat and the dog barked at the mailman, 42 times.",
    "In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel.",
    "Ünïcödé wörds and numbers 3.14159 appear too; résumé, naïve, café.",
]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE tokenizer (~300 tokens) trained on CORPUS; every string is encodable."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<s>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<s>", pad_token="<|endoftext|>"
    )


def _tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).float().eval()
    # A sharper random model than the default init (std 0.02) so that scores differ between
    # options and padding mistakes would show.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def random_model(bpe_tokenizer):
    return _tiny_llama(len(bpe_tokenizer))


WORDS = [
    "<pad>", "<bos>", "<eos>", "[UNK]",
    "Question", "Answer", ":", "?", ".", "Which", "color", "is", "the", "sky",
    "red", "blue", "green", "Sarah", "Maria", "beat", "so", "won", "lost", "game",
    "cat", "sat", "on", "mat", "dog", "barked", "ran", "ij", "abcdefgh",
]


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per word / punctuation run (unknown words -> [UNK]): token counts are exact."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="[UNK]"
    )


def _bigram_model(tokenizer, bigrams: dict[tuple[str, str], float]) -> LlamaForCausalLM:
    """A Llama whose next-token logits depend only on the current token: logits[next] =
    bigrams.get((current, next), 0). Embeddings are one-hot, attention/MLP outputs are zeroed
    (the residual stream carries the embedding through), the final RMSNorm maps e_t to
    s * e_t, and lm_head holds the bigram table divided by s."""
    vocab = len(tokenizer)
    model = _tiny_llama(vocab, seed=1)
    hidden = model.config.hidden_size
    assert vocab <= hidden
    scale = 1.0 / math.sqrt(1.0 / hidden + model.config.rms_norm_eps)
    table = torch.zeros(vocab, hidden)  # lm_head.weight: [vocab, hidden]
    for (cur, nxt), score in bigrams.items():
        table[tokenizer.convert_tokens_to_ids(nxt), tokenizer.convert_tokens_to_ids(cur)] = score / scale
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(table)
    return model


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def random_task_files(tmp_path):
    arc = [
        {"query": "Question: Which color is the sky on a clear day?", "choices": ["blue", "red", "green sky at night", "a towel"], "gold": 0},
        {"query": "Question: How do I open a jar?", "choices": ["twist the lid", "sit on it"], "gold": 0},
        {"query": "Question: What sat on the mat?", "choices": ["the cat", "the dog barked", "42"], "gold": 0},
        {"query": "Question: Ünïcödé?", "choices": ["résumé", "naïve café"], "gold": 1},
        {"query": "Question: A long question about a guardian angel statuette inside a clear stone in my palm?", "choices": ["ivory", "stone"], "gold": 0},
    ]
    piqa = [{"query": r["query"] + "\n", "choices": r["choices"][:2], "gold": r["gold"] % 2} for r in arc]
    wino = [
        {"context_options": ["Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so Maria"], "continuation": "always got the harder cases.", "gold": 1},
        {"context_options": ["The cat sat on the mat and the dog", "The cat sat on the mat and the cat"], "continuation": "barked.", "gold": 0},
        {"context_options": ["A", "B"], "continuation": "is a letter.", "gold": 0},
    ]
    lam = [
        {"context": "The cat sat on the", "continuation": "mat"},
        {"context": "In my palm is a clear stone, and inside it is a small ivory statuette. A guardian", "continuation": "angel"},
        {"context": "the dog barked at the", "continuation": "mailman"},
        {"context": "She raised her brows when she returned and saw the", "continuation": "\n\nrecorder"},
    ]
    return {
        "arc_easy": _write(tmp_path / "arc_easy.jsonl", arc),
        "arc_challenge": _write(tmp_path / "arc_challenge.jsonl", arc[::-1]),
        "piqa": _write(tmp_path / "piqa.jsonl", piqa),
        "winogrande": _write(tmp_path / "winogrande.jsonl", wino),
        "lambada_openai": _write(tmp_path / "lambada_openai.jsonl", lam),
    }


# ---------------------------------------------------------------------------------------------
# Batching / padding
# ---------------------------------------------------------------------------------------------


def _all_pairs(tokenizer, files):
    pairs = []
    for task, path in files.items():
        reqs = zs.build_requests(task, load_task(task, path))
        pairs += zs._encode_requests(tokenizer, reqs, add_bos_token=False)
    return pairs


def test_batched_scores_equal_unbatched(random_model, bpe_tokenizer, random_task_files):
    pairs = _all_pairs(bpe_tokenizer, random_task_files)
    lengths = {len(c) + len(t) for c, t in pairs}
    assert len(lengths) > 5  # the batches really mix lengths, so padding happens
    one = score_requests(random_model, pairs, batch_size=1, progress=False)
    for bs in (3, 64):
        many = score_requests(random_model, pairs, batch_size=bs, progress=False)
        lls1 = torch.tensor([s[0] for s in one])
        llsb = torch.tensor([s[0] for s in many])
        assert torch.allclose(lls1, llsb, atol=1e-4, rtol=1e-5), (lls1 - llsb).abs().max()
        assert [s[1] for s in one] == [s[1] for s in many]
    # The scores are not degenerate: options are told apart.
    distinct = {(tuple(c), tuple(t)) for c, t in pairs}  # the files repeat some requests
    assert len({round(s[0], 3) for s in one}) == len(distinct)


def test_scores_match_a_plain_forward(random_model, bpe_tokenizer):
    """Reference: one unpadded forward per request, log-softmax, gather the continuation."""
    ctx, cont = encode_pair(bpe_tokenizer, "The cat sat on the", " mat and the dog barked")
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = random_model(ids).logits.float().log_softmax(-1)[0]
    want = sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))
    greedy = all(logp[len(ctx) - 1 + k].argmax().item() == t for k, t in enumerate(cont))
    (got, got_greedy), = score_requests(random_model, [(ctx, cont)], batch_size=4, progress=False)
    assert got == pytest.approx(want, abs=1e-4)
    assert got_greedy == greedy


class _NoKeepWrapper(torch.nn.Module):
    """A model without the `logits_to_keep` argument: the full-logits path."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_full_logits_path_equals_logits_to_keep_path(random_model, bpe_tokenizer, random_task_files):
    pairs = _all_pairs(bpe_tokenizer, random_task_files)
    a = score_requests(random_model, pairs, batch_size=4, progress=False)
    b = score_requests(_NoKeepWrapper(random_model), pairs, batch_size=4, progress=False)
    assert zs._accepts_logits_to_keep(random_model) and not zs._accepts_logits_to_keep(_NoKeepWrapper(random_model))
    assert torch.allclose(torch.tensor([s[0] for s in a]), torch.tensor([s[0] for s in b]), atol=1e-4)


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


def test_model_training_mode_is_restored(random_model, bpe_tokenizer):
    random_model.train()
    try:
        score_requests(random_model, [encode_pair(bpe_tokenizer, "a b", " c")], progress=False)
        assert random_model.training
    finally:
        random_model.eval()


# ---------------------------------------------------------------------------------------------
# Known answers (bigram model)
# ---------------------------------------------------------------------------------------------


def test_known_answers_give_acc_1(word_tokenizer, tmp_path):
    model = _bigram_model(
        word_tokenizer,
        {(":", "blue"): 10.0, ("Maria", "lost"): 10.0, ("Sarah", "won"): 10.0, ("the", "mat"): 10.0},
    )
    files = {
        "arc_easy": _write(tmp_path / "a.jsonl", [
            {"query": "Question: Which color is the sky?", "choices": ["red", "blue", "green"], "gold": 1},
            {"query": "Question: Which color is the sky?", "choices": ["blue", "red"], "gold": 0},
        ]),
        "winogrande": _write(tmp_path / "w.jsonl", [
            {"context_options": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"], "continuation": "lost the game.", "gold": 1},
            {"context_options": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"], "continuation": "won the game.", "gold": 0},
        ]),
        "lambada": _write(tmp_path / "l.jsonl", [{"context": "the cat sat on the", "continuation": "mat"}]),
    }
    res = evaluate_tasks(model, word_tokenizer, files, batch_size=2, progress=False)
    assert res["tasks"]["arc_easy"]["acc"] == 1.0
    assert res["tasks"]["arc_easy"]["acc_norm"] == 1.0
    assert res["tasks"]["winogrande"]["acc"] == 1.0
    assert "acc_norm" not in res["tasks"]["winogrande"]
    assert res["tasks"]["lambada_openai"]["acc"] == 1.0
    assert res["average"] == 1.0

    # The same files scored by a model that prefers the wrong answers get acc 0.
    wrong = _bigram_model(
        word_tokenizer,
        {(":", "red"): 10.0, ("Sarah", "lost"): 10.0, ("Maria", "won"): 10.0, ("the", "cat"): 10.0},
    )
    res = evaluate_tasks(wrong, word_tokenizer, files, batch_size=2, progress=False)
    assert res["tasks"]["winogrande"]["acc"] == 0.0
    assert res["tasks"]["lambada_openai"]["acc"] == 0.0
    assert res["tasks"]["arc_easy"]["acc"] == 0.0


def test_lambada_exact_match_and_perplexity(word_tokenizer, tmp_path):
    model = _bigram_model(word_tokenizer, {("the", "mat"): 10.0, ("dog", "ran"): 10.0, ("mat", "."): 6.0})
    rows = [
        {"context": "the cat sat on the", "continuation": "mat"},  # greedy: mat -> hit
        {"context": "the cat saw the dog", "continuation": "barked"},  # greedy: ran -> miss
        {"context": "the cat sat on the", "continuation": "mat."},  # tokens mat + '.', both greedy
        {"context": "the cat sat on the", "continuation": "mat?"},  # '?' is not the argmax after mat
    ]
    path = _write(tmp_path / "lambada_openai.jsonl", rows)
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
    model = _bigram_model(word_tokenizer, {})  # uniform: every token costs log(V)
    # choice 0: 1 token, 5 chars, 10 bytes; choice 1: 2 tokens, 11 chars, 11 bytes.
    rows = [{"query": "Question: Which?", "choices": ["ééééé", "abcdefgh ij"], "gold": 1}]
    path = _write(tmp_path / "arc_challenge.jsonl", rows)
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


# ---------------------------------------------------------------------------------------------
# Prompts and tokenization
# ---------------------------------------------------------------------------------------------


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


def test_encode_pair_splits_whole_string(bpe_tokenizer):
    for ctx, cont in [("Question: How?\nAnswer:", " twist the lid"), ("The cat sat on the", " mat"), ("café", " naïve")]:
        c, t = encode_pair(bpe_tokenizer, ctx, cont)
        whole = bpe_tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
        assert c + t == whole
        assert c == bpe_tokenizer(ctx, add_special_tokens=False)["input_ids"]
        assert len(t) >= 1
    # Trailing whitespace of the context moves to the continuation.
    assert encode_pair(bpe_tokenizer, "Answer: ", "blue") == encode_pair(bpe_tokenizer, "Answer:", " blue")


def test_bos_handling(bpe_tokenizer, random_model):
    bos = bpe_tokenizer.bos_token_id
    c0, t0 = encode_pair(bpe_tokenizer, "The cat", " sat")
    c1, t1 = encode_pair(bpe_tokenizer, "The cat", " sat", add_bos_token=True)
    assert c1 == [bos] + c0 and t1 == t0 and bos not in c0
    # An empty context is replaced by BOS (lm-eval uses a prefix token).
    c2, _ = encode_pair(bpe_tokenizer, "", "The cat")
    assert c2 == [bos]
    # None follows lm-eval: off for Llama, on for Gemma.
    assert zs._resolve_add_bos(random_model, None) is False
    assert zs._resolve_add_bos(random_model, True) is True


def test_long_inputs_are_left_truncated(random_model, bpe_tokenizer):
    ctx, cont = encode_pair(bpe_tokenizer, " ".join(CORPUS), " the end")
    full = score_requests(random_model, [(ctx, cont)], progress=False)
    cut = score_requests(random_model, [(ctx, cont)], progress=False, max_length=20)
    short = score_requests(random_model, [((ctx + cont)[-21:-len(cont)], cont)], progress=False)
    assert abs(cut[0][0] - short[0][0]) < 1e-4
    assert abs(full[0][0] - cut[0][0]) > 1e-3


# ---------------------------------------------------------------------------------------------
# limit, spec parsing and file errors
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# lm-eval adapter
# ---------------------------------------------------------------------------------------------


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
