"""The ``bitstack`` model of lm-evaluation-harness: an artifact at a budget, by path.

Importing this module needs lm-eval (``pip install lm-eval``); it registers the model name
``bitstack`` with lm-eval's registry.  :mod:`bitstack.evaluation.lm_eval_adapter` registers it
lazily and runs lm-eval's command line with it (``python -m bitstack.evaluation.lm_eval_adapter
--model bitstack --model_args artifact=ART,memory=120MB --tasks ...``).
"""

from __future__ import annotations

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from bitstack.runtime.loader import load, load_tokenizer


@register_model("bitstack")
class BitstackLM(HFLM):
    """lm-eval's Hugging Face causal LM over a BitStack artifact loaded at ``memory``.

    Args (``--model_args`` keys, all strings on the command line):
        artifact: artifact directory.
        memory: budget for resident weight bytes (``120MB``, ``1.5GiB``; default: whole stack).
        device: ``cpu``, ``cuda``, ``cuda:1`` (default: CUDA if available).
        dtype: compute dtype (default: the artifact's).
        Any other key goes to lm-eval's ``HFLM`` (``batch_size``, ``max_length``, ``add_bos_token`` ...).
    """

    def __init__(self, artifact: str, memory: str | int | None = None, device: str | None = None,
                 dtype: str | None = None, **kwargs):
        model = load(artifact, memory, device=device, dtype=None if dtype in (None, "auto") else dtype)
        tokenizer = load_tokenizer(artifact)
        kwargs.pop("pretrained", None)
        super().__init__(pretrained=model, tokenizer=tokenizer, device=str(model.bitstack.device), **kwargs)
