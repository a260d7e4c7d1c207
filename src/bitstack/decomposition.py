"""What compression does to one decoder layer's linears: the activation scales, the folds, the
codec's decompositions, and which settings fall back for lack of calibration.  Pure functions on
tensors and modules (they read the weights and change nothing); :mod:`bitstack.compressor` drives
them layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bitstack.codecs import get_codec
from bitstack.codecs.base import Decomposition
from bitstack.config import CompressConfig
from bitstack.core.scaling import activation_scale
from bitstack.errors import InputError
from bitstack.models.architecture import plan_folds
from bitstack.models.rotation import has_input_rotation


def settings_fallbacks(config: CompressConfig, in_features: list[int]) -> dict[str, dict[str, int]]:
    """{setting: {value used instead: number of weights}} over the weights of ``in_features``
    inputs, where the codec falls back with this much calibration (``Codec.settings_used``)."""
    codec, settings = get_codec(config.codec), config.codec_settings()
    counts: dict[str, dict[str, int]] = {}
    for inputs in in_features:
        for name, value in codec.settings_used(settings, calib_tokens=config.nsamples * config.seqlen, in_features=inputs).items():
            counts.setdefault(name, {}).setdefault(str(value), 0)
            counts[name][str(value)] += 1
    return counts


def fallback_message(config: CompressConfig, fallbacks: dict[str, dict[str, int]]) -> str:
    """One line that says which settings fall back, for how many weights, and the fix."""
    parts = [f"{count} weights use {name} {value!r} instead of {getattr(config, name)!r}"
             for name, used in fallbacks.items() for value, count in used.items()]
    return (f"{'; '.join(parts)}: {config.nsamples} x {config.seqlen} calibration tokens are too few for them "
            f"(raise --nsamples or --seqlen; see --help)")


@dataclass(frozen=True, eq=False)
class DecomposeTask:
    """One weight to decompose: float32 (out, in) ``weight`` (scaled), float32 (in, in) ``hessian``
    of the scaled inputs (or None) and the ``seed`` of its randomness."""

    weight: torch.Tensor
    hessian: torch.Tensor | None
    seed: int


def decompose_each(codec: str, settings, tasks: list[DecomposeTask], *, niter: int, calib_tokens: int) -> list[Decomposition]:
    """The codec's decomposition of every task, in order, here (the default of :func:`compress`'s
    ``decompose``; :mod:`bitstack.distributed.compress` spreads them over ranks).  One
    ``Codec.decompose_many`` call, which may share work between the tasks (the planes codec's
    joint signs: one column loop per input width) and gives ``Codec.decompose``'s results."""
    results = get_codec(codec).decompose_many(dict(enumerate(t.weight for t in tasks)), settings, niter=niter,
                                              hessians=dict(enumerate(t.hessian for t in tasks)),
                                              calib_tokens=calib_tokens, seeds=dict(enumerate(t.seed for t in tasks)))
    return [results[i] for i in range(len(tasks))]


def layer_folds(model: nn.Module, layer: nn.Module, linears: dict[str, nn.Linear]) -> dict:
    """consumer name -> the fold rule of its input scale (:func:`~bitstack.models.architecture.plan_folds`),
    without row folds into a linear whose input rotates at run time (a rotation sits between the
    producer's rows and the consumer)."""
    folds = plan_folds(model.config.model_type, layer, linears, model.config)
    return {c: r for c, r in folds.items() if not (r.kind == "rows" and has_input_rotation(linears[c]))}


def layer_scales(linears: dict[str, nn.Linear], channel_stats: dict, folds: dict,
                 config: CompressConfig) -> dict[str, torch.Tensor]:
    """name -> the activation scale s (float32 (in,)) each linear's weight is decomposed with
    (W·diag(s)); linears that read one input (one fold rule) share one scale, raised to the
    configured or the codec's power.  Reads the weights, changes nothing."""
    codec, settings = get_codec(config.codec), config.codec_settings()
    scales = {name: activation_scale(st.norm_sum, st.count) for name, st in channel_stats.items()}
    rules = list({id(r): r for r in folds.values()}.values())
    groups = [list(rule.consumers) for rule in rules] + [[name] for name in linears if name not in folds]
    for consumers in groups:  # linears that read one input share one scale
        shared = torch.stack([scales[c] for c in consumers]).mean(dim=0)
        if config.scale_power == "auto":
            power = codec.auto_scale_power([linears[c].weight.detach().float() for c in consumers],
                                           [channel_stats[c].hessian for c in consumers], shared, settings)
        else:
            power = float(config.scale_power)
        shared = shared if power == 1 else shared ** power
        for consumer in consumers:
            scales[consumer] = shared
    return scales


def decompose_linears(linears: dict[str, nn.Linear], scales: dict[str, torch.Tensor], channel_stats: dict,
                      config: CompressConfig, prefix: str, first_weight: int,
                      decompose=decompose_each) -> dict[str, Decomposition]:
    """name -> the codec's decomposition of W·diag(s) of each linear (``prefix``.name in errors);
    ``first_weight`` numbers the first linear among all decomposed weights (it seeds the codec's
    randomness, e.g. avd's truncated SVDs).  Reads the weights, changes nothing."""
    tasks: list[DecomposeTask] = []
    for number, (name, linear) in enumerate(linears.items()):
        scaled = linear.weight.detach().float() * scales[name][None, :]
        if not torch.isfinite(scaled).all():
            raise InputError(f"{prefix}.{name} has NaN or infinite weights or calibration activations: the model cannot be compressed")
        s, hessian = scales[name], channel_stats[name].hessian
        tasks.append(DecomposeTask(scaled, None if hessian is None else hessian / s[:, None] / s[None, :],  # of x / s
                                   config.seed + first_weight + number))
    results = decompose(config.codec, config.codec_settings(), tasks, niter=config.niter,
                        calib_tokens=config.nsamples * config.seqlen)
    return dict(zip(linears, results))
