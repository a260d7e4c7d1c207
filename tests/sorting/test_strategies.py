import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitstack.sorting.strategies import WeightStats, check_order, proxy_scores, universal_order


def _stats(energies, nbytes):
    return WeightStats(tuple(energies), nbytes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(0, 1e6), min_size=1, max_size=8), st.integers(1, 10_000)), min_size=1, max_size=12))
def test_order_is_valid_for_any_statistics(weights):
    stats = [_stats(sorted(e + [0.0], reverse=True), b) for e, b in weights]
    order = universal_order(stats)
    check_order(order, [s.num_blocks for s in stats])
    head = [(w, 0) for w in range(len(stats))]
    assert order[: len(stats)] == head


def test_scores_non_increasing_even_when_gains_are_not():
    scores = proxy_scores(_stats([10, 9, 2, 1.5, 0], 1))
    assert scores == sorted(scores, reverse=True)


def test_cheaper_better_block_goes_first():
    a = _stats([100, 50, 10], 10)  # block 1 gains 40 % of energy for 10 bytes
    b = _stats([100, 50, 40], 10)  # block 1 gains 10 %
    order = universal_order([a, b])
    assert order[2:] == [(0, 1), (1, 1)]


def test_check_order_rejects_bad_orders():
    with pytest.raises(ValueError, match="before"):
        check_order([(0, 1), (0, 0)], [2])
    with pytest.raises(ValueError, match="misses"):
        check_order([(0, 0)], [2])


# ---- strategies of issue 3 --------------------------------------------------------------------
import math
import random as _random

import torch

from bitstack.sorting.strategies import (
    GreedySorter,
    check_head_first,
    level_order,
    order_from_scores,
    random_order,
    residual_energies,
)

_counts = st.lists(st.integers(0, 7), min_size=1, max_size=10)


def _assert_valid(order, num_blocks):
    check_order(order, num_blocks)
    check_head_first(order, num_blocks)


@settings(max_examples=100, deadline=None)
@given(_counts, st.integers(0, 2**32 - 1))
def test_random_order_is_valid_and_seeded(num_blocks, seed):
    order = random_order(num_blocks, seed)
    _assert_valid(order, num_blocks)
    assert order == random_order(num_blocks, seed)


@settings(max_examples=100, deadline=None)
@given(_counts, st.integers(0, 1000))
def test_level_order_is_valid_and_level_by_level(num_blocks, seed):
    rng = _random.Random(seed)
    losses = {(w, i): rng.random() for w, n in enumerate(num_blocks) for i in range(1, n)}
    order = level_order(num_blocks, losses)
    _assert_valid(order, num_blocks)
    rest = order[sum(1 for n in num_blocks if n):]
    assert [i for _, i in rest] == sorted(i for _, i in rest)  # every level before the next
    for level in set(i for _, i in rest):  # within a level, ascending loss
        ranked = [losses[(w, i)] for w, i in rest if i == level]
        assert ranked == sorted(ranked)


def test_level_order_needs_every_measurement():
    with pytest.raises(ValueError, match="lacks"):
        level_order([3, 2], {(0, 1): 1.0, (0, 2): 1.0})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(0, 1e6), min_size=1, max_size=8), st.integers(1, 10_000)), min_size=1, max_size=12))
def test_fisher_order_is_valid(weights):
    stats = [_stats(sorted(e + [0.0], reverse=True), b) for e, b in weights]
    order = universal_order(stats, "fisher")
    _assert_valid(order, [s.num_blocks for s in stats])


def test_fisher_scores_are_absolute_proxy_relative():
    big = _stats([1000, 500, 400], 10)
    small = _stats([10, 4, 0], 10)  # a larger relative drop, a smaller absolute one
    assert universal_order([big, small], "proxy")[2:] == [(1, 1), (0, 1)]
    assert universal_order([big, small], "fisher")[2:] == [(0, 1), (1, 1)]


def test_universal_order_refuses_measured_strategies():
    with pytest.raises(ValueError, match="measurements"):
        universal_order([_stats([1, 0], 1)], "average")


def test_order_from_scores_rejects_increasing_scores():
    with pytest.raises(ValueError, match="increase"):
        order_from_scores([[3.0, 1.0, 2.0]])


