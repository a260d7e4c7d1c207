from bitstack.remote import intervals as iv


def test_normalize_union_subtract():
    assert iv.normalize([(5, 7), (0, 2), (2, 3), (9, 9)]) == [(0, 3), (5, 7)]
    assert iv.union([(0, 2)], [(1, 5), (7, 8)]) == [(0, 5), (7, 8)]
    assert iv.subtract([(0, 10)], [(2, 3), (5, 7)]) == [(0, 2), (3, 5), (7, 10)]
    assert iv.subtract([(0, 3), (5, 9)], [(0, 100)]) == []


def test_missing_prefix_total():
    have = [(0, 4), (6, 8)]
    assert iv.missing(have, 0, 10) == [(4, 6), (8, 10)]
    assert iv.missing(have, 1, 3) == [] and iv.covers(have, 6, 8) and not iv.covers(have, 3, 7)
    assert iv.missing(have, 5, 5) == []
    assert iv.prefix_end(have) == 4 and iv.prefix_end(have, 6) == 8 and iv.prefix_end(have, 5) == 5
    assert iv.total(have) == 6


def test_against_sets():
    import random

    rng = random.Random(0)
    for _ in range(200):
        x = [(a, a + rng.randint(0, 5)) for a in rng.sample(range(40), 5)]
        y = [(a, a + rng.randint(0, 5)) for a in rng.sample(range(40), 5)]
        sx = {p for a, b in x for p in range(a, b)}
        sy = {p for a, b in y for p in range(a, b)}
        as_set = lambda spans: {p for a, b in spans for p in range(a, b)}  # noqa: E731
        assert as_set(iv.union(x, y)) == sx | sy
        assert as_set(iv.subtract(iv.normalize(x), iv.normalize(y))) == sx - sy
        norm = iv.normalize(x)
        assert all(b < c for (_, b), (c, _) in zip(norm, norm[1:]))  # disjoint, not touching
