import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitstack.core.ordering import WeightStats, check_order, proxy_scores, universal_order


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
