"""Optional bridge to lm-evaluation-harness.

lm-eval is not a dependency: it is imported only when these functions are called, and a missing
install raises :class:`LmEvalNotInstalledError` naming ``pip install lm-eval``.

* :func:`register` adds the model name ``bitstack`` to lm-eval's registry
  (:class:`bitstack.integrations.lmeval.BitstackLM`: ``--model_args artifact=ART,memory=120MB``)
  and the ``"bitstack"`` quantization method to transformers (so ``--model hf --model_args
  pretrained=FOLDER`` loads a ``bitstack export --format bitstack-hf`` folder).
* :func:`main` is lm-eval's command line with both registered: lm-eval finds no third-party
  model by itself, so run ``python -m bitstack.evaluation.lm_eval_adapter --model bitstack
  --model_args artifact=ART,memory=120MB --tasks arc_easy`` (or the ``bitstack-lm-eval`` script).
* :func:`make_lm_eval_model` / :func:`evaluate_with_lm_eval` wrap a model already loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

__all__ = ["LmEvalNotInstalledError", "register", "main", "make_lm_eval_model", "evaluate_with_lm_eval"]

MODEL_NAME = "bitstack"
_MODEL_PATH = "bitstack.integrations.lmeval:BitstackLM"
_INSTALL_HINT = (
    "lm-evaluation-harness is not installed. Fix: pip install lm-eval "
    "(install torch first so pip keeps your torch build), or use "
    "bitstack.evaluation.zeroshot.evaluate_tasks, which needs no extra package."
)


class LmEvalNotInstalledError(ImportError):
    """lm-eval (lm-evaluation-harness) is needed for this call and cannot be imported."""


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:  # also ModuleNotFoundError, and a None entry in sys.modules
        raise LmEvalNotInstalledError(f"{_INSTALL_HINT} (import of {module!r} failed: {e})") from e


def register() -> None:
    """Register the ``bitstack`` model with lm-eval (lazily: lm-eval imports it when a run names it)
    and the ``"bitstack"`` quantization method with transformers.  Idempotent."""
    registry = _import("lm_eval.api.registry")
    if MODEL_NAME not in registry.model_registry:
        registry.model_registry.register(MODEL_NAME, target=_MODEL_PATH)
    importlib.import_module("bitstack.integrations.hf")


def main() -> None:
    """lm-eval's command line (``lm_eval ...``) with the ``bitstack`` model registered."""
    register()
    cli = _import("lm_eval.__main__")
    cli.cli_evaluate()


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


if __name__ == "__main__":
    main()
