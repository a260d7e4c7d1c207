"""Tests of bitstack.evaluation.scoring: lm-eval's tokenization and batched log-likelihoods."""

from __future__ import annotations

import pytest
import torch
from zeroshot_models import CORPUS

from bitstack.evaluation import scoring
from bitstack.evaluation import zeroshot as zs
from bitstack.evaluation.zeroshot import encode_pair, load_task, score_requests


def _all_pairs(tokenizer, files):
    pairs = []
    for task, path in files.items():
        reqs = zs.build_requests(task, load_task(task, path))
        pairs += scoring._encode_requests(tokenizer, reqs, add_bos_token=False)
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
    assert scoring._accepts_logits_to_keep(random_model) and not scoring._accepts_logits_to_keep(_NoKeepWrapper(random_model))
    assert torch.allclose(torch.tensor([s[0] for s in a]), torch.tensor([s[0] for s in b]), atol=1e-4)

def test_model_training_mode_is_restored(random_model, bpe_tokenizer):
    random_model.train()
    try:
        score_requests(random_model, [encode_pair(bpe_tokenizer, "a b", " c")], progress=False)
        assert random_model.training
    finally:
        random_model.eval()

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
