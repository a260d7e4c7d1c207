"""Choosing the next token of every row of a decode batch: greedy, or sampled with temperature,
top-k and top-p, from a per-request random generator (so that a seeded request gives the same
tokens whatever else shares its batch).

Pure functions on tensors; the engine calls :func:`next_tokens` once per decode step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings.  ``temperature == 0`` is greedy (top-k/top-p unused)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A CPU generator seeded with ``params.seed`` (a random seed when it is None); None when greedy."""
    if params.greedy:
        return None
    generator = torch.Generator(device="cpu")
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with the tokens outside top-k and outside the top-p nucleus set to -inf.

    ``logits``: float32 (vocab,).  The nucleus keeps the smallest set of most likely tokens whose
    probability reaches ``top_p`` (at least one token), as transformers' ``TopPLogitsWarper``.
    """
    if top_k and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the mass before this token already reaches top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token of one row.  ``logits``: (vocab,) of any float dtype, any device."""
    if params.greedy:
        return int(torch.argmax(logits))
    scaled = logits.detach().to("cpu", torch.float32) / params.temperature
    probs = filter_logits(scaled, params.top_k, params.top_p).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def next_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """The next token of every row: ``logits`` (rows, vocab) -> one int per row.

    Greedy rows take one batched argmax on the logits' device; sampled rows are copied to the
    CPU at once and drawn there, each from its own generator.
    """
    tokens = torch.argmax(logits, dim=-1).tolist()
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if sampled:
        rows = logits[torch.tensor(sampled, device=logits.device)].to("cpu", torch.float32)
        for row, i in zip(rows, sampled):
            tokens[i] = sample_row(row, params[i], generators[i])
    return tokens
