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
    """Running statistics of one linear's input over the calibration samples.

    norm_sum: float32 (in,), Σ_i ||x_i[:, j]||_2 over samples i.  count: number of samples.
    hessian: float32 (in, in), Σ over all tokens of x xᵀ, when requested (else None).
    """

    norm_sum: torch.Tensor
    count: int = 0
    hessian: torch.Tensor | None = None


@torch.no_grad()
def run_layer(layer: nn.Module, inputs: LayerInputs, linears: dict[str, nn.Linear], *,
              hessians: bool = False) -> tuple[LayerInputs, dict[str, ChannelStats]]:
    """Run one layer on every batch; return its outputs and each linear's input statistics
    (with ``hessians``, also Σ x xᵀ of each linear's input: in² floats per linear).

    Linears that read the very same input tensor (q, k and v; gate and up) are measured once:
    their statistics are the same objects, read-only."""
    stats: dict[str, ChannelStats] = {}
    shares: dict[str, str] = {}  # linear -> the earlier linear whose input tensor it reads
    seen: dict[int, tuple[torch.Tensor, str]] = {}  # this batch's inputs: id -> (tensor, first reader)
    first_batch = [True]
    handles = []
    for name, linear in linears.items():
        device = linear.weight.device
        entry = ChannelStats(torch.zeros(linear.in_features, dtype=torch.float32, device=device))
        if hessians:
            entry.hessian = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float32, device=device)
        stats[name] = entry

        def hook(module, args, entry=entry, name=name):
            x = args[0]
            earlier = seen.get(id(x))
            reader = earlier[1] if earlier is not None and earlier[0] is x and earlier[1] != name else None
            if first_batch[0] and reader is not None:
                shares[name] = reader
            if shares.get(name) != reader:
                raise RuntimeError(f"{name} shares its input with {reader} in one calibration batch but not in another")
            if reader is not None:
                return
            seen[id(x)] = (x, name)
            sums, count = channel_norm_sum(x)
            entry.norm_sum += sums
            entry.count += count
            if entry.hessian is not None:
                flat = x.reshape(-1, x.shape[-1]).to(torch.float32)  # (tokens, in)
                entry.hessian.addmm_(flat.T, flat)

        handles.append(linear.register_forward_pre_hook(hook))
    outputs: list[torch.Tensor] = []
    try:
        for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
            out = layer(hidden, **kwargs)
            outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
            seen.clear()
            first_batch[0] = False
    finally:
        seen.clear()
        for handle in handles:
            handle.remove()
    for name, reader in shares.items():
        stats[name] = stats[reader]
    return LayerInputs(hidden=outputs, kwargs=inputs.kwargs), stats
