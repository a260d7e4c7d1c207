"""Perplexity by the standard protocol (GPTQ, lm-eval-harness, the BitStack paper).

Tokenize the whole text once (with the tokenizer's special tokens, as GPTQ does), cut it into
non-overlapping windows of ``seqlen`` tokens (the remainder is dropped), and report exp(mean token negative log-likelihood over all windows).
Each window is scored on its own: the first token of a window has no context and is not scored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from bitstack.codecs.base import setting
from bitstack.errors import InputError


@dataclass(frozen=True)
class PerplexitySettings:
    """The perplexity protocol's knobs: the defaults of :func:`perplexity`, of
    :func:`bitstack.evaluation.curve.measure_curve` and of the ``eval`` and ``curve`` commands."""

    seqlen: int = setting(2048, "perplexity window length in tokens, at most the model's context", minimum=2)
    max_windows: int | None = setting(None, "score only the first N windows (default: all)", type=int)
    batch_size: int = setting(1, "windows per forward pass", minimum=1)


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token
    tokens: int  # scored tokens
    windows: int
    seqlen: int

    def to_dict(self) -> dict:
        return asdict(self)


def model_context(config) -> int | None:
    """The model's context length: ``max_position_embeddings`` (or ``n_positions``, ``n_ctx``) of
    a transformers config or of its dict (a manifest's ``model["config"]``); ``None`` if unknown."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = config.get(attr) if isinstance(config, dict) else getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_seqlen(seqlen: int, config, *, option: str = "seqlen") -> None:
    """InputError if ``seqlen`` tokens do not fit the context of the model of ``config``."""
    context = model_context(config)
    if context is not None and seqlen > context:
        raise InputError(f"{option} {seqlen} is longer than the model's context of {context} tokens: use at most {context}")


def token_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """int64 (windows, seqlen): the first ``max_windows`` full windows of a 1-D token tensor."""
    if seqlen < 2:
        raise InputError(f"seqlen must be at least 2, got {seqlen}")
    count = tokens.numel() // seqlen
    if max_windows is not None:
        if max_windows < 1:
            raise InputError(f"max_windows must be positive, got {max_windows}")
        count = min(count, max_windows)
    if count == 0:
        raise InputError(f"the text has {tokens.numel()} tokens, fewer than one window of {seqlen}: lower --seqlen")
    return tokens[: count * seqlen].view(count, seqlen)


def perplexity(model, tokenizer, text: str, *, seqlen: int = PerplexitySettings.seqlen,
               max_windows: int | None = PerplexitySettings.max_windows, batch_size: int = PerplexitySettings.batch_size,
               progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` on ``text`` (see the module docstring for the protocol)."""
    from bitstack.calibration.samples import tokenize_text

    check_seqlen(seqlen, getattr(model, "config", None))
    windows = token_windows(tokenize_text(tokenizer, text, special_tokens=True), seqlen, max_windows)
    return window_perplexity(model, windows, batch_size=batch_size, progress=progress)


@torch.no_grad()
def window_perplexity(model, windows: torch.Tensor, *, batch_size: int = 1, progress: bool = True) -> PerplexityResult:
    """Perplexity over token windows, int64 (windows, seqlen), each scored on its own."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    total_nll = 0.0
    scored = 0
    bar = tqdm(total=windows.shape[0], desc="perplexity", unit="window", disable=not progress)
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits  # (b, seqlen, vocab)
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += float(nll)
        scored += batch[:, 1:].numel()
        bar.update(batch.shape[0])
        bar.set_postfix(ppl=f"{math.exp(total_nll / scored):.3f}")
    bar.close()
    mean = total_nll / scored
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=scored, windows=windows.shape[0], seqlen=windows.shape[1])
