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

import inspect
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
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

#: Task names accepted as keys of a task spec, in the order they are reported.
KNOWN_TASKS: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "piqa",
    "winogrande",
    "lambada_openai",
)
_ALIASES = {"lambada": "lambada_openai"}
_MULTIPLE_CHOICE = ("arc_easy", "arc_challenge", "piqa")


class ZeroShotError(ValueError):
    """A task spec or a task file is unusable (unknown task, missing file, malformed row)."""


@dataclass(frozen=True)
class Request:
    """One log-likelihood request: score ``continuation`` after ``context``.

    ``doc`` is the index of the document (row) it belongs to, ``choice`` the index of the
    option within the document (0 for LAMBADA).
    """

    context: str
    continuation: str
    doc: int
    choice: int


# --------------------------------------------------------------------------------------------
# Task spec and data loading
# --------------------------------------------------------------------------------------------


def _canonical_task(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in KNOWN_TASKS:
        raise ZeroShotError(
            f"unknown zero-shot task {name!r}; known tasks: {', '.join(KNOWN_TASKS)} "
            f"(also 'lambada' for lambada_openai). Fix: name each file after its task, "
            f"e.g. arc_easy=PATH,piqa=PATH."
        )
    return key


def parse_task_spec(spec: str) -> dict[str, Path]:
    """Parse ``"arc_easy=PATH,piqa=PATH,..."`` into ``{task: Path}``.

    The task is named by the key (case-insensitive; ``lambada`` means ``lambada_openai``).
    Raises :class:`ZeroShotError` on an empty spec, an item without ``=``, an unknown task, a
    task given twice, or a path that is not an existing file; the message names the problem and
    the fix.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ZeroShotError(
            "empty task spec. Fix: pass TASK=PATH pairs separated by commas, e.g. "
            "arc_easy=data/arc_easy.jsonl,piqa=data/piqa.jsonl; known tasks: "
            + ", ".join(KNOWN_TASKS)
        )
    tasks: dict[str, Path] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ZeroShotError(
                f"task spec item {item!r} has no '='. Fix: write TASK=PATH, e.g. "
                f"arc_easy=data/arc_easy.jsonl; known tasks: {', '.join(KNOWN_TASKS)}"
            )
        name, _, path_text = item.partition("=")
        task = _canonical_task(name)
        if task in tasks:
            raise ZeroShotError(f"task {task!r} is given twice in the task spec. Fix: keep one.")
        path_text = path_text.strip()
        if not path_text:
            raise ZeroShotError(f"task {task!r} has an empty path. Fix: write {task}=PATH.")
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise ZeroShotError(
                f"file for task {task!r} not found: {str(path)!r}. Fix: point {task}= at an "
                f"existing JSONL file."
            )
        tasks[task] = path
    if not tasks:
        raise ZeroShotError("empty task spec. Fix: pass TASK=PATH pairs separated by commas.")
    return tasks


def _require(row: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(row, dict) or key not in row:
        raise ZeroShotError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ZeroShotError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _check_row(task: str, row: Any, where: str) -> dict:
    if task in _MULTIPLE_CHOICE:
        _require(row, "query", str, where)
        choices = _require(row, "choices", list, where)
        if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ZeroShotError(f"{where}: 'choices' must be a list of at least two strings")
        gold = _require(row, "gold", int, where)
        if not 0 <= gold < len(choices):
            raise ZeroShotError(f"{where}: 'gold' {gold} is out of range for {len(choices)} choices")
    elif task == "winogrande":
        options = _require(row, "context_options", list, where)
        if len(options) < 2 or not all(isinstance(c, str) for c in options):
            raise ZeroShotError(f"{where}: 'context_options' must be a list of at least two strings")
        _require(row, "continuation", str, where)
        gold = _require(row, "gold", int, where)
        if not 0 <= gold < len(options):
            raise ZeroShotError(f"{where}: 'gold' {gold} is out of range for {len(options)} options")
    else:  # lambada_openai
        _require(row, "context", str, where)
        cont = _require(row, "continuation", str, where)
        if not cont.strip():
            raise ZeroShotError(f"{where}: 'continuation' is empty")
    return row


def load_task(task: str, path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """Read the first ``limit`` rows (all when ``None``) of a task's JSONL file, validated.

    Blank lines are skipped. Raises :class:`ZeroShotError` on an unknown task, a missing file,
    invalid JSON or a row without the task's fields (the message gives file and line).
    """
    task = _canonical_task(task)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ZeroShotError(f"limit must be a positive integer or None, got {limit!r}")
    path = Path(path)
    if not path.is_file():
        raise ZeroShotError(
            f"file for task {task!r} not found: {str(path)!r}. Fix: point {task}= at an "
            f"existing JSONL file."
        )
    rows: list[dict] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{lineno} ({task})"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ZeroShotError(f"{where}: not valid JSON ({e.msg})") from None
            rows.append(_check_row(task, row, where))
    if not rows:
        raise ZeroShotError(f"file for task {task!r} has no rows: {str(path)!r}")
    return rows


# --------------------------------------------------------------------------------------------
# Prompts (lm-eval conventions)
# --------------------------------------------------------------------------------------------


def _mc_context(query: str) -> str:
    if query.rstrip().endswith("Answer:"):
        return query
    if query.endswith("\n"):
        return query + "Answer:"
    return query + "\nAnswer:"


def _lambada_split(context: str, continuation: str) -> tuple[str, str]:
    text = context + continuation if continuation[:1].isspace() else context + " " + continuation
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def build_requests(task: str, rows: Sequence[dict]) -> list[Request]:
    """Turn validated rows into log-likelihood requests (one per choice / option / document)."""
    task = _canonical_task(task)
    requests: list[Request] = []
    for i, row in enumerate(rows):
        if task in _MULTIPLE_CHOICE:
            ctx = _mc_context(row["query"])
            for j, choice in enumerate(row["choices"]):
                requests.append(Request(ctx, " " + choice, i, j))
        elif task == "winogrande":
            cont = " " + row["continuation"].strip()
            for j, option in enumerate(row["context_options"]):
                requests.append(Request(option, cont, i, j))
        else:
            ctx, cont = _lambada_split(row["context"], row["continuation"])
            requests.append(Request(ctx, cont, i, 0))
    return requests


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
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


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
    batch_size: int = 8,
    limit: int | None = None,
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
    batch_size: int = 8,
    limit: int | None = None,
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
