"""``bitstack.compress``: float causal LM -> BitStack artifact.

Pipeline (each step a call into pure functions: :mod:`bitstack.core`, the codec's, the sort's):

1. load the float model and tokenizer; find the decoder layers and their linears;
2. draw calibration samples and capture the hidden states entering the first layer;
3. layer by layer: run the layer while accumulating per-channel activation norms of every
   linear's input (and the Hessians Σ x xᵀ when the codec asks for them); turn them into scales s
   (raised to the configured or the codec's power); fold 1/s into the producing op where the
   family table allows (else keep it as a run-time input scale); decompose every W·diag(s) with
   the codec (:class:`bitstack.codecs.base.Codec`); write the layer's blocks to a work file;
4. order all blocks into the universal stack, write base weights and block shards in stack
   order, the tokenizer, and finally the manifest; move the directory into place.

Progress is saved per layer in ``<out>.partial/work/`` (:mod:`bitstack.artifact.workdir`): a run
that is killed and restarted with the same command resumes after the last finished layer and
writes the same bytes as an uninterrupted run.  The hidden states entering the first unfinished
layer are recomputed by running the finished layers with their float weights (as the first run
did, before folding), then the saved folded parameters are put back.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from bitstack import __version__
from bitstack.artifact.atomic import atomic_write_bytes
from bitstack.artifact.layout import block_tensor_names
from bitstack.artifact.manifest import MANIFEST_NAME, Manifest, WeightEntry
from bitstack.artifact.workdir import LayerRecord, WorkDir, run_fingerprint
from bitstack.artifact.writer import BaseTensorSpec, finish, partial_dir, write_base, write_shards, write_tokenizer
from bitstack.calibration.layerwise import LayerInputs, capture_layer_inputs, run_layer
from bitstack.calibration.samples import calibration_samples, check_source, source_digest
from bitstack.codecs import get_codec
from bitstack.codecs.base import Block, WeightShape
from bitstack.config import CompressConfig, resolve_dtype
from bitstack.decomposition import (decompose_each, decompose_linears, fallback_message, layer_folds, layer_scales,
                                    settings_fallbacks)
from bitstack.devices import resolve_device
from bitstack.errors import BitstackError, InputError, StorageError, UnsupportedModelError, storage_error
from bitstack.models.architecture import find_decoder_layers, layer_linears
from bitstack.models.folding import fold_into_norm, fold_into_rows
from bitstack.models.rotation import rotate_model, rotation_section
from bitstack.models.source import FloatModel, load_float_model
from bitstack.sorting.driver import SortSettings, cache_dir, sort_artifact
from bitstack.sorting.strategies import WeightStats, universal_order

SORTED_DIR = "sorted"  # inside <out>.partial/: the re-sorted artifact, renamed to <out> when complete


def _check_output(output: Path, overwrite: bool) -> None:
    """Fail fast, before any work, on an output path that cannot be written."""
    if output.exists() and not overwrite:
        raise InputError(f"output {output} already exists: choose another path or pass --overwrite")
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} is a file, not an artifact folder: remove it or choose another path")
    if not output.parent.is_dir():
        raise InputError(f"output folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise InputError(f"output folder {output.parent} is not writable")
    if partial_dir(output).exists() and not partial_dir(output).is_dir():
        raise InputError(f"{partial_dir(output)} exists and is not a folder: remove it")
    WorkDir.check_free(output)  # a second run on the same output, refused before its model loads


def _compress_layer(layer: nn.Module, linears: dict[str, nn.Linear], inputs: LayerInputs, model: nn.Module,
                    config: CompressConfig, prefix: str, first_weight: int, decompose=decompose_each
                    ) -> tuple[LayerInputs, tuple[list[tuple[str, torch.Tensor]], LayerRecord]]:
    """Calibrate, scale, fold and decompose one layer (modified in place).

    Returns the layer's outputs (computed before folding: the next layer's inputs), its block
    tensors and its :class:`LayerRecord`.
    """
    codec = get_codec(config.codec)
    outputs, channel_stats = run_layer(layer, inputs, linears, hessians=codec.needs_hessian(config.codec_settings()))
    folds = layer_folds(model, layer, linears)
    scales = layer_scales(linears, channel_stats, folds, config)
    for rule in {id(r): r for r in folds.values()}.values():
        fold = fold_into_norm if rule.kind == "norm" else fold_into_rows
        fold(layer.get_submodule(rule.producer), 1.0 / scales[rule.consumers[0]])
    results = decompose_linears(linears, scales, channel_stats, config, prefix, first_weight, decompose)
    blocks: list[tuple[str, torch.Tensor]] = []
    record = LayerRecord([], {}, {}, {})
    for name, linear in linears.items():
        full, result = f"{prefix}.{name}", results[name]
        shape = WeightShape(linear.out_features, linear.in_features, result.params)
        for i, block in enumerate(result.blocks):
            for tensor_name, tensor in zip(block_tensor_names(full, i, codec.block_parts(shape)), block.tensors):
                blocks.append((tensor_name, tensor.cpu()))
        if result.base:
            record.base[full] = {part: tensor.cpu() for part, tensor in result.base.items()}
        if name not in folds:
            record.input_scales[full] = (1.0 / scales[name]).cpu()
        record.weights.append(WeightEntry(full, linear.out_features, linear.in_features, codec.name, result.params,
                                          config.niter, codec.block_nbytes(shape), linear.bias is not None,
                                          name not in folds))
        record.residual_sq[full] = tuple(result.residual_sq)
    dense = {f"{name}.weight" for name in linears}
    record.state.update({n: p.detach().cpu().clone() for n, p in layer.named_parameters() if n not in dense})
    return outputs, (blocks, record)


def _base_tensors(model: nn.Module, skip: set[str], input_scales: dict[str, torch.Tensor], dtype: torch.dtype,
                  weights: list[WeightEntry], codec_base: dict[str, dict[str, torch.Tensor]]
                  ) -> tuple[list[BaseTensorSpec], dict[str, str]]:
    """Every parameter and buffer not decomposed (each storage once), plus run-time scales and
    the codecs' base buffers of every weight (stored as the codec declares them)."""
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
    for weight in weights:
        for part, (part_dtype, _) in get_codec(weight.codec).base_buffers(weight).items():
            specs.append(BaseTensorSpec(f"{weight.name}.{part}", codec_base[weight.name][part].to(part_dtype).cpu(), "buffer"))
    return specs, aliases


