"""``bitstack.load``: build a transformers model from an artifact at a memory budget.

The model skeleton is built on the meta device (no memory), every decomposed linear is replaced
by an empty :class:`BitStackLinear`, the base tensors are assigned from ``base.safetensors``, and
the live stack grows from no block to the longest prefix that fits the budget through
:meth:`LiveStack.move_to`, the code of every resize: the prefix is chosen once, and nothing else is
read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bitstack.artifact.opening import open_artifact
from bitstack.artifact.reader import CONVERT_CHUNK_BYTES
from bitstack.config import resolve_dtype
from bitstack.devices import resolve_device
from bitstack.errors import ArtifactError, InputError
from bitstack.memory import parse_budget
from bitstack.models.rotation import prepare_loaded_rotations
from bitstack.remote.urls import with_cache_dir
from bitstack.runtime.budget import budget_bytes, check_floor, memory_bytes, prefix_bytes_at
from bitstack.runtime.linear import BitStackLinear
from bitstack.runtime.save import install_save_hook
from bitstack.runtime.stack import LiveStack


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _build_skeleton(manifest) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config_dict = dict(manifest.model["config"])
    model_type = config_dict.pop("model_type")
    config_dict.pop("auto_map", None)  # never run code named by an artifact: the built-in class only
    try:
        config = AutoConfig.for_model(model_type, **config_dict)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        if manifest.model.get("generation_config"):
            model.generation_config = GenerationConfig.from_dict(manifest.model["generation_config"])
    except Exception as err:  # transformers raises many types for a config it cannot build
        message = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ArtifactError(f"the artifact's model config ({model_type!r}) cannot be built by this transformers: {message}") from err
    return model


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
    except AttributeError as err:
        raise ArtifactError(f"the artifact has tensor {name!r}, which the model does not have") from err
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    elif attr in owner._buffers:
        owner._buffers[attr] = tensor
    else:
        raise ArtifactError(f"the artifact has tensor {name!r}, which the model does not have")


def _share(model: nn.Module, alias: str, target: str) -> None:
    source_owner, _, source_attr = target.rpartition(".")
    owner_name, _, attr = alias.rpartition(".")
    source = model.get_submodule(source_owner)
    owner = model.get_submodule(owner_name) if owner_name else model
    if source_attr in source._parameters and attr in owner._parameters:
        owner._parameters[attr] = source._parameters[source_attr]
    elif source_attr in source._buffers and attr in owner._buffers:
        owner._buffers[attr] = source._buffers[source_attr]
    else:
        raise ArtifactError(f"the artifact ties {alias!r} to {target!r}, which the model cannot do")


def load(path: str | Path, memory: str | int | None = None, *, device: torch.device | str | None = None,
         dtype: torch.dtype | str | None = None, verify: bool = True, progressive: bool = False,
         on_progress=None, cache_dir: str | Path | None = None, remote=None, shard=None) -> nn.Module:
    """Load a BitStack artifact as a transformers ``PreTrainedModel`` within ``memory``.

    Args:
        path: artifact directory, or its URL (``https://HOST/PATH/ART``, ``hf://ORG/REPO[@REV]``:
            only the budget's prefix of the stack is fetched, into a local cache; docs/remote.md).
        memory: budget for resident weight bytes (``"120MB"``, ``"1.5GiB"``, an int, or bits per
            decomposed parameter: ``"3.5bits"``); the model
            gets the longest prefix of the block stack that fits.  ``None`` loads the whole stack.
            In kernel mode (CUDA with Triton, for the codecs that have kernels) the prefix also
            leaves room for repacking the weights, now and at a later shrink
            (:func:`~bitstack.runtime.budget.repack_reserve`), so that the peak stays within the
            budget; a budget below the floor plus that room still loads the floor.
        device: where the weights live (default: CUDA if available, else CPU).
        dtype: dtype of the non-decomposed weights and of computation (default: the artifact's
            storage dtype).  Blocks and the codecs' base buffers keep their stored dtypes.
        verify: check every tensor read against the manifest's sha256.
        progressive: return the model at the floor at once, then grow it to ``memory`` in the
            background as blocks arrive (``model.bitstack.progressive``, a
            :class:`~bitstack.remote.progressive.ProgressiveLoader`; ``on_progress(Progress)`` is
            called on its thread after each step).
        cache_dir, remote: for a URL, the cache folder and the
            :class:`~bitstack.remote.urls.RemoteOptions` (docs/remote.md).
        shard: load one rank's part of the model (a :class:`bitstack.distributed.shard.LayerShard`:
            its layers' weights, the base tensors it needs, its sub-stack); ``memory`` is then that
            rank's budget.  The other tensors stay on the meta device.
    Returns:
        The model in eval mode; ``model.bitstack`` describes the loaded stack, and
        :func:`bitstack.memory_bytes` gives its resident bytes (always ≤ ``memory``).
    """
    wanted = None if memory is None else parse_budget(memory)  # fails fast, before the artifact is opened
    device = resolve_device(device)
    reader = open_artifact(path, verify=verify, remote=with_cache_dir(remote, cache_dir))
    try:
        if shard is not None:
            reader = shard.select(reader)  # the part's manifest and reader: everything below is unchanged
        manifest = reader.manifest
        dtype = resolve_dtype(dtype, manifest.compression.get("dtype", "bfloat16"))
        prefix = prefix_bytes_at(manifest, dtype)
        budget = budget_bytes(manifest, wanted, dtype)
        check_floor(manifest, prefix, budget)  # fails fast, before the model is built
        model = _build_skeleton(manifest)
        stack = LiveStack(reader, bitstack_linears(model, manifest, dtype), 0, dtype, device, budget, prefix)
        try:
            prepare_loaded_rotations(model, manifest.rotation)
        except AttributeError as err:
            raise ArtifactError(f"the artifact rotates a module the model does not have: {err}") from err
        count = stack.blocks_for(budget)  # kernel mode: with room for the repacks (budget.repack_reserve)
        final, count = count, (min(count, manifest.floor_blocks) if progressive else count)
        # Converting a base tensor to ``dtype`` holds one chunk of its stored bytes on top of the
        # base read so far: a chunk no larger than the blocks still to be read (at least the
        # floor's, one per weight) keeps the peak within the final resident bytes, so within the
        # budget.  (Only an artifact without blocks would leave no room: one stored element.)
        chunk = max(1, min(CONVERT_CHUNK_BYTES, prefix[count] - prefix[0]))
        for name, tensor in reader.read_base(dtype, chunk_bytes=chunk).items():
            _assign(model, name, tensor.to(device))
        for alias, target in manifest.base["aliases"].items():
            _share(model, alias, target)
        missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                   if t.device.type == "meta" and (shard is None or shard.holds(n))]
        if missing:
            raise ArtifactError(f"the artifact lacks tensors the model needs: {', '.join(missing[:5])}")
        start_stack(model, stack, count, budget)
    except BaseException:
        reader.close()
        raise
    if progressive:
        from bitstack.remote.progressive import ProgressiveLoader

        stack.progressive = ProgressiveLoader(model, budget, final, on_progress).start()
    return model


def start_stack(model: nn.Module, stack: LiveStack, count: int, budget: int | None) -> None:
    """Attach ``stack`` (holding no block yet) to ``model`` (its base assigned) and grow it to the
    first ``count`` blocks; ``model.save_pretrained`` then writes the artifact
    (:mod:`bitstack.runtime.save`).  Every load ends here (:func:`load`, and transformers'
    ``from_pretrained`` through :mod:`bitstack.integrations.hf`)."""
    model.eval()
    model.bitstack = stack
    stack.attach(model)
    stack.move_to(count, budget)  # from no block to the prefix, as a resize grows
    resident = memory_bytes(model)
    expected = stack.prefix_bytes[count]
    if resident != expected:
        raise ArtifactError(f"loaded model holds {resident} bytes, the manifest predicts {expected}")
    install_save_hook(model)


def bitstack_linears(model: nn.Module, manifest, dtype: torch.dtype) -> dict[str, BitStackLinear]:
    """Replace every decomposed linear of ``model`` by an empty :class:`BitStackLinear` on the meta
    device; returns them by weight name."""
    modules: dict[str, BitStackLinear] = {}
    for weight in manifest.weights:
        parent_name, _, child = weight.name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            original = getattr(parent, child)
        except AttributeError as err:
            raise ArtifactError(f"the artifact decomposes {weight.name!r}, which the model does not have") from err
        if not isinstance(original, nn.Linear) or (original.out_features, original.in_features) != (weight.out_features, weight.in_features):
            raise ArtifactError(f"{weight.name!r} in the artifact does not match the model's layer")
        module = BitStackLinear.for_weight(weight, device="meta", dtype=dtype)
        setattr(parent, child, module)
        modules[weight.name] = module
    return modules


def load_tokenizer(path: str | Path, *, cache_dir: str | Path | None = None, remote=None):
    """The tokenizer stored in an artifact (a folder, or a URL as for :func:`load`)."""
    with open_artifact(path, verify=True, remote=with_cache_dir(remote, cache_dir)) as reader:
        tokenizer = reader.load_tokenizer()
    if tokenizer is None:
        raise InputError(f"artifact {path} has no tokenizer")
    return tokenizer
