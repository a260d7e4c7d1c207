"""The layer-by-layer calibration pass.

The calibration tokens are run through the embedding once; the hidden states entering the first
decoder layer are captured (with the keyword arguments the model passes its layers: rotary
embeddings, masks, positions).  Each layer is then run on those states on its own, with hooks that
fold every linear's input into running per-channel statistics — no linear input is ever kept —
and its outputs become the next layer's inputs.  Only one layer's hidden states are alive at a
time: (nsamples, seqlen, hidden) floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bitstack.core.scaling import channel_norm_sum


class _Captured(Exception):
    pass


@dataclass
class LayerInputs:
    """Inputs of one decoder layer, one entry per calibration batch.

    hidden: list of float tensors (batch, seqlen, hidden).
    kwargs: list of dicts passed to the layer besides the hidden states (shared by all layers).
    """

    hidden: list[torch.Tensor]
    kwargs: list[dict] = field(default_factory=list)


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, first_layer: nn.Module, samples: torch.Tensor, batch_size: int, device: torch.device) -> LayerInputs:
    """Run ``samples`` (int64 (n, seqlen)) up to ``first_layer`` and keep what enters it."""
    captured = LayerInputs(hidden=[])

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hidden)
        kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        captured.kwargs.append(kwargs)
        raise _Captured

    handle = first_layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, samples.shape[0], batch_size):
            ids = samples[start : start + batch_size].to(device)
            try:
                model(input_ids=ids, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


@dataclass
class ChannelStats:
    """Running Σ_i ||x_i[:, j]||_2 (float32 (in,)) and the sample count for one linear."""

    norm_sum: torch.Tensor
    count: int = 0


@torch.no_grad()
def run_layer(layer: nn.Module, inputs: LayerInputs, linears: dict[str, nn.Linear]) -> tuple[LayerInputs, dict[str, ChannelStats]]:
    """Run one layer on every batch; return its outputs and each linear's input statistics."""
    stats: dict[str, ChannelStats] = {}
    handles = []
    for name, linear in linears.items():
        entry = ChannelStats(torch.zeros(linear.in_features, dtype=torch.float32, device=linear.weight.device))
        stats[name] = entry

        def hook(module, args, entry=entry):
            sums, count = channel_norm_sum(args[0])
            entry.norm_sum += sums
            entry.count += count

        handles.append(linear.register_forward_pre_hook(hook))
    outputs: list[torch.Tensor] = []
    try:
        for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
            out = layer(hidden, **kwargs)
            outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
    finally:
        for handle in handles:
            handle.remove()
    return LayerInputs(hidden=outputs, kwargs=inputs.kwargs), stats
