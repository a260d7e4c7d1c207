"""Zero-shot scoring: lm-eval's tokenization of a (context, continuation) pair and the batched
log-likelihood of the continuation (conventions in :mod:`bitstack.evaluation.zeroshot`)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from bitstack.evaluation.perplexity import model_context
from bitstack.evaluation.tasks import Request, ZeroShotError

# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    out = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [list(ids) for ids in out]


def _prefix_token(tokenizer) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ZeroShotError("the tokenizer has neither a BOS nor an EOS token to stand for an empty context")


def _encode_requests(
    tokenizer, requests: Sequence[Request], add_bos_token: bool
) -> list[tuple[list[int], list[int]]]:
    """Token ids ``(context_ids, continuation_ids)`` for each request (see :func:`encode_pair`)."""
    contexts, conts, wholes = [], [], []
    for r in requests:
        ctx, cont = r.context, r.continuation
        n_space = len(ctx) - len(ctx.rstrip())
        if n_space:
            ctx, cont = ctx[:-n_space], ctx[-n_space:] + cont
        contexts.append(ctx)
        conts.append(cont)
        wholes.append(ctx + cont)
    # Contexts repeat across the choices of a document: tokenize each distinct one once.
    unique_ctx = list(dict.fromkeys(contexts))
    ctx_ids = dict(zip(unique_ctx, _encode_many(tokenizer, unique_ctx)))
    whole_ids = _encode_many(tokenizer, wholes)
    bos = tokenizer.bos_token_id if add_bos_token else None
    if add_bos_token and bos is None:
        raise ZeroShotError("add_bos_token=True but the tokenizer has no BOS token")
    pairs = []
    for ctx, cont_text, whole in zip(contexts, conts, whole_ids):
        c = ctx_ids[ctx]
        cont = whole[len(c):]
        if not cont:  # the continuation merged into the context's last token: score it alone
            cont = _encode_many(tokenizer, [cont_text])[0]
        if bos is not None:
            c = [int(bos)] + c
        elif not c:
            c = [_prefix_token(tokenizer)]
        pairs.append((c, cont))
    return pairs


def encode_pair(
    tokenizer, context: str, continuation: str, *, add_bos_token: bool = False
) -> tuple[list[int], list[int]]:
    """lm-eval's context/continuation tokenization of one request.

    Returns ``(context_ids, continuation_ids)``, lists of int token ids; the model scores
    ``continuation_ids`` given ``context_ids``.
    """
    return _encode_requests(tokenizer, [Request(context, continuation, 0, 0)], add_bos_token)[0]


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _default_max_length(model) -> int:
    return model_context(getattr(model, "config", None)) or 2048


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def score_requests(
    model,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "scoring",
) -> list[tuple[float, bool]]:
    """Log-likelihood of each continuation given its context.

    ``pairs``: ``(context_ids, continuation_ids)`` token-id sequences, the context non-empty.
    Returns, in input order, ``(loglikelihood, is_greedy)``: the summed natural-log probability
    (float, computed in float32) of the continuation tokens, and whether every continuation token
    is the argmax of the model's next-token distribution.

    Each model input is ``(context + continuation)[:-1]`` left-truncated to ``max_length`` tokens
    (default: the model config's ``max_position_embeddings``), a LongTensor of shape
    ``[batch, T]`` right-padded with token 0 and an attention mask of the same shape (int64,
    1 = real token).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ZeroShotError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_length is None:
        max_length = _default_max_length(model)
    device = _model_device(model)
    keep_arg = _accepts_logits_to_keep(model)

    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    for ctx, cont in pairs:
        cont = [int(t) for t in cont]
        if not cont:
            raise ZeroShotError("a request has an empty continuation")
        full = [int(t) for t in ctx] + cont
        inp = full[-(max_length + 1):][:-1]
        if len(cont) > len(inp):  # continuation alone longer than the window
            cont = cont[-len(inp):]
        inputs.append(inp)
        targets.append(cont)

    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), i))
    results: list[tuple[float, bool] | None] = [None] * len(inputs)
    from tqdm.auto import tqdm

    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
                idx = order[start:start + batch_size]
                lengths = [len(inputs[i]) for i in idx]
                width = max(lengths)
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : lengths[row]] = torch.tensor(inputs[i], dtype=torch.long)
                    mask[row, : lengths[row]] = 1
                # Positions whose logits are needed: the last len(cont) of each row's input.
                first = min(lengths[row] - len(targets[i]) for row, i in enumerate(idx))
                kwargs: dict[str, Any] = {"attention_mask": mask.to(device), "use_cache": False}
                offset = 0
                if keep_arg:
                    kwargs["logits_to_keep"] = width - first
                    offset = first
                logits = model(input_ids=ids.to(device), **kwargs).logits
                for row, i in enumerate(idx):
                    n = len(targets[i])
                    lo = lengths[row] - n - offset
                    step = logits[row, lo:lo + n].float().log_softmax(dim=-1)
                    tgt = torch.tensor(targets[i], dtype=torch.long, device=step.device)
                    ll = step.gather(1, tgt[:, None]).sum().item()
                    greedy = bool((step.argmax(dim=-1) == tgt).all().item())
                    results[i] = (float(ll), greedy)
    finally:
        if was_training:
            model.train()
    return results  # type: ignore[return-value]
