"""The universal order of residual blocks: one stack, any prefix of which is a valid model.

Rules every order obeys: the blocks of one weight appear in their iteration order, and every
block appears exactly once.  The stack starts with the *head* — the first block of every weight,
in weight order — so that every prefix that covers the head has every weight represented; the
head plus the non-decomposed weights is the artifact's memory floor.  Strategies only decide how
the remaining blocks (index >= 1) are interleaved.

Strategies whose math lives here (pure: no I/O, no model):

``proxy`` (the compression-time default; costs nothing beyond the decomposition): block i of
weight w scores

    score(w, i) = (E_w[i] - E_w[i+1]) / E_w[0] / bytes(w, i)

where E_w[i] = ||W_w diag(s_w) - Ŵ_w,i||_F² is the activation-scaled residual energy after i
blocks — the relative reduction of the (activation-weighted) output error bought per byte.

``fisher`` (a Taylor estimate of the loss; one backward pass on validation text): the same merge,
with E_w[i] = Σ F_w ⊙ (Ŵ_w,n - Ŵ_w,i)² the second-order estimate of the loss increase when the
weight stops after i blocks (F_w: the diagonal empirical Fisher of the loss with respect to the
weight, Ŵ_w,n: all n blocks) and *no* division by E_w[0], so scores compare estimated loss
reductions per byte across weights.  The energies are computed by :func:`residual_energies`;
gathering F needs a model and text, so it is the sorting driver's job (``bitstack.sorting``).

For both, scores are made non-increasing along each weight (a running minimum) and the
remaining blocks are merged by descending score; ties keep iteration order, then weight order.

``random``: a seeded uniform random interleaving (an ablation).  ``average`` (level by level,
:func:`level_order`) and ``greedy`` (:class:`GreedySorter`) rank blocks by measured validation
loss; the measurements come from the driver, the ranking rules are here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch


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


def proxy_scores(stats: WeightStats, *, relative: bool = True) -> list[float]:
    """Non-increasing per-block scores of one weight (see the module docstring).

    ``relative=True`` divides the energy drops by E[0] (``proxy``); ``False`` keeps them absolute
    (``fisher``, whose energies are estimated loss increases).
    """
    energy = stats.residual_sq
    base = energy[0] if relative and energy[0] > 0 else 1.0
    scores: list[float] = []
    running = float("inf")
    for i in range(stats.num_blocks):
        gain = max(energy[i] - energy[i + 1], 0.0) / base / stats.block_bytes
        running = min(running, gain)
        scores.append(running)
    return scores


def head(num_blocks: Sequence[int]) -> list[tuple[int, int]]:
    """The head of the stack: block 0 of every weight that has blocks, in weight order."""
    return [(w, 0) for w, n in enumerate(num_blocks) if n > 0]


def order_from_scores(scores: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Head, then every block i >= 1 by descending ``scores[w][i]`` (ties: lower i, then lower w).

    ``scores[w]`` has one float per block of weight w and must be non-increasing, so that each
    weight's blocks stay in order (:func:`proxy_scores` guarantees it).
    """
    rest: list[tuple[float, int, int]] = []
    for w, row in enumerate(scores):
        for i in range(1, len(row)):
            if row[i] > row[i - 1]:
                raise ValueError(f"scores of weight {w} increase at block {i}: make them non-increasing")
            rest.append((-row[i], i, w))
    rest.sort()
    return head([len(row) for row in scores]) + [(w, i) for _, i, w in rest]


def random_order(num_blocks: Sequence[int], seed: int = 0) -> list[tuple[int, int]]:
    """Head, then a uniformly random interleaving of the remaining blocks (seeded).

    Each weight keeps its blocks in order: a shuffled multiset of weight indices (weight w
    appearing ``num_blocks[w] - 1`` times) is read left to right, the k-th occurrence of w
    standing for block k of w.
    """
    slots = [w for w, n in enumerate(num_blocks) for _ in range(max(n - 1, 0))]
    random.Random(seed).shuffle(slots)
    nxt = [1] * len(num_blocks)
    rest = []
    for w in slots:
        rest.append((w, nxt[w]))
        nxt[w] += 1
    return head(num_blocks) + rest


