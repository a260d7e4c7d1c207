"""The left-padded decode batch: rows that join and leave at different steps compute exactly
what they compute alone (float32, greedy), and a row's KV is freed when it leaves."""

import pytest
import torch
from tiny_models import tiny_model

from bitstack.serve.budget import Request, kv_reserve_bytes
from bitstack.serve.kvbatch import DecodeBatch, ModelRunner

CPU = torch.device("cpu")


def _alone(model, prompt, n):
    out = model.generate(prompt[None], max_new_tokens=n, do_sample=False, pad_token_id=3, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def _run_batched(runner, prompts, lengths, join_every=2, check=None):
    """Decode greedily; prompt i joins at step join_every * i and leaves after lengths[i] tokens."""
    batch, outs, pending, step = DecodeBatch(runner), {}, list(enumerate(prompts)), 0
    with torch.no_grad():
        while pending or len(batch):
            if pending and step % join_every == 0:
                i, p = pending.pop(0)
                cache, logits = runner.prefill(p, None)
                outs[i] = [int(logits.argmax())]
                batch.insert(i, cache, len(p))
            if len(batch):
                logits = batch.step([outs[i][-1] for i in batch.rows])
                done = []
                for k, i in enumerate(batch.rows):
                    outs[i].append(int(logits[k].argmax()))
                    if len(outs[i]) >= lengths[i]:
                        done.append(k)
                if check is not None:
                    check(batch)
                batch.remove(done)
            step += 1
    return outs


@pytest.mark.parametrize("family,overrides", [("llama", {}), ("qwen2", {}), ("opt", {}), ("gpt_neox", {}),
                                              ("mistral", {"sliding_window": 4})])
def test_rows_joining_and_leaving_decode_as_alone(family, overrides):
    model = tiny_model(family, **overrides)
    runner = ModelRunner(model, CPU)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 64, (n,), generator=gen) for n in (5, 11, 3, 8, 1)]
    lengths = [12, 5, 9, 14, 7]
    outs = _run_batched(runner, prompts, lengths)
    for i, p in enumerate(prompts):
        assert outs[i] == _alone(model, p, lengths[i]), f"row {i}"


def test_kv_is_measured_bounded_by_the_reserve_and_freed_on_leave():
    model = tiny_model("llama")
    runner = ModelRunner(model, CPU)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert runner.kv_per_token == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4
    assert runner.layers == cfg.num_hidden_layers
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(4, 64, (n,), generator=gen) for n in (30, 2, 9, 17)]
    lengths = [3, 20, 6, 2]
    seen = []

    def check(batch):
        requests = [Request(len(prompts[i]), lengths[i]) for i in batch.rows]
        assert batch.kv_bytes <= kv_reserve_bytes(requests, runner.kv_per_token, runner.layers)
        assert batch.columns == max(batch.lengths)  # padding columns of every row are dropped
        assert batch.kv_bytes == len(batch) * batch.columns * runner.kv_per_token
        seen.append(batch.kv_bytes)

    _run_batched(runner, prompts, lengths, join_every=1, check=check)
    assert max(seen) > seen[-1] > 0


def test_removing_every_row_frees_the_cache():
    runner = ModelRunner(tiny_model("llama"), CPU)
    batch = DecodeBatch(runner)
    with torch.no_grad():
        for n in (4, 6):
            cache, _ = runner.prefill(torch.arange(4, 4 + n), None)
            batch.insert(n, cache, n)
        batch.step([5, 6])
    assert batch.kv_bytes == 2 * 7 * runner.kv_per_token
    batch.remove([0])
    assert batch.kv_bytes == 7 * runner.kv_per_token and batch.lengths == [7]
    batch.remove([0])
    assert batch.kv_bytes == 0 and batch.cache is None and len(batch) == 0
