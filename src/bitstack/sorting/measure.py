"""Measuring the loss of many per-weight block-count configurations of one artifact (fast).

:class:`StackEvaluator` loads the whole stack once and replaces every ``BitStackLinear`` by a
:class:`DenseStackLinear` that keeps its Ŵ built from the first ``count`` blocks.  Its output is
that of ``BitStackLinear`` with the same blocks: Ŵ is its codec's terms (``Codec.contribution``)
accumulated in float32 in block order, cast to the compute dtype, and applied with the same
``F.linear`` — it is only rebuilt when the count changes rather than in every forward.

Changing the counts of some weights and re-scoring a set of token windows is what ``curve``
(one configuration per budget) and the ``average``/``greedy`` sorting strategies (one
configuration per candidate block) need.  For the latter, :meth:`StackEvaluator.refresh` caches
the output of every decoder layer at the current configuration; a candidate that changes one
weight of layer L is then scored by running layers L … end only (layers before L replay their
cached output), which halves the cost on average.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bitstack.codecs.base import Block
from bitstack.errors import InputError
from bitstack.runtime.loader import load


class DenseStackLinear(nn.Module):
    """A linear layer whose weight is the sum of the first ``count`` of its residual blocks.

    Attributes:
        blocks: all residual blocks of the weight, in order (the codec's parts).
        count: how many are in use (1 … len(blocks)).
        weight: Ŵ in the compute dtype, shape (out, in); ``acc`` is its float32 accumulator.
        bias: (out,) or None; input_scale: (in,) or None (shared with the loaded module).
    """

    def __init__(self, source: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.in_features = source.in_features
        self.out_features = source.out_features
        self.blocks: list[Block] = list(source.blocks)
        self.bias = source.bias
        self.input_scale = source.input_scale
        self.codec, self.params, self.base = source.codec, source.params, source.codec_base()
        self.dtype = dtype
        self.count = 0
        self.acc: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        self.set_count(len(self.blocks))

    def set_count(self, count: int) -> None:
        if not 1 <= count <= len(self.blocks):
            raise ValueError(f"block count must be in 1 … {len(self.blocks)}, got {count}")
        if count == self.count:
            return
        if self.acc is None or count < self.count:  # the summation order of Codec.dense_weight
            self.acc = self.contribution(0)
            start = 1
        else:  # growing: add the new blocks to the running sum, in the same order
            start = self.count
        for index in range(start, count):
            self.acc = self.acc + self.contribution(index)
        self.count = count
        self.weight = self.acc.to(self.dtype)

    def contribution(self, index: int) -> torch.Tensor:
        """Block ``index``'s dense term of Ŵ, float32 (out, in) (``Codec.contribution``)."""
        return self.codec.contribution(self, self.blocks[index], index, self.base)

    def next_weight(self) -> torch.Tensor:
        """Ŵ with ``count + 1`` blocks, in the compute dtype (not stored)."""
        return (self.acc + self.contribution(self.count)).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        return F.linear(x, self.weight.to(x.device) if self.weight.device != x.device else self.weight, self.bias)


class _Replay(nn.Module):
    """Stands in for a decoder layer: returns a cached output instead of computing."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.output: Any = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)  # e.g. attention_type

    def forward(self, *args, **kwargs):
        return self.output


@dataclass
class EvalCost:
    """Work done by an evaluator: model forwards (each over all windows, partial ones counted
    once), their decoder-layer work in full-forward equivalents, and seconds spent."""

    forwards: int = 0
    equivalents: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"forwards": self.forwards, "forward_equivalents": round(self.equivalents, 2), "seconds": round(self.seconds, 1)}


class StackEvaluator:
    """A fully loaded artifact whose per-weight block counts can be set at will.

    Args:
        path: artifact directory.
        device, dtype: as for :func:`bitstack.load` (default dtype: the artifact's).
        batch_size: windows per forward pass.
    """

    def __init__(self, path: str | Path, *, device: torch.device | str | None = "cpu",
                 dtype: torch.dtype | str | None = None, batch_size: int = 4, verify: bool = True):
        if batch_size < 1:
            raise InputError(f"batch size must be positive, got {batch_size}")
        self.path = Path(path)
        self.model = load(path, None, device=device, dtype=dtype, verify=verify)
        state = self.model.bitstack
        self.manifest = state.manifest
        self.device = state.device
        self.dtype = state.dtype
        self.batch_size = batch_size
        self.prefix_bytes = list(state.prefix_bytes)  # at the compute dtype
        self.names = [w.name for w in self.manifest.weights]
        self.num_blocks = [w.num_blocks for w in self.manifest.weights]
        self.block_bytes = [w.block_bytes for w in self.manifest.weights]
        self.modules: list[DenseStackLinear] = []
        for name in self.names:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            dense = DenseStackLinear(getattr(parent, child), self.dtype)
            setattr(parent, child, dense)
            self.modules.append(dense)
        state.reader.close()
        self.layers, self.layer_of = self._find_layers()
        self.cost = EvalCost()
        self._cache: list[list[Any]] | None = None  # [batch][layer] outputs at the current counts
        self._windows: torch.Tensor | None = None
        self.loss: float | None = None  # mean NLL at the current counts (after refresh)

    # ---- structure --------------------------------------------------------------------------
    def _find_layers(self) -> tuple[nn.ModuleList, list[int]]:
        """The decoder ModuleList and each weight's layer index, from the weight names."""
        paths = set()
        layer_of = []
        for name in self.names:
            parts = name.split(".")
            k = next((j for j, p in enumerate(parts) if p.isdigit()), None)
            if k is None:
                raise InputError(f"cannot tell the decoder layer of weight {name!r}")
            paths.add(".".join(parts[:k]))
            layer_of.append(int(parts[k]))
        if len(paths) != 1:
            raise InputError(f"the decomposed weights live in several layer lists: {sorted(paths)}")
        layers = self.model.get_submodule(paths.pop())
        if not isinstance(layers, nn.ModuleList):
            raise InputError("the decomposed weights are not inside an nn.ModuleList of decoder layers")
        return layers, layer_of

    @property
    def counts(self) -> list[int]:
        return [m.count for m in self.modules]

    def set_counts(self, counts: Sequence[int]) -> list[int]:
        """Set every weight's block count; returns the indices of the weights that changed."""
        if len(counts) != len(self.modules):
            raise ValueError(f"need {len(self.modules)} counts, got {len(counts)}")
        changed = [w for w, (m, c) in enumerate(zip(self.modules, counts)) if m.count != c]
        for w in changed:
            self.modules[w].set_count(int(counts[w]))
        return changed

    def counts_at(self, order: Sequence[tuple[int, int]], blocks: int) -> list[int]:
        """Per-weight counts of the first ``blocks`` entries of ``order``."""
        counts = [0] * len(self.modules)
        for w, _ in order[:blocks]:
            counts[w] += 1
        return counts

    def resident_bytes(self, counts: Sequence[int]) -> int:
        """Resident weight bytes with ``counts`` blocks per weight (at the compute dtype)."""
        return self.prefix_bytes[0] + sum(c * b for c, b in zip(counts, self.block_bytes))

    # ---- scoring ----------------------------------------------------------------------------
    def _batches(self, windows: torch.Tensor) -> list[torch.Tensor]:
        return [windows[s : s + self.batch_size] for s in range(0, windows.shape[0], self.batch_size)]

    def _nll_sum(self, batch: torch.Tensor) -> float:
        batch = batch.to(self.device)
        logits = self.model(input_ids=batch, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        return float(nll)

    def _run(self, windows: torch.Tensor, start_layer: int, capture: bool) -> tuple[float, list[list[Any]]]:
        """Mean NLL over ``windows``; layers < start_layer replay the cache; optionally capture."""
        began = time.perf_counter()
        total = 0.0
        captured: list[list[Any]] = []
        replays = []
        originals = list(self.layers)
        if start_layer > 0:
            if self._cache is None:
                raise RuntimeError("partial forward without a cache: call refresh() first")
            replays = [_Replay(originals[k]) for k in range(start_layer)]
        hooks = []
        try:
            for k, replay in enumerate(replays):
                self.layers[k] = replay
            for b, batch in enumerate(self._batches(windows)):
                outputs: list[Any] = [None] * len(originals)
                if start_layer > 0:
                    for replay in replays:
                        replay.output = self._cache[b][start_layer - 1]
                    outputs[:start_layer] = self._cache[b][:start_layer]
                if capture:
                    hooks = [originals[k].register_forward_hook(self._capturer(outputs, k)) for k in range(start_layer, len(originals))]
                with torch.no_grad():
                    total += self._nll_sum(batch)
                for h in hooks:
                    h.remove()
                hooks = []
                captured.append(outputs)
        finally:
            for h in hooks:
                h.remove()
            for k, layer in enumerate(originals):
                self.layers[k] = layer
        self.cost.forwards += 1
        self.cost.equivalents += (len(originals) - start_layer) / len(originals)
        self.cost.seconds += time.perf_counter() - began
        return total / (windows.shape[0] * (windows.shape[1] - 1)), captured

    @staticmethod
    def _capturer(outputs: list[Any], k: int):
        def hook(module, args, output):
            outputs[k] = output
        return hook

    def evaluate(self, windows: torch.Tensor) -> float:
        """Mean NLL per scored token of int64 (n, seqlen) ``windows`` at the current counts."""
        return self._run(windows, 0, capture=False)[0]

    def refresh(self, windows: torch.Tensor, from_layer: int = 0) -> float:
        """Score ``windows`` at the current counts and cache every layer's output.

        ``from_layer`` > 0 reuses the cached outputs of earlier layers (valid when only weights
        of layers >= from_layer changed since the last refresh on the same windows).
        """
        if self._windows is None or self._windows is not windows:
            self._cache, from_layer = None, 0
        self.loss, self._cache = self._run(windows, from_layer, capture=True)
        self._windows = windows
        return self.loss

    def candidate_loss(self, windows: torch.Tensor, w: int) -> float:
        """Mean NLL with weight ``w`` at count + 1 and everything else as at the last refresh."""
        if self._windows is not windows or self._cache is None:
            raise RuntimeError("candidate_loss needs refresh() on the same windows first")
        module = self.modules[w]
        saved = module.weight
        module.weight = module.next_weight()
        try:
            return self._run(windows, self.layer_of[w], capture=False)[0]
        finally:
            module.weight = saved

