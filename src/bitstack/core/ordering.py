"""The universal order of residual blocks: one stack, any prefix of which is a valid model.

Rules every order obeys: the blocks of one weight appear in their iteration order, and every
block appears exactly once.  The stack starts with the *head* — the first block of every weight,
in weight order — so that every prefix that covers the head has every weight represented; the
head plus the non-decomposed weights is the artifact's memory floor.

Default strategy ``proxy`` (cheap, no evaluation): block i of weight w scores

    score(w, i) = (E_w[i] - E_w[i+1]) / E_w[0] / bytes(w, i)

where E_w[i] = ||W_w diag(s_w) - Ŵ_w,i||_F² is the activation-scaled residual energy after i
blocks — the relative reduction of the (activation-weighted) output error bought per byte.
Scores are made non-increasing along each weight (a running minimum) and the remaining blocks are
merged by descending score; ties keep iteration order, then weight order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightStats:
    """What ordering needs of one decomposed weight.

    residual_sq: niter + 1 floats, E[i] after i blocks (E[0] = ||W diag(s)||²).
    block_bytes: bytes of one block (all blocks of a weight have the same size).
    """

    residual_sq: tuple[float, ...]
    block_bytes: int

    @property
    def num_blocks(self) -> int:
        return len(self.residual_sq) - 1


def proxy_scores(stats: WeightStats) -> list[float]:
    """Non-increasing per-block scores of one weight (see the module docstring)."""
    energy = stats.residual_sq
    base = energy[0] if energy[0] > 0 else 1.0
    scores: list[float] = []
    running = float("inf")
    for i in range(stats.num_blocks):
        gain = max(energy[i] - energy[i + 1], 0.0) / base / stats.block_bytes
        running = min(running, gain)
        scores.append(running)
    return scores


def universal_order(weights: list[WeightStats], strategy: str = "proxy") -> list[tuple[int, int]]:
    """Order all blocks of all weights into one stack.

    Args:
        weights: one entry per decomposed weight, in model order.
        strategy: ``"proxy"`` (the only one so far).
    Returns:
        list of (weight index, block index), length Σ num_blocks; the first ``len(weights)``
        entries are the head ``(w, 0)`` for every w.
    """
    if strategy != "proxy":
        raise ValueError(f"unknown ordering strategy {strategy!r}")
    head = [(w, 0) for w, stats in enumerate(weights) if stats.num_blocks > 0]
    rest: list[tuple[float, int, int]] = []
    for w, stats in enumerate(weights):
        scores = proxy_scores(stats)
        rest.extend((-scores[i], i, w) for i in range(1, stats.num_blocks))
    rest.sort()
    return head + [(w, i) for _, i, w in rest]


def check_order(order: list[tuple[int, int]], num_blocks: list[int]) -> None:
    """Raise ValueError unless ``order`` lists every block once, each weight's blocks in order."""
    expected_next = [0] * len(num_blocks)
    for w, i in order:
        if not 0 <= w < len(num_blocks):
            raise ValueError(f"order names weight {w}, but there are {len(num_blocks)} weights")
        if i != expected_next[w]:
            raise ValueError(f"block {i} of weight {w} comes before block {expected_next[w]}")
        expected_next[w] += 1
    missing = [w for w, n in enumerate(num_blocks) if expected_next[w] != n]
    if missing:
        raise ValueError(f"order misses blocks of weights {missing[:5]}")
