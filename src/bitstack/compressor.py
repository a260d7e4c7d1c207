"""``bitstack.compress``: float causal LM -> BitStack artifact.

Pipeline (each step a call into the pure functions of :mod:`bitstack.core`):

1. load the float model and tokenizer; find the decoder layers and their linears;
2. draw calibration samples and capture the hidden states entering the first layer;
3. layer by layer: run the layer while accumulating per-channel activation norms of every
   linear's input; turn them into scales s; fold 1/s into the producing op where the family
   table allows (else keep it as a run-time input scale); decompose every W·diag(s) with AVD;
   write the layer's blocks to a work file;
4. order all blocks into the universal stack, write base weights and block shards in stack
   order, the tokenizer, and finally the manifest; move the directory into place.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from bitstack import __version__
from bitstack.artifact.layout import block_tensor_names
from bitstack.artifact.manifest import Manifest, WeightEntry
from bitstack.artifact.safetensors_io import write_safetensors
from bitstack.artifact.writer import BaseTensorSpec, finish, prepare_output, write_base, write_shards, write_tokenizer
from bitstack.calibration.layerwise import capture_layer_inputs, run_layer
from bitstack.calibration.samples import calibration_samples, check_source
from bitstack.config import CompressConfig
from bitstack.core.avd import ResidualBlock, avd_decompose, block_nbytes
from bitstack.core.ordering import WeightStats, universal_order
from bitstack.core.scaling import activation_scale
from bitstack.errors import InputError
from bitstack.models.architecture import find_decoder_layers, layer_linears, plan_folds
from bitstack.models.folding import fold_into_norm, fold_into_rows
from bitstack.runtime.loader import default_device, resolve_dtype


def _layer_file(work: Path, index: int) -> Path:
    return work / "work" / f"layer-{index:05d}.safetensors"


def _base_tensors(model: nn.Module, skip: set[str], input_scales: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[list[BaseTensorSpec], dict[str, str]]:
    """Every parameter and buffer not decomposed (each storage once), plus run-time scales."""
    specs: list[BaseTensorSpec] = []
    aliases: dict[str, str] = {}
    first_name: dict[int, str] = {}
    for kind, named in (("param", model.named_parameters(remove_duplicate=False)), ("buffer", model.named_buffers(remove_duplicate=False))):
        for name, tensor in named:
            if name in skip:
                continue
            key = id(tensor)
            if key in first_name:
                aliases[name] = first_name[key]
                continue
            first_name[key] = name
            value = tensor.detach()
            if kind == "param" and value.is_floating_point():
                value = value.to(dtype)
            specs.append(BaseTensorSpec(name, value.cpu(), kind))
    for name, inv_scale in input_scales.items():
        specs.append(BaseTensorSpec(f"{name}.input_scale", inv_scale.to(dtype).cpu(), "param"))
    return specs, aliases


def compress(
    model: str | nn.Module,
    output: str | Path,
    config: CompressConfig | None = None,
    *,
    tokenizer=None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Compress ``model`` into a BitStack artifact directory at ``output``.

    Args:
        model: a model name/path/id (see :func:`bitstack.models.source.load_float_model`) or a
            transformers causal LM (its weights are converted to float32 and modified in place).
        output: artifact directory to create.
        config: compression settings (defaults: :class:`CompressConfig`).
        tokenizer: required when ``model`` is a module; stored in the artifact.
        device: where the math runs (default: CUDA if available, else CPU).
        overwrite: replace an existing ``output``.
    Returns:
        The artifact path.
    """
    from bitstack.models.source import load_float_model

    config = config or CompressConfig()
    device = torch.device(device) if device is not None else default_device()
    storage_dtype = resolve_dtype(config.dtype, "bfloat16")
    started = time.time()
    check_source(config.calib)
    if Path(output).exists() and not overwrite:
        raise InputError(f"output {output} already exists: choose another path or pass --overwrite")
    if isinstance(model, (str, Path)):
        loaded = load_float_model(str(model))
        model, tokenizer, source = loaded.model, loaded.tokenizer, loaded.source
    else:
        if tokenizer is None:
            raise InputError("compress() needs the tokenizer when given a model object")
        source = getattr(model.config, "_name_or_path", "") or type(model).__name__
    model.eval().float()
    decoder = find_decoder_layers(model)
    all_linears = [layer_linears(layer) for layer in decoder.layers]  # fails fast on odd layers
    model.to(device)
    samples = calibration_samples(config.calib, model, tokenizer, config.nsamples, config.seqlen, config.seed,
                                  batch_size=config.batch_size, progress=progress)
    work = prepare_output(output, overwrite=overwrite)
    (work / "work").mkdir(exist_ok=True)
    inputs = capture_layer_inputs(model, decoder.layers[0], samples, config.batch_size, device)

    weights: list[WeightEntry] = []
    stats: list[WeightStats] = []
    input_scales: dict[str, torch.Tensor] = {}
    decomposed: set[str] = set()
    model_type = model.config.model_type
    bar = tqdm(total=sum(len(l) for l in all_linears), desc="decomposing", unit="weight", disable=not progress)
    for index, (layer, linears) in enumerate(zip(decoder.layers, all_linears)):
        inputs, channel_stats = run_layer(layer, inputs, linears)
        scales = {name: activation_scale(st.norm_sum, st.count) for name, st in channel_stats.items()}
        folds = plan_folds(model_type, layer, linears, model.config)
        for rule in {id(r): r for r in folds.values()}.values():
            shared = torch.stack([scales[c] for c in rule.consumers]).mean(dim=0)  # identical inputs -> identical s
            for consumer in rule.consumers:
                scales[consumer] = shared
            fold = fold_into_norm if rule.kind == "norm" else fold_into_rows
            fold(layer.get_submodule(rule.producer), 1.0 / shared)
        layer_tensors: list[tuple[str, torch.Tensor]] = []
        for name, linear in linears.items():
            full = f"{decoder.path}.{index}.{name}"
            s = scales[name]
            rank = min(config.rank, linear.out_features, linear.in_features)
            result = avd_decompose(
                linear.weight.detach().float() * s[None, :], config.niter, rank,
                oversample=config.svd_oversample, power_iters=config.svd_power_iters, seed=config.seed + len(weights),
            )
            for i, block in enumerate(result.blocks):
                for tensor_name, tensor in zip(block_tensor_names(full, i), (block.u, block.v, block.signs)):
                    layer_tensors.append((tensor_name, tensor.cpu()))
            if name not in folds:
                input_scales[full] = (1.0 / s).cpu()
            nbytes = block_nbytes(linear.out_features, linear.in_features, rank)
            weights.append(WeightEntry(full, linear.out_features, linear.in_features, rank, config.niter, nbytes,
                                       linear.bias is not None, name not in folds))
            stats.append(WeightStats(tuple(result.residual_sq), nbytes))
            decomposed.add(f"{full}.weight")
            bar.update(1)
        write_safetensors(_layer_file(work, index), layer_tensors)
        for linear in linears.values():  # the dense weight is no longer needed
            linear.weight.data = torch.empty(0, device=linear.weight.device)
    bar.close()
    del inputs

    order = universal_order(stats, config.sort)
    base_specs, aliases = _base_tensors(model, decomposed, input_scales, storage_dtype)
    base_section, base_bytes = write_base(work, base_specs, aliases)

    from safetensors import safe_open

    handles: dict[int, object] = {}
    layer_of = {w.name: int(w.name[len(decoder.path) + 1 :].split(".", 1)[0]) for w in weights}

    def get_block(w: int, i: int) -> ResidualBlock:
        layer = layer_of[weights[w].name]
        if layer not in handles:
            handles[layer] = safe_open(str(_layer_file(work, layer)), framework="pt")
        u, v, signs = (handles[layer].get_tensor(n) for n in block_tensor_names(weights[w].name, i))
        return ResidualBlock(signs=signs, u=u, v=v)

    shards, stack = write_shards(work, weights, order, get_block, shard_bytes=int(config.shard_mb * 1000 * 1000), progress=progress)
    handles.clear()
    tokenizer_section = write_tokenizer(work, tokenizer)
    prefix = [base_bytes]
    for block in stack:
        prefix.append(prefix[-1] + block.bytes)
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    generation = getattr(model, "generation_config", None)
    manifest = Manifest(
        library_version=__version__,
        model={"source": source, "config": config_dict, "generation_config": generation.to_dict() if generation is not None else None},
        tokenizer=tokenizer_section,
        compression={**config.to_dict(), "seconds": round(time.time() - started, 1)},
        base=base_section,
        weights=tuple(weights),
        shards=tuple(shards),
        stack=tuple(stack),
        floor_blocks=len(weights),
        base_bytes=base_bytes,
        prefix_bytes=tuple(prefix),
    )
    for file in (work / "work").iterdir():
        file.unlink()
    (work / "work").rmdir()
    return finish(output, work, manifest, overwrite=overwrite)
