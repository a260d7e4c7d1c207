"""Sets of integers as sorted, disjoint, non-adjacent half-open intervals ``[[a, b), ...]`` (pure functions).

The cache index keeps the verified stack positions of an artifact this way: a prefix is one
interval, a killed parallel download a few.
"""

from __future__ import annotations

Intervals = list[tuple[int, int]]


def normalize(spans) -> Intervals:
    """Sorted, merged intervals from any iterable of ``(a, b)`` pairs (empty ones dropped)."""
    out: Intervals = []
    for a, b in sorted((int(a), int(b)) for a, b in spans if b > a):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def union(x: Intervals, y: Intervals) -> Intervals:
    return normalize(list(x) + list(y))


def subtract(x: Intervals, y: Intervals) -> Intervals:
    """``x`` minus ``y``."""
    out: Intervals = []
    for a, b in x:
        pieces = [(a, b)]
        for c, d in y:
            if d <= a or c >= b:
                continue
            pieces = [piece for p, q in pieces for piece in ((p, min(q, c)), (max(p, d), q)) if piece[1] > piece[0]]
        out.extend(pieces)
    return normalize(out)


def missing(x: Intervals, start: int, stop: int) -> Intervals:
    """The parts of ``[start, stop)`` not in ``x``."""
    return subtract([(start, stop)] if stop > start else [], x)


def covers(x: Intervals, start: int, stop: int) -> bool:
    return not missing(x, start, stop)


def prefix_end(x: Intervals, start: int = 0) -> int:
    """The largest n such that ``[start, n)`` is in ``x`` (``start`` if ``start`` is not in ``x``)."""
    for a, b in x:
        if a <= start < b:
            return b
    return start


def total(x: Intervals) -> int:
    return sum(b - a for a, b in x)