def _run_greedy(sorter, gain_of, stop_after=None):
    """Drive a GreedySorter with a synthetic oracle gain_of(w, next_block, counts)."""
    actions = 0
    while True:
        action, ws = sorter.next_action()
        if action == "done" or (stop_after is not None and actions == stop_after):
            return sorter
        if action == "measure":
            sorter.record({w: gain_of(w, sorter.counts[w], tuple(sorter.counts)) for w in ws})
        else:
            sorter.accept(ws)
        actions += 1


@settings(max_examples=60, deadline=None)
@given(_counts, st.integers(1, 5), st.integers(0, 12), st.integers(0, 1000))
def test_greedy_is_valid_and_resumable(num_blocks, step, max_age, seed):
    rng = _random.Random(seed)
    table = {(w, i): rng.random() / (i + 1) for w, n in enumerate(num_blocks) for i in range(n)}
    bytes_ = [rng.randint(1, 100) for _ in num_blocks]

    def gain_of(w, i, counts):  # depends on the state too, like a real loss
        return table[(w, i)] - 1e-3 * sum(counts)

    full = _run_greedy(GreedySorter(num_blocks, bytes_, step=step, max_age=max_age), gain_of)
    _assert_valid(full.order, num_blocks)
    half = _run_greedy(GreedySorter(num_blocks, bytes_, step=step, max_age=max_age), gain_of, stop_after=rng.randint(0, 20))
    resumed = GreedySorter(num_blocks, bytes_, step=step, max_age=max_age)
    resumed.restore(half.to_dict())
    assert _run_greedy(resumed, gain_of).order == full.order


def test_exact_greedy_picks_the_best_gain_per_byte():
    # step 1, max_age 0: every gain is fresh, so each step takes the argmax
    gains = {(0, 1): 5.0, (0, 2): 1.0, (1, 1): 3.0, (1, 2): 2.0}
    sorter = _run_greedy(GreedySorter([3, 3], [1, 1], step=1, max_age=0), lambda w, i, c: gains[(w, i)])
    assert sorter.order[2:] == [(0, 1), (1, 1), (1, 2), (0, 2)]


def test_greedy_remeasures_a_weight_that_looked_useless_early():
    """Weight 0's gain is 0 until 10 other blocks are in, then it is the best: a stale low gain
    outside the top candidates must not keep it out of the stack (the bug the sorting study found)."""
    def gain_of(w, i, counts):
        if w == 0:
            return 0.0 if sum(counts) - 3 < 10 else 100.0
        return 1.0 / (i + 1)

    sorter = _run_greedy(GreedySorter([5, 40, 40], [1, 1, 1], step=2, max_age=8), gain_of)
    position = sorter.order.index((0, 1))
    assert position <= 3 + 10 + 8 + 2 * 2  # head + the 10 blocks + at most max_age + two steps of staleness


def test_greedy_rejects_non_finite_gains():
    sorter = GreedySorter([2], [1])
    with pytest.raises(ValueError, match="finite"):
        sorter.record({0: math.nan})


def test_residual_energies_match_direct_computation():
    torch.manual_seed(0)
    blocks = [torch.randn(5, 7) / (i + 1) for i in range(4)]
    importance = torch.rand(5, 7)
    for weights in (None, importance):
        energies = residual_energies(blocks, weights)
        for i in range(5):
            residual = sum(b.double() for b in blocks[i:]) if i < 4 else torch.zeros(5, 7, dtype=torch.float64)
            expected = (residual.double().square() * (1 if weights is None else weights.double())).sum()
            assert energies[i] == pytest.approx(float(expected), rel=1e-6)
    assert residual_energies([], None) == [0.0]


def test_check_head_first():
    with pytest.raises(ValueError, match="head"):
        check_head_first([(0, 0), (0, 1), (1, 0)], [2, 1])


def test_leveled_keeps_the_ranking_inside_each_level():
    from bitstack.sorting.strategies import leveled

    order = [(0, 0), (1, 0), (1, 1), (1, 2), (0, 1), (0, 2)]
    assert leveled(order) == [(0, 0), (1, 0), (1, 1), (0, 1), (1, 2), (0, 2)]
    stats = [WeightStats((10.0, 5.0, 4.0, 3.9), 1), WeightStats((10.0, 1.0, 0.5, 0.1), 1)]
    result = universal_order(stats, "leveled")
    check_order(result, [3, 3])
    assert [i for _, i in result] == [0, 0, 1, 1, 2, 2]
