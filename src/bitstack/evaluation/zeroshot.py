"""Zero-shot accuracy of a causal LM on ARC-Easy, ARC-Challenge, PIQA, WinoGrande and LAMBADA.

Scores any Hugging Face causal LM (a ``PreTrainedModel`` whose forward returns ``.logits``) with
its tokenizer, from local JSONL files (no downloads). The prompts, the context/continuation split
and the metrics follow lm-evaluation-harness (EleutherAI, v0.4 task configs and ``HFLM``), so the
numbers are comparable with papers that use it:

* **arc_easy, arc_challenge, piqa** (multiple choice). Rows are
  ``{"query": str, "choices": [str, ...], "gold": int}``. The context is lm-eval's
  ``"Question: <question>\\nAnswer:"``: the query is used as is when it already ends with
  ``"Answer:"``, otherwise ``"Answer:"`` is appended after a newline (the llm-foundry files in
  ``shared/data/zeroshot`` hold ``"Question: <q>"`` for ARC and ``"Question: <goal>\\n"`` for PIQA).
  Each choice is scored as the continuation ``" " + choice`` (lm-eval's default
  ``target_delimiter``). ``acc``: argmax of the summed log-likelihood; ``acc_norm``: argmax of the
  log-likelihood divided by the choice's length, which lm-eval computes as ``len(choice)`` (Python
  characters of the choice, without the delimiter); ``norm="bytes"`` divides by UTF-8 bytes
  instead (identical for ASCII choices).
* **winogrande** (partial scoring). Rows are ``{"context_options": [a, b], "continuation": str,
  "gold": int}``. The shared continuation ``" " + continuation.strip()`` is scored after each
  context option; ``acc`` only.
* **lambada_openai**. Rows are ``{"context": str, "continuation": str}``. The full text is rebuilt
  (``context + " " + continuation``, or ``context + continuation`` when the continuation already
  starts with whitespace) and split as lm-eval does: context = everything before the last ``" "``,
  continuation = ``" " + last word``. ``acc``: every continuation token is the argmax of the model's
  prediction (greedy match); ``perplexity``: ``exp(-mean over documents of the summed
  continuation log-likelihood)`` (lm-eval's per-document ``perplexity`` aggregation).

Tokenization (lm-eval ``HFLM._encode_pair``): trailing whitespace of the context moves to the
front of the continuation; the context and the whole string ``context + continuation`` are
tokenized separately without special tokens, and the continuation tokens are the tokens of the
whole string after the first ``len(context tokens)``. A BOS token is prepended to the context only
when ``add_bos_token`` is true (lm-eval's default is false for causal LMs except Gemma, which the
default ``add_bos_token=None`` reproduces). An empty context is replaced by the BOS (or EOS) token.
Inputs longer than ``max_length`` keep their last ``max_length`` tokens.

Batching: requests are sorted by token length (longest first, ties by original order, so runs are
deterministic), right-padded and scored ``batch_size`` at a time. Right padding keeps every real
token at the position it has in an unpadded run and, the attention being causal, no real token
sees a pad, so batched and unbatched scores agree to float rounding. Log-softmax is computed in
float32 whatever the model dtype.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bitstack.codecs.base import setting
from bitstack.evaluation.scoring import _encode_requests, encode_pair, score_requests
from bitstack.evaluation.tasks import (
    _MULTIPLE_CHOICE,
    KNOWN_TASKS,
    Request,
    ZeroShotError,
    _canonical_task,
    build_requests,
    load_task,
    parse_task_spec,
)

__all__ = [
    "ZeroShotSettings",
    "KNOWN_TASKS",
    "ZeroShotError",
    "Request",
    "parse_task_spec",
    "load_task",
    "build_requests",
    "encode_pair",
    "score_requests",
    "evaluate_task",
    "evaluate_tasks",
]


@dataclass(frozen=True)
class ZeroShotSettings:
    """The defaults of :func:`evaluate_tasks` and of ``bitstack eval --tasks``."""

    batch_size: int = setting(8, "requests per forward pass", minimum=1)
    limit: int | None = setting(None, "score only the first N documents of each task (default: all)", type=int)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for k in range(1, len(values)):
        if values[k] > values[best]:
            best = k
    return best


def _task_metrics(
    task: str, rows: Sequence[dict], requests: Sequence[Request], scores, norm: str
) -> dict[str, Any]:
    per_doc: list[list[tuple[float, bool]]] = [[] for _ in rows]
    for req, score in zip(requests, scores):
        per_doc[req.doc].append(score)
    out: dict[str, Any] = {}
    if task == "lambada_openai":
        lls = [doc[0][0] for doc in per_doc]
        accs = [1.0 if doc[0][1] else 0.0 for doc in per_doc]
        out["acc"], out["acc_stderr"] = _mean_and_stderr(accs)
        out["perplexity"] = math.exp(-sum(lls) / len(lls))
    else:
        accs, accs_norm = [], []
        for row, doc in zip(rows, per_doc):
            lls = [s[0] for s in doc]
            accs.append(1.0 if _argmax(lls) == row["gold"] else 0.0)
            if task in _MULTIPLE_CHOICE:
                if norm == "bytes":
                    lens = [len(c.encode("utf-8")) for c in row["choices"]]
                else:
                    lens = [len(c) for c in row["choices"]]
                normed = [ll / max(n, 1) for ll, n in zip(lls, lens)]
                accs_norm.append(1.0 if _argmax(normed) == row["gold"] else 0.0)
        out["acc"], out["acc_stderr"] = _mean_and_stderr(accs)
        if accs_norm:
            out["acc_norm"], out["acc_norm_stderr"] = _mean_and_stderr(accs_norm)
    out["n"] = len(rows)
    return out


def _resolve_add_bos(model, add_bos_token: bool | None) -> bool:
    if add_bos_token is not None:
        return bool(add_bos_token)
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    return model_type.startswith("gemma")  # lm-eval HFLM turns BOS on for Gemma only


def evaluate_task(
    model,
    tokenizer,
    task: str,
    path: str | os.PathLike,
    *,
    batch_size: int = ZeroShotSettings.batch_size,
    limit: int | None = ZeroShotSettings.limit,
    progress: bool = True,
    add_bos_token: bool | None = None,
    max_length: int | None = None,
    norm: Literal["chars", "bytes"] = "chars",
) -> dict[str, Any]:
    """Score one task; returns ``{"acc", "acc_stderr", ["acc_norm", "acc_norm_stderr"],
    ["perplexity"], "n", "seconds"}``. See :func:`evaluate_tasks` for the arguments."""
    task = _canonical_task(task)
    if norm not in ("chars", "bytes"):
        raise ZeroShotError(f"norm must be 'chars' or 'bytes', got {norm!r}")
    t0 = time.perf_counter()
    rows = load_task(task, path, limit)
    requests = build_requests(task, rows)
    pairs = _encode_requests(tokenizer, requests, _resolve_add_bos(model, add_bos_token))
    scores = score_requests(
        model, pairs, batch_size=batch_size, max_length=max_length, progress=progress, desc=task
    )
    out = _task_metrics(task, rows, requests, scores, norm)
    out["seconds"] = time.perf_counter() - t0
    return out


def evaluate_tasks(
    model,
    tokenizer,
    tasks: Mapping[str, str | os.PathLike],
    *,
    batch_size: int = ZeroShotSettings.batch_size,
    limit: int | None = ZeroShotSettings.limit,
    progress: bool = True,
    add_bos_token: bool | None = None,
    max_length: int | None = None,
    norm: Literal["chars", "bytes"] = "chars",
) -> dict[str, Any]:
    """Zero-shot evaluation of a causal LM on local task files.

    Args:
        model: a causal LM (``transformers.PreTrainedModel`` or any module whose
            ``forward(input_ids=[B, T] int64, attention_mask=[B, T] int64)`` returns an object
            with ``.logits`` of shape ``[B, T, vocab]``), any dtype, on any one device.
        tokenizer: its tokenizer (a ``transformers`` tokenizer: callable on a list of strings with
            ``add_special_tokens=False``, with ``bos_token_id`` / ``eos_token_id``).
        tasks: ``{task: path}``, task among :data:`KNOWN_TASKS` (``parse_task_spec`` builds it
            from ``"arc_easy=PATH,piqa=PATH"``).
        batch_size: requests per forward pass.
        limit: score only the first ``limit`` documents of each task (``None``: all).
        progress: show a tqdm bar per task.
        add_bos_token: prepend the BOS token to every context; ``None`` follows lm-eval's HF
            default (off, on for Gemma models).
        max_length: longest model input in tokens; default from the model config.
        norm: the length unit of ``acc_norm``: ``"chars"`` (lm-eval) or ``"bytes"`` (UTF-8).

    Returns:
        ``{"tasks": {task: metrics}, "average": float, "average_acc_norm": float,
        "average_metric": "acc", "seconds": float}`` where ``metrics`` holds ``acc`` (and
        ``acc_stderr``), ``acc_norm`` (and ``acc_norm_stderr``) for arc_easy / arc_challenge /
        piqa, ``perplexity`` for lambada_openai, ``n`` (documents scored) and ``seconds``.
        ``average`` is the unweighted mean of ``acc`` over the evaluated tasks (``acc`` for every
        task: exact greedy match for LAMBADA). ``average_acc_norm`` is the same mean using
        ``acc_norm`` where the task has it (the convention of papers that report ARC/PIQA
        normalized), ``acc`` elsewhere.
    """
    if not tasks:
        raise ZeroShotError("no tasks given. Fix: pass e.g. {'arc_easy': 'arc_easy.jsonl'}.")
    canonical: dict[str, Path] = {}
    for name, path in tasks.items():
        task = _canonical_task(name)
        if task in canonical:
            raise ZeroShotError(f"task {task!r} is given twice. Fix: keep one.")
        canonical[task] = Path(path)
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for task in KNOWN_TASKS:
        if task in canonical:
            results[task] = evaluate_task(
                model,
                tokenizer,
                task,
                canonical[task],
                batch_size=batch_size,
                limit=limit,
                progress=progress,
                add_bos_token=add_bos_token,
                max_length=max_length,
                norm=norm,
            )
    accs = [m["acc"] for m in results.values()]
    accs_norm = [m.get("acc_norm", m["acc"]) for m in results.values()]
    return {
        "tasks": results,
        "average": sum(accs) / len(accs),
        "average_acc_norm": sum(accs_norm) / len(accs_norm),
        "average_metric": "acc",
        "seconds": time.perf_counter() - t0,
    }
