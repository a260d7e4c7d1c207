"""The ``"bitstack"`` quantization method of transformers: ``from_pretrained`` of an artifact folder.

An artifact folder made loadable (:func:`bitstack.runtime.save.write_loadable`) has a
``config.json`` whose ``transformers_weights`` names ``base.safetensors`` and whose
``quantization_config`` is ``{"quant_method": "bitstack", "memory": ..., "verify": ...}``.
``from_pretrained`` then runs, through :class:`BitstackHfQuantizer`:

1. transformers builds the model skeleton on the meta device from the config;
2. ``_process_model_before_weight_loading`` opens the artifact, checks the budget against the
   floor (before anything is read), checks the base file's sha256 (``verify``) and replaces every
   decomposed linear by an empty :class:`~bitstack.runtime.linear.BitStackLinear` (the loader's
   :func:`~bitstack.runtime.loader.bitstack_linears`);
3. transformers loads ``base.safetensors`` itself (embeddings, norms, LM head, biases, input
   scales, the codecs' base buffers) with its ``dtype`` and ``device_map``;
4. ``_process_model_after_weight_loading`` gives the codecs' base buffers back their stored
   dtypes and grows the live stack to the budget's prefix with the loader's
   :func:`~bitstack.runtime.loader.start_stack`, the code of ``bitstack.load``; the model then has
   ``model.bitstack`` (resizable) and a ``save_pretrained`` that writes the artifact.

The budget is the config's ``memory`` (None: the whole stack).  transformers keeps a folder's own
``quantization_config`` over one passed to ``from_pretrained``, so another budget is chosen with
``config=folder_config(FOLDER, memory=...)`` (:func:`folder_config`) or by resizing after the load.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from bitstack.artifact.opening import open_artifact
from bitstack.artifact.safetensors_io import DTYPES, sha256_file
from bitstack.errors import ArtifactError, InputError
from bitstack.memory import parse_memory
from bitstack.runtime.budget import check_floor, prefix_bytes_at
from bitstack.runtime.loader import bitstack_linears, start_stack
from bitstack.runtime.save import QUANT_METHOD
from bitstack.runtime.stack import LiveStack


class BitstackConfig(QuantizationConfigMixin):
    """``quantization_config`` of a BitStack artifact folder.

    Args:
        memory: budget for resident weight bytes (``"120MB"``, an int, or None: the whole stack).
        verify: check the base file's sha256 and every block's xxh3-128 as they are read.
    """

    def __init__(self, memory: int | str | None = None, verify: bool = True, **kwargs: Any):
        unknown = sorted(set(kwargs) - {"quant_method"})
        if unknown:
            raise InputError(f"unknown bitstack quantization_config key(s) {', '.join(unknown)}: the keys are memory and verify")
        self.quant_method = QUANT_METHOD
        self.memory = memory
        self.verify = bool(verify)
        self.post_init()

    def post_init(self) -> None:
        if self.memory is not None:
            parse_memory(self.memory)  # InputError now, not after the skeleton is built

    @property
    def budget(self) -> int | None:
        return None if self.memory is None else parse_memory(self.memory)


class BitstackHfQuantizer(HfQuantizer):
    """Loads the prefix of an artifact's block stack that fits the config's ``memory``."""

    requires_calibration = True  # only an artifact can be loaded: nothing is quantized on the fly

    def __init__(self, quantization_config: BitstackConfig, **kwargs: Any):
        if not kwargs.get("pre_quantized", True):
            raise InputError("the bitstack quantization config loads artifact folders only; to compress a model "
                             "run `bitstack compress`, then `bitstack export ART --format bitstack-hf -o DIR`")
        super().__init__(quantization_config, **kwargs)
        self._reader = None
        self._modules: dict = {}
        self._dtype: torch.dtype | None = None
        self._prefix: list[int] = []

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and len({str(d) for d in device_map.values()}) > 1:
            raise InputError("a BitStack model lives on one device: pass device_map='cpu', 'cuda', 'cuda:1' or "
                             "'auto' with one device (a device_map across devices is not supported)")

    def _process_model_before_weight_loading(self, model, **kwargs: Any):
        folder = _artifact_folder(model, kwargs.get("checkpoint_files"))
        config: BitstackConfig = self.quantization_config
        budget = config.budget
        reader = open_artifact(folder, verify=config.verify)
        try:
            manifest = reader.manifest
            dtype = kwargs.get("dtype") or model.dtype
            prefix = prefix_bytes_at(manifest, dtype)
            check_floor(manifest, prefix, budget)  # before transformers reads anything
            if config.verify and sha256_file(folder / manifest.base["file"]) != manifest.base["sha256"]:
                raise ArtifactError(f"{folder / manifest.base['file']} is corrupted: its sha256 does not match the manifest")
            self._modules = bitstack_linears(model, manifest, dtype)
            _ignore_unpersisted(model, manifest)
        except BaseException:
            reader.close()
            raise
        self._reader, self._dtype, self._prefix = reader, dtype, prefix
        return model

    def _process_model_after_weight_loading(self, model, **kwargs: Any):
        reader, self._reader = self._reader, None
        try:
            _restore_buffer_dtypes(model, reader)
            device = _single_device(model)
            budget = self.quantization_config.budget
            stack = LiveStack(reader, self._modules, 0, self._dtype, device, budget, self._prefix)
            start_stack(model, stack, stack.blocks_for(budget), budget)
        except BaseException:
            reader.close()
            raise
        self._modules = {}
        return model

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True  # model.save_pretrained writes the artifact (bitstack.runtime.save)

    @property
    def is_trainable(self) -> bool:
        return False


def _artifact_folder(model, checkpoint_files) -> Path:
    """The artifact folder ``from_pretrained`` is reading: that of its weights file (the base)."""
    if checkpoint_files:
        folder = Path(checkpoint_files[0]).parent
    else:
        folder = Path(getattr(model.config, "_name_or_path", "") or ".")
    if not (folder / "manifest.json").is_file():
        raise InputError(f"{folder} is not a BitStack artifact folder (no manifest.json next to its weights file)")
    return folder


def _ignore_unpersisted(model, manifest) -> None:
    """The base file also holds the model's non-persistent buffers (e.g. rotary tables), which
    transformers recomputes: not "unexpected" keys of its load report."""
    persisted = set(model.state_dict())
    extra = {re.escape(t.name) + "$" for t in manifest.base_tensors if t.name not in persisted}
    model._keys_to_ignore_on_load_unexpected = set(model._keys_to_ignore_on_load_unexpected or ()) | extra


def _restore_buffer_dtypes(model, reader) -> None:
    """Give every ``buffer`` base tensor (the codecs' base buffers, rotary tables) its stored dtype
    where transformers cast it to the load dtype, re-reading it from the base file."""
    wrong = []
    for spec in reader.manifest.base_tensors:
        if spec.kind != "buffer":
            continue
        owner_name, _, attr = spec.name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        tensor = owner._buffers.get(attr)
        if tensor is not None and tensor.dtype != DTYPES[spec.dtype]:
            wrong.append((owner, attr, spec.name, tensor.device))
    if not wrong:
        return
    from safetensors import safe_open

    with safe_open(str(reader.path / reader.manifest.base["file"]), framework="pt") as handle:
        for owner, attr, name, device in wrong:
            owner._buffers[attr] = handle.get_tensor(name).to(device)


def _single_device(model) -> torch.device:
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    if len(devices) != 1:
        raise InputError(f"a BitStack model lives on one device, this load spread it over {sorted(map(str, devices))}: "
                         "pass device_map='cpu' or one GPU")
    device = devices.pop()
    if device.type == "meta":
        raise ArtifactError("transformers left the model's tensors unloaded: is config.json's transformers_weights the artifact's base file?")
    return device


def folder_config(folder: str | Path, *, memory: int | str | None, verify: bool = True):
    """The transformers config of the artifact folder ``folder`` with another budget: pass it as
    ``from_pretrained(folder, config=folder_config(folder, memory="60MB"))``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    if not isinstance(getattr(config, "quantization_config", None), dict) or \
            config.quantization_config.get("quant_method") != QUANT_METHOD:
        raise InputError(f"{folder} is not a BitStack artifact folder loadable by transformers "
                         "(make one with `bitstack export ART --format bitstack-hf -o DIR`)")
    config.quantization_config = BitstackConfig(memory=memory, verify=verify).to_dict()
    return config


def register() -> None:
    """Register the ``"bitstack"`` quantization method with transformers (idempotent)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not BitstackConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)
        register_quantization_config(QUANT_METHOD)(BitstackConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not BitstackHfQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        register_quantizer(QUANT_METHOD)(BitstackHfQuantizer)
