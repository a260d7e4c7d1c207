"""Fixtures of the evaluation tests: tokenizers, tiny models and task files (helpers in
tests/zeroshot_models.py)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast
from zeroshot_models import CORPUS, WORDS, tiny_llama, write_rows


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster, and the setting must not leak into other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

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

@pytest.fixture(scope="module")
def random_model(bpe_tokenizer):
    return tiny_llama(len(bpe_tokenizer))

@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per word / punctuation run (unknown words -> [UNK]): token counts are exact."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="[UNK]"
    )

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
        "arc_easy": write_rows(tmp_path / "arc_easy.jsonl", arc),
        "arc_challenge": write_rows(tmp_path / "arc_challenge.jsonl", arc[::-1]),
        "piqa": write_rows(tmp_path / "piqa.jsonl", piqa),
        "winogrande": write_rows(tmp_path / "winogrande.jsonl", wino),
        "lambada_openai": write_rows(tmp_path / "lambada_openai.jsonl", lam),
    }
