"""Zero-shot task files and prompts: the task spec (``arc_easy=PATH,...``), validated JSONL rows
and the log-likelihood requests built from them, following lm-evaluation-harness (the conventions
are described in :mod:`bitstack.evaluation.zeroshot`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitstack.errors import InputError

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


class ZeroShotError(InputError):
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
    try:
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
                    raise ZeroShotError(f"{where}: not valid JSON ({e.msg}). Fix: give a JSONL file, one JSON "
                                        "object per line") from None
                rows.append(_check_row(task, row, where))
    except UnicodeDecodeError:
        raise ZeroShotError(f"file for task {task!r} is not UTF-8 text: {str(path)!r}. Fix: give a JSONL file") from None
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
