"""Optional bridge to lm-evaluation-harness for a loaded (BitStack or plain) causal LM.

lm-eval is not a dependency: it is imported only when these functions are called, and a missing
install raises :class:`LmEvalNotInstalledError` naming ``pip install lm-eval``. The model is
wrapped with lm-eval's ``HFLM(pretrained=model, tokenizer=tokenizer)``, so any lm-eval task
(downloaded by lm-eval itself through ``datasets``) can be run on it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from bitstack.errors import BitstackError

__all__ = ["LmEvalNotInstalledError", "make_lm_eval_model", "evaluate_with_lm_eval"]

_INSTALL_HINT = (
    "lm-evaluation-harness is not installed. Fix: pip install lm-eval "
    "(install torch first so pip keeps your torch build), or use "
    "bitstack.evaluation.zeroshot.evaluate_tasks, which needs no extra package."
)


class LmEvalNotInstalledError(BitstackError, ImportError):
    """lm-eval (lm-evaluation-harness) is needed for this call and cannot be imported."""


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:  # also ModuleNotFoundError, and a None entry in sys.modules
        raise LmEvalNotInstalledError(f"{_INSTALL_HINT} (import of {module!r} failed: {e})") from e


def make_lm_eval_model(model, tokenizer, *, batch_size: int | str = 8, **hflm_kwargs: Any):
    """Wrap a loaded causal LM and its tokenizer as an lm-eval ``HFLM``.

    ``model``: a ``transformers.PreTrainedModel`` (causal LM) already on its device;
    ``tokenizer``: its ``PreTrainedTokenizer(Fast)``; ``batch_size``: an int or lm-eval's
    ``"auto"``; further keyword arguments go to ``HFLM`` (e.g. ``max_length``,
    ``add_bos_token``). Raises :class:`LmEvalNotInstalledError` when lm-eval is missing.
    """
    hf = _import("lm_eval.models.huggingface")
    return hf.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **hflm_kwargs)


def evaluate_with_lm_eval(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    batch_size: int | str = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    hflm_kwargs: dict[str, Any] | None = None,
    **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Run lm-eval tasks (e.g. ``["arc_easy", "piqa"]``) on a loaded model.

    Returns lm-eval's per-task ``results`` dict (``{task: {"acc,none": ..., ...}}``). ``limit``
    and ``num_fewshot`` are passed to ``lm_eval.simple_evaluate`` with any other keyword
    argument. Raises :class:`LmEvalNotInstalledError` when lm-eval is missing.
    """
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    lm_eval = _import("lm_eval")
    lm = make_lm_eval_model(model, tokenizer, batch_size=batch_size, **(hflm_kwargs or {}))
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        batch_size=batch_size,
        limit=limit,
        num_fewshot=num_fewshot,
        **simple_evaluate_kwargs,
    )
    return out["results"]