def level_order(num_blocks: Sequence[int], losses: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """The paper's ``average`` order: level by level, each level ranked by measured loss.

    Level i >= 1 holds block i of every weight that has one.  Every block of level i comes
    before any block of level i + 1, so all weights stay within one block of each other.
    ``losses[(w, i)]`` is the validation loss (or perplexity: any increasing function of it)
    measured with every weight at i blocks except w at i + 1; lower goes first, ties by weight.
    """
    missing = [(w, i) for w, n in enumerate(num_blocks) for i in range(1, n) if (w, i) not in losses]
    if missing:
        raise ValueError(f"level_order lacks the measurement of {len(missing)} blocks, e.g. block {missing[0][1]} of weight {missing[0][0]}")
    order = head(num_blocks)
    for level in range(1, max(num_blocks, default=0)):
        ranked = sorted((losses[(w, level)], w) for w, n in enumerate(num_blocks) if n > level)
        order.extend((w, level) for _, w in ranked)
    return order


@dataclass
class GreedySorter:
    """Batched lazy greedy: repeatedly add the blocks that lower the measured loss most per byte.

    State: ``counts[w]`` blocks of weight w are in the stack so far (the head: 1 each).  A
    candidate is the next block of a weight.  Its *gain* is (loss now − loss with that block
    added) / block bytes, measured by the driver at the state given by ``counts``.

    A round looks at the ``step`` candidates with the highest known gain (a candidate that was
    never measured ranks first).  If any of them was never measured or was measured more than
    ``max_age`` accepted blocks ago, the driver is asked to (re)measure those (``measure``) —
    and every candidate, in the top or not, is re-measured once its gain is older than ``max_age``;
    otherwise all of them are accepted at once (``accept``), and their weights' next blocks
    become unmeasured candidates.  ``step=1, max_age=0`` is exact greedy (every candidate
    re-measured after every block); larger values trade fidelity for fewer measurements:
    at most one measurement per block plus one refresh per candidate per ``max_age`` blocks.

    The state is plain data (:meth:`to_dict` / :meth:`from_dict`), so a run can be resumed.
    """

    num_blocks: list[int]
    block_bytes: list[int]
    step: int = 8
    max_age: int = 256
    counts: list[int] = field(default_factory=list)
    order: list[tuple[int, int]] = field(default_factory=list)
    gains: dict[int, tuple[float, int]] = field(default_factory=dict)  # w -> (gain per byte, accepted-count when measured)

    def __post_init__(self) -> None:
        if len(self.num_blocks) != len(self.block_bytes):
            raise ValueError("num_blocks and block_bytes must have one entry per weight")
        if self.step < 1 or self.max_age < 0:
            raise ValueError(f"greedy step must be >= 1 and max_age >= 0, got {self.step}, {self.max_age}")
        if not self.order:
            self.order = head(self.num_blocks)
            self.counts = [min(n, 1) for n in self.num_blocks]

    @property
    def accepted(self) -> int:
        return len(self.order)

    def candidates(self) -> list[int]:
        return [w for w, n in enumerate(self.num_blocks) if self.counts[w] < n]

    def next_action(self) -> tuple[str, list[int]]:
        """``("measure", weights)``, ``("accept", weights)`` or ``("done", [])``."""
        pending = self.candidates()
        if not pending:
            return "done", []

        def best_first(w: int) -> tuple[float, int]:
            known = self.gains.get(w)
            return (-math.inf if known is None else -known[0], w)

        # any candidate measured more than max_age blocks ago is re-measured, not only the top
        # ones: a weight whose gain was low near the floor may have become the best since
        expired = [w for w in pending if w in self.gains and self.accepted - self.gains[w][1] > self.max_age]
        if expired:
            return "measure", expired
        top = sorted(pending, key=best_first)[: self.step]
        stale = [w for w in top if w not in self.gains]
        if stale:
            return "measure", stale
        return "accept", top

    def record(self, gains: dict[int, float]) -> None:
        """Store gains per byte measured at the current state."""
        for w, gain in gains.items():
            if not math.isfinite(gain):
                raise ValueError(f"gain of weight {w} is not finite ({gain})")
            self.gains[w] = (float(gain), self.accepted)

    def accept(self, weights: list[int]) -> list[tuple[int, int]]:
        """Append the next block of each of ``weights``; returns the blocks added."""
        added = []
        for w in weights:
            if self.counts[w] >= self.num_blocks[w]:
                raise ValueError(f"weight {w} has no block left to accept")
            added.append((w, self.counts[w]))
            self.counts[w] += 1
            self.gains.pop(w, None)
        self.order.extend(added)
        return added

    def to_dict(self) -> dict:
        return {"order": [list(x) for x in self.order],
                "gains": {str(w): [g, age] for w, (g, age) in self.gains.items()}}

    def restore(self, data: dict) -> None:
        """Resume from :meth:`to_dict` output (the order is replayed and checked)."""
        self.order = head(self.num_blocks)
        self.counts = [min(n, 1) for n in self.num_blocks]
        saved = [tuple(x) for x in data["order"]]
        if saved[: len(self.order)] != self.order:
            raise ValueError("saved greedy state does not start with the head")
        for w, i in saved[len(self.order):]:
            if not (0 <= w < len(self.num_blocks)) or i != self.counts[w]:
                raise ValueError(f"saved greedy state is inconsistent at block {i} of weight {w}")
            self.counts[w] += 1
            self.order.append((w, i))
        self.gains = {int(w): (float(g), int(age)) for w, (g, age) in data["gains"].items()}


def residual_energies(blocks_dense: Sequence[torch.Tensor], importance: torch.Tensor | None = None) -> list[float]:
    """E[i] = Σ importance ⊙ (Ŵ_n − Ŵ_i)² for i = 0 … n, from the dense blocks of one weight.

    Args:
        blocks_dense: the n blocks' dense contributions S_i ⊙ (u_i v_i), float32 (out, in)
            each, in iteration order; Ŵ_i is the sum of the first i of them.
        importance: float32 (out, in) weights (e.g. a diagonal Fisher), or None for all ones —
            then E[i] approximates the proxy's ||W diag(s) − Ŵ_i||² with the full stack
            standing in for W (exact up to the last residual E[n], which is 0 here).
    Returns:
        n + 1 floats, non-increasing when ``importance`` is non-negative; E[n] = 0.
    """
    n = len(blocks_dense)
    if n == 0:
        return [0.0]
    # residual after i blocks = Σ_{j >= i} block_j, built from the tail so that no Ŵ_n is needed
    energies = [0.0] * (n + 1)
    tail = torch.zeros_like(blocks_dense[0], dtype=torch.float32)
    for i in range(n - 1, -1, -1):
        tail += blocks_dense[i]
        sq = tail.square()
        if importance is not None:
            sq *= importance
        energies[i] = float(sq.sum(dtype=torch.float64))
    return energies


def universal_order(weights: list[WeightStats], strategy: str = "proxy", *, seed: int = 0) -> list[tuple[int, int]]:
    """Order all blocks of all weights into one stack, for the strategies that need no model.

    Args:
        weights: one entry per decomposed weight, in model order.
        strategy: ``"proxy"`` (relative energy per byte), ``"fisher"`` (``weights`` carry
            Fisher-weighted energies; absolute per byte), ``"leveled"`` (the same Fisher
            ranking, level by level: see :func:`leveled`) or ``"random"`` (seeded by ``seed``).
            ``average`` and ``greedy`` need measurements: see :func:`level_order`,
            :class:`GreedySorter` and ``bitstack.sorting``.
    Returns:
        list of (weight index, block index), length Σ num_blocks; the first entries are the
        head ``(w, 0)`` for every w.
    """
    if strategy == "proxy":
        return order_from_scores([proxy_scores(s) for s in weights])
    if strategy == "fisher":
        return order_from_scores([proxy_scores(s, relative=False) for s in weights])
    if strategy == "leveled":  # fisher's ranking inside each level: block i of every weight before any block i+1
        return leveled(order_from_scores([proxy_scores(s, relative=False) for s in weights]))
    if strategy == "random":
        return random_order([s.num_blocks for s in weights], seed)
    raise ValueError(f"unknown ordering strategy {strategy!r} for universal_order "
                     "(average and greedy need measurements: use bitstack.sorting)")


def leveled(order: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``order`` made level by level: every weight's block i comes before any weight's block i+1,
    and inside a level the blocks keep their relative order (a stable sort by block index).
    A budget then holds every weight at j or j+1 blocks, the highest-ranked ones at j+1."""
    return sorted(order, key=lambda block: block[1])


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


def check_head_first(order: list[tuple[int, int]], num_blocks: list[int]) -> None:
    """Raise ValueError unless the order starts with block 0 of every weight (the floor)."""
    floor = sum(1 for n in num_blocks if n > 0)
    first = order[:floor]
    if any(i != 0 for _, i in first) or len({w for w, _ in first}) != floor:
        raise ValueError(f"the first {floor} blocks of the order must be block 0 of every weight (the head)")
