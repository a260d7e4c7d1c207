"""Tokenizers and tiny Llamas for the zero-shot tests: a BPE tokenizer's corpus, a random Llama,
a word-level vocabulary and a bigram Llama with known answers (tests/evaluation/)."""

from __future__ import annotations

import json
import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM


CORPUS = [
    "Question: Which color is the sky on a clear day?\nAnswer: blue",
    "Question: How do I open a jar?\nAnswer: twist the lid with a towel.",
    "Sarah was a much better surgeon than Maria so Maria always got the harder cases.",
    "The cat sat on the mat and the dog barked at the mailman, 42 times.",
    "In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel.",
    "Ünïcödé wörds and numbers 3.14159 appear too; résumé, naïve, café.",
]

def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
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

WORDS = [
    "<pad>", "<bos>", "<eos>", "[UNK]",
    "Question", "Answer", ":", "?", ".", "Which", "color", "is", "the", "sky",
    "red", "blue", "green", "Sarah", "Maria", "beat", "so", "won", "lost", "game",
    "cat", "sat", "on", "mat", "dog", "barked", "ran", "ij", "abcdefgh",
]

def bigram_model(tokenizer, bigrams: dict[tuple[str, str], float]) -> LlamaForCausalLM:
    """A Llama whose next-token logits depend only on the current token: logits[next] =
    bigrams.get((current, next), 0). Embeddings are one-hot, attention/MLP outputs are zeroed
    (the residual stream carries the embedding through), the final RMSNorm maps e_t to
    s * e_t, and lm_head holds the bigram table divided by s."""
    vocab = len(tokenizer)
    model = tiny_llama(vocab, seed=1)
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

def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
