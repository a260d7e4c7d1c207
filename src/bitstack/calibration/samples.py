"""Calibration token samples from a text file, a Hugging Face dataset, or the model itself."""

from __future__ import annotations

from pathlib import Path

import torch

from bitstack.errors import InputError

# self-sampling generates this many tokens per batch at most (rows = this // seqlen, at least the
# caller's batch size): one step of many rows costs little more than one of few on a CPU, and the
# KV cache of the batch stays small (SmolLM2-135M: 32 x 512 tokens, 24 MB in bfloat16)
SAMPLE_BATCH_TOKENS = 16384


def tokenize_text(tokenizer, text: str, *, special_tokens: bool = False) -> torch.Tensor:
    """Token ids of a whole text, int64 (n,); ``special_tokens`` adds the tokenizer's BOS/EOS."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=special_tokens).input_ids
    return ids[0].to(torch.int64)


def windows_from_tokens(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int, *, what: str) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens (seeded), int64 (nsamples, seqlen)."""
    if tokens.numel() < seqlen:
        raise InputError(
            f"{what} has only {tokens.numel()} tokens, fewer than one sample of seqlen={seqlen}: "
            "give more text or a smaller --seqlen"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen + 1, (nsamples,), generator=generator)
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])


def text_file_samples(path: str | Path, tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Random windows of a UTF-8 text file's tokens, int64 (nsamples, seqlen)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"calibration file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    return windows_from_tokens(tokenize_text(tokenizer, text), nsamples, seqlen, seed, what=f"calibration file {path}")


def dataset_samples(spec: str, tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Random windows of a Hugging Face dataset's ``text`` column (train split).

    ``spec`` is ``NAME`` or ``NAME:SUBSET``, e.g. ``wikitext:wikitext-2-raw-v1``.  Needs the
    network and the ``datasets`` package.
    """
    try:
        import datasets
    except ImportError as err:
        raise InputError(
            f"{spec!r} is not a file; to use it as a Hugging Face dataset install `datasets` "
            "(pip install 'bitstack[eval]'), or pass a text file or 'self'"
        ) from err
    name, _, subset = spec.partition(":")
    try:
        data = datasets.load_dataset(name, subset or None, split="train")
    except Exception as err:  # datasets raises many unrelated types for a missing dataset
        raise InputError(f"could not load calibration dataset {spec!r}: {str(err).splitlines()[0]}") from err
    if "text" not in data.column_names:
        raise InputError(f"dataset {spec!r} has no 'text' column (columns: {', '.join(data.column_names)})")
    text = "\n\n".join(t for t in data["text"] if t)
    return windows_from_tokens(tokenize_text(tokenizer, text), nsamples, seqlen, seed, what=f"dataset {spec}")


@torch.no_grad()
def self_samples(model, tokenizer, nsamples: int, seqlen: int, seed: int, *, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Text sampled from the model itself (temperature 1, no truncation), for offline calibration.

    Each sample starts at the BOS token (or token 0 if the tokenizer has none) and is sampled
    token by token with the model's KV cache (static on a CPU: no cache growth per step), in
    batches of max(``batch_size``, SAMPLE_BATCH_TOKENS // seqlen) rows.  The global RNG is left
    untouched.

    Returns int64 (nsamples, seqlen).
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    rows: list[torch.Tensor] = []
    batch_size = max(batch_size, min(nsamples, SAMPLE_BATCH_TOKENS // seqlen))
    cache = {"cache_implementation": "static"} if device.type == "cpu" else {}
    # counted in tokens, one update per generated step: the first comes within seconds even at 2048 tokens
    bar = tqdm(total=nsamples * seqlen, desc="sampling calibration text", unit="tok", disable=not progress)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for first in range(0, nsamples, batch_size):
            n = min(batch_size, nsamples - first)
            ids = torch.full((n, 1), start, dtype=torch.long, device=device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,  # the argmax of the Gumbel-perturbed scores is the sample
                temperature=None,
                top_k=None,
                top_p=None,
                logits_processor=[_GumbelMax()],
                max_new_tokens=seqlen - 1,
                min_new_tokens=seqlen - 1,
                pad_token_id=start,
                streamer=_StepCounter(bar, n) if progress else None,
                **cache,
            )
            rows.append(out[:, :seqlen].cpu())
    bar.close()
    return torch.cat(rows)


class _GumbelMax:
    """A ``generate`` logits processor: scores + Gumbel noise -log(-log U), U uniform from the
    global RNG, float32 (batch, vocab).  Their argmax is a sample of softmax(scores), temperature 1
    (the Gumbel-max trick), at a third of the cost of softmax and ``torch.multinomial`` over a
    large vocabulary on a CPU."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.to(torch.float32)
        return scores - torch.rand_like(scores).log_().neg_().log_()


class _StepCounter:
    """A ``generate`` streamer that advances ``bar`` by the batch's ``n`` tokens per step (the
    prompt, one token per row, counts as the first)."""

    def __init__(self, bar, n: int):
        self.bar, self.n = bar, n

    def put(self, value) -> None:
        self.bar.update(self.n)

    def end(self) -> None:
        pass


def check_source(source: str) -> None:
    """Fail fast, before any model is loaded, on a calibration file that cannot be used."""
    if source == "self" or not _is_file_source(source):
        return
    path = Path(source)
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"calibration file {path} is empty")


def source_digest(source: str) -> str | None:
    """sha256 of a calibration file (``None`` for ``self`` or a dataset id): part of a run's fingerprint."""
    if source == "self" or not _is_file_source(source) or not Path(source).is_file():
        return None
    from bitstack.artifact.safetensors_io import sha256_file

    return sha256_file(source)


def _is_file_source(source: str) -> bool:
    return Path(source).exists() or source.startswith((".", "/", "~")) or source.endswith((".txt", ".text"))


def calibration_samples(source: str, model, tokenizer, nsamples: int, seqlen: int, seed: int, *, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Dispatch on ``source``: ``"self"``, an existing file, or a dataset id."""
    if source == "self":
        return self_samples(model, tokenizer, nsamples, seqlen, seed, batch_size=batch_size, progress=progress)
    if _is_file_source(source):
        return text_file_samples(source, tokenizer, nsamples, seqlen, seed)
    return dataset_samples(source, tokenizer, nsamples, seqlen, seed)