def _sampler(model: nn.Module, config: CompressConfig, device: torch.device) -> nn.Module:
    """The model that samples ``self`` calibration text: on CPU a bfloat16 copy (about 4x faster
    than float32 there; the copy lives only while sampling), elsewhere the model itself."""
    if config.calib != "self" or device.type != "cpu":
        return model
    return copy.deepcopy(model).to(torch.bfloat16)


def compress(
    model: str | nn.Module | FloatModel,
    output: str | Path,
    config: CompressConfig | None = None,
    *,
    tokenizer=None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
    decompose=decompose_each,
) -> Path:
    """Compress ``model`` into a BitStack artifact directory at ``output``.

    Args:
        model: a model name/path/id (see :func:`bitstack.models.source.load_float_model`), what
            that function returned (the model, its tokenizer and its source name), or a
            transformers causal LM (its weights are converted to float32 and modified in place).
        output: artifact directory to create.
        config: compression settings (defaults: :class:`CompressConfig`).
        tokenizer: required when ``model`` is a module; stored in the artifact.
        device: where the math runs (default: CUDA if available, else CPU).
        overwrite: replace an existing ``output``.
        decompose: how each layer's weights are decomposed (:func:`decompose_each`, or a function
            of the same signature and results, e.g. spread over ranks by
            :mod:`bitstack.distributed.compress`).
    Returns:
        The artifact path.
    """
    if config is None:
        config = CompressConfig()
    elif not isinstance(config, CompressConfig):
        raise InputError(f"config must be a bitstack.CompressConfig, got {type(config).__name__}")
    if not isinstance(output, (str, os.PathLike)) or not str(output):
        raise InputError(f"output must be a folder path, got {output!r}")
    output = Path(output)
    device = resolve_device(device)
    storage_dtype = resolve_dtype(config.dtype, "bfloat16")
    check_source(config.calib)
    _check_output(output, overwrite)
    if isinstance(model, (str, os.PathLike)):
        loaded = load_float_model(str(model))
        model, tokenizer, source = loaded.model, loaded.tokenizer, loaded.source
    elif isinstance(model, FloatModel):
        model, tokenizer, source = model.model, model.tokenizer, model.source
    elif isinstance(model, nn.Module):
        if tokenizer is None:
            raise InputError("compress() needs the tokenizer when given a model object")
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    else:
        raise InputError(f"model must be a model name, a path or a transformers model, got {type(model).__name__}")
    if not hasattr(model, "config") or not hasattr(model.config, "to_dict"):
        raise UnsupportedModelError(f"{type(model).__name__} is not a transformers model: it has no config")
    model.eval().float()
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise InputError(f"the model's {name} has NaN or infinite values: it cannot be compressed")
    if config.rotate == "hadamard":
        rotate_model(model, config.seed)
    decoder = find_decoder_layers(model)
    all_linears = [layer_linears(layer) for layer in decoder.layers]  # fails fast on odd layers
    fallbacks = settings_fallbacks(config, [linear.in_features for linears in all_linears for linear in linears.values()])
    if fallbacks:
        print(f"bitstack: {fallback_message(config, fallbacks)}", file=sys.stderr)
    fingerprint = run_fingerprint(config.to_dict(), source, model, device, source_digest(config.calib))
    created, work = True, None
    phases = 3 if config.sort in ("proxy", "random") else 4

    def phase(number: int, name: str, detail: str) -> None:
        if progress:
            print(f"bitstack: [{number}/{phases}] {name}: {detail}", file=sys.stderr, flush=True)

    try:
        work = WorkDir.resume(output, fingerprint, overwrite=overwrite)  # None: nothing to resume
        created = work is None
        model.to(device)
        done = work.finished_layers(len(decoder.layers)) if work is not None else 0
        samples = work.load_samples(config.nsamples, config.seqlen) if work is not None else None
        if samples is None and done < len(decoder.layers):
            phase(1, "calibration text", f"{config.nsamples} x {config.seqlen} tokens from {config.calib!r}")
            samples = calibration_samples(config.calib, _sampler(model, config, device), tokenizer, config.nsamples,
                                          config.seqlen, config.seed, batch_size=config.batch_size, progress=progress)
        if work is None:
            work = WorkDir.create(output, fingerprint)
        if samples is not None and not work.has_samples():
            work.save_samples(samples)
        if done and progress:
            print(f"resuming the compression in {work.partial}: {done} of {len(decoder.layers)} layers are done", file=sys.stderr)

        weights: list[WeightEntry] = []
        stats: list[WeightStats] = []
        input_scales: dict[str, torch.Tensor] = {}
        codec_base: dict[str, dict[str, torch.Tensor]] = {}
        decomposed: set[str] = set()
        inputs = None
        phase(2, "decomposing", f"{len(decoder.layers)} layers, each calibrated on {config.nsamples} x {config.seqlen} tokens")
        bar = tqdm(total=sum(len(l) for l in all_linears), desc="decomposing", unit="weight", disable=not progress)
        for index, (layer, linears) in enumerate(zip(decoder.layers, all_linears)):
            if index < done:
                if done < len(decoder.layers):  # the float layer's outputs are the next layer's inputs
                    if inputs is None:
                        inputs = capture_layer_inputs(model, decoder.layers[0], samples, config.batch_size, device)
                    inputs, _ = run_layer(layer, inputs, {})
                record = work.load_layer(index)
            else:
                if inputs is None:
                    inputs = capture_layer_inputs(model, decoder.layers[0], samples, config.batch_size, device)
                bar.set_postfix_str(f"layer {index}")  # shown at once: the first update can be minutes away
                inputs, record = _compress_layer(layer, linears, inputs, model, config, f"{decoder.path}.{index}", len(weights),
                                                decompose)
                work.save_layer(index, *record)
                record = record[1]
            with torch.no_grad():
                for name, value in record.state.items():  # the folded norms / producer rows
                    layer.get_parameter(name).copy_(value)
            weights += record.weights
            for entry in record.weights:
                stats.append(WeightStats(record.residual_sq[entry.name], entry.block_bytes))
                decomposed.add(f"{entry.name}.weight")
            input_scales.update(record.input_scales)
            codec_base.update(record.base)
            for linear in linears.values():  # the dense weight is no longer needed
                linear.weight.data = torch.empty(0, device=linear.weight.device)
            bar.update(len(linears))
        bar.close()
        del inputs
        work.clear_outputs()  # leftovers of a killed final stage
        phase(3, "writing the artifact", f"{sum(e.num_blocks for e in weights)} blocks")

        # fisher/average/greedy need the finished artifact: they start from proxy and re-sort below
        order = universal_order(stats, config.sort if config.sort in ("proxy", "random") else "proxy", seed=config.seed)
        base_specs, aliases = _base_tensors(model, decomposed, input_scales, storage_dtype, weights, codec_base)
        base_section, base_bytes = write_base(work.partial, base_specs, aliases)

        handles: dict[int, object] = {}
        layer_of = {w.name: int(w.name[len(decoder.path) + 1 :].split(".", 1)[0]) for w in weights}

        def get_block(w: int, i: int) -> Block:
            layer = layer_of[weights[w].name]
            if layer not in handles:
                handles[layer] = safe_open(str(work.layer_path(layer)), framework="pt")
            parts = get_codec(weights[w].codec).block_parts(weights[w])
            names = block_tensor_names(weights[w].name, i, parts)
            return Block(**{part: handles[layer].get_tensor(n) for (part, _, _), n in zip(parts, names)})

        shards, stack = write_shards(work.partial, weights, order, get_block, shard_bytes=int(config.shard_mb * 1000 * 1000), progress=progress)
        handles.clear()
        tokenizer_section = write_tokenizer(work.partial, tokenizer)
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
            compression={**config.to_dict(), **({"fallbacks": fallbacks} if fallbacks else {})},
            base=base_section,
            weights=tuple(weights),
            shards=tuple(shards),
            stack=tuple(stack),
            floor_blocks=len(weights),
            base_bytes=base_bytes,
            prefix_bytes=tuple(prefix),
            rotation=rotation_section(model),
        )
        manifest.validate()
        if config.sort in ("proxy", "random"):
            work.remove_work()  # kept until here: a failure before this point resumes after the last layer
            return finish(output, work.partial, manifest, overwrite=overwrite)
        # measured orders re-sort the complete artifact into <out>.partial/sorted/ while the work is
        # kept: a failure during the sort resumes with every layer done (and the sort's measurements
        # cached in <out>.partial.sortcache/), and writes the same bytes
        atomic_write_bytes(work.partial / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
        sorted_dir = work.partial / SORTED_DIR
        phase(4, f"sorting the stack ({config.sort})", "validation passes on the artifact: a fixed cost that does "
              "not depend on the calibration size")
        sort_artifact(work.partial, config.sort, SortSettings(val=config.calib, seed=config.seed, device=str(device)),
                      progress=progress, dest=sorted_dir)
        manifest = Manifest.from_json((sorted_dir / MANIFEST_NAME).read_bytes())
        path = finish(output, sorted_dir, manifest, overwrite=overwrite)
        work.remove()
        shutil.rmtree(cache_dir(work.partial), ignore_errors=True)
        return path
    except StorageError:
        raise  # the disk, not the input: keep the work for a resume
    except BitstackError:
        if created and work is not None:
            work.remove()  # bad input: leave nothing behind
        raise
    except OSError as err:
        raise storage_error(err, "compression stopped", "rerun the same command: it resumes after the last finished layer") from err
    finally:
        if work is not None:
            work.release()  # a kill or another error keeps the work for a resume
