"""calibration/samples.py self-sampling: the Gumbel-max step samples softmax(scores); seeded,
batched samples of the requested shape that leave the global RNG alone."""

import torch
from tiny_models import tiny_model, tiny_tokenizer

from bitstack.calibration.samples import _GumbelMax, self_samples


def test_gumbel_max_samples_the_softmax():
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(40000, 1)
    torch.manual_seed(0)
    picks = _GumbelMax()(None, scores).argmax(1)
    frequency = torch.bincount(picks, minlength=5).float() / picks.numel()
    want = torch.softmax(scores[0], 0)
    assert torch.allclose(frequency, want, atol=0.01), (frequency, want)
    assert frequency[4] == 0


def test_self_samples_are_seeded_and_leave_the_global_rng_alone():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = self_samples(model, tokenizer, 5, 9, seed=7, batch_size=2, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = self_samples(model, tokenizer, 5, 9, seed=7, batch_size=2, progress=False)
    c = self_samples(model, tokenizer, 5, 9, seed=8, batch_size=2, progress=False)
    assert a.shape == (5, 9) and a.dtype == torch.int64 and torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] == tokenizer.bos_token_id).all() and len(set(a[:, 1:].flatten().tolist())) > 10


def test_sampling_batches_hold_up_to_sample_batch_tokens(monkeypatch):
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    rows = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda ids, **kw: rows.append(ids.shape[0]) or generate(ids, **kw))
    self_samples(model, tokenizer, 5, 9, seed=0, batch_size=2, progress=False)  # 45 tokens: one batch
    self_samples(model, tokenizer, 3, 2, seed=0, batch_size=1, progress=False)
    assert rows == [5, 3]
    rows.clear()
    monkeypatch.setattr("bitstack.calibration.samples.SAMPLE_BATCH_TOKENS", 4)
    self_samples(model, tokenizer, 5, 2, seed=0, batch_size=1, progress=False)  # 2 rows of 2 tokens per batch
    self_samples(model, tokenizer, 5, 2, seed=0, batch_size=3, progress=False)  # batch_size is the minimum
    assert rows == [2, 2, 1, 3, 2]
