import torch

from bitstack.serve.sampling import SamplingParams, filter_logits, make_generator, next_tokens, sample_row


def test_greedy_rows_take_the_argmax_and_need_no_generator():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 4.9]])
    params = [SamplingParams(temperature=0.0)] * 2
    assert make_generator(params[0]) is None
    assert next_tokens(logits, params, [None, None]) == [1, 0]


def test_top_k_keeps_the_k_largest():
    out = filter_logits(torch.tensor([1.0, 4.0, 3.0, 2.0]), top_k=2, top_p=1.0)
    assert torch.isinf(out[[0, 3]]).all() and torch.isfinite(out[[1, 2]]).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    kept = torch.isfinite(filter_logits(logits, 0, 0.75))
    assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.75 <= 0.8
    assert torch.isfinite(filter_logits(logits, 0, 0.8)).tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, 0, 0.81)).tolist() == [True, True, True, False]
    assert torch.isfinite(filter_logits(logits, 0, 0.01)).tolist() == [True, False, False, False]  # at least one


def test_sampling_matches_the_distribution_and_a_seed_repeats():
    logits = torch.tensor([0.2, 0.3, 0.5]).log()
    params = SamplingParams(temperature=1.0, seed=7)
    gen = make_generator(params)
    draws = torch.tensor([sample_row(logits, params, gen) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.03)
    again = make_generator(params)
    assert [sample_row(logits, params, again) for _ in range(50)] == draws[:50].tolist()


def test_low_temperature_concentrates_and_top_p_excludes():
    logits = torch.tensor([1.0, 2.0, 3.0])
    cold = SamplingParams(temperature=0.05, seed=1)
    gen = make_generator(cold)
    assert {sample_row(logits, cold, gen) for _ in range(100)} == {2}
    nucleus = SamplingParams(temperature=1.0, top_p=0.5, seed=1)
    gen = make_generator(nucleus)
    assert {sample_row(logits, nucleus, gen) for _ in range(200)} == {2}  # p(2) = 0.665 alone reaches 0.5


def test_mixed_rows_sample_each_from_its_own_generator():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, seed=4), SamplingParams(temperature=1.2, seed=9)]
    out = next_tokens(logits, params, [make_generator(p) for p in params])
    assert out[0] == int(logits[0].argmax())
    assert out[1] == sample_row(logits[1], params[1], make_generator(params[1]))
    assert out[2] == sample_row(logits[2], params[2], make_generator(params[2]))
