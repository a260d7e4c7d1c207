"""A model split over ranks by layers (pipeline placement), each rank within its own budget.

Every rank of a ``torch.distributed`` group (one device each) calls :func:`load_pipeline` with the
same arguments: the ranks' budgets (one per rank, like a ``device_map`` with a memory per
device) and optionally how many layers each takes.  Rank r loads only its part (its contiguous
layers, :class:`~bitstack.distributed.shard.LayerShard`) through ``bitstack.load``'s one load
path, so its resident weight bytes are counted and bounded exactly as a whole model's.

A forward pass (:meth:`PipelineStage.logits`, called by every rank with the same token ids) runs
the transformers model on every rank: rank 0 from the token ids, rank r > 0 from zero embeddings
of the same shape (only their shape matters: masks and positions), whose hidden states a hook
replaces, at the rank's first layer, with those received from rank r - 1; the rank's last layer
sends its output to rank r + 1 (the layers a rank does not hold are pass-throughs).  The last
rank's logits are broadcast to every rank, so that every rank's greedy decoding picks the same
tokens.  The logits are those of the same blocks in one process, bit for bit, on one device type.

A resize (:meth:`PipelineStage.resize`) is collective: every rank passes the same budgets; each
rank's part moves to the longest prefix of its own sub-stack that fits its own budget (the rule
of ``LiveStack.resize``), or, if any rank's budget is below its part's floor, no rank changes and
every rank raises the same ``BudgetError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from bitstack.artifact.opening import open_artifact
from bitstack.distributed.shard import LayerShard, model_names, split_layers
from bitstack.errors import ArtifactError, BitstackError, BudgetError, InputError, UnsupportedModelError
from bitstack.memory import parse_memory
from bitstack.runtime.stack import ResizeReport


class _Handoff(Exception):
    """Raised by a non-last rank's last layer once its output is sent."""


class _Skip(nn.Module):
    """Decoder layer ``index``, which this rank does not hold: its hidden states pass through.

    With a KV cache it appends a placeholder of one value per token ((batch, 1, seq, 1) keys and
    values) to its cache layer, so that the cache's length, from which transformers computes
    positions and masks, is the one it has in one process."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, hidden_states, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.index)
        return hidden_states


@dataclass(frozen=True)
class Plan:
    """What every rank agrees on: the budgets (bytes or None, one per rank) and the layers of each."""

    budgets: tuple[int | None, ...]
    layers: tuple[range, ...]


def plan_pipeline(manifest, num_layers: int, layer_of, budgets: Sequence, layers: Sequence[int] | None,
                  world: int) -> Plan:
    """The pipeline's plan, a pure function of its arguments (InputError on a bad one).

    budgets: one per rank (``"2GB"``, bytes, or None: no limit); layers: how many decoder layers
    each rank takes (default: split by the layers' full-stack bytes in proportion to the budgets,
    equally when any budget is None)."""
    if isinstance(budgets, (str, int)) or budgets is None or len(budgets) != world:
        count = "one" if isinstance(budgets, (str, int)) or budgets is None else len(budgets)
        raise InputError(f"{count} budget(s) for a world of {world} ranks: give a list of one budget per rank")
    parsed = tuple(None if b is None else parse_memory(b) for b in budgets)
    if layers is not None:
        counts = list(layers)
        if len(counts) != world or any(type(c) is not int or c < 1 for c in counts) or sum(counts) != num_layers:
            raise InputError(f"layers {counts} must be {world} positive counts summing to the model's {num_layers} layers")
        bounds = [0]
        for c in counts:
            bounds.append(bounds[-1] + c)
        return Plan(parsed, tuple(range(a, b) for a, b in zip(bounds, bounds[1:])))
    sizes = [0] * num_layers
    for entry in manifest.stack:
        sizes[layer_of(entry.tensor)] += entry.bytes
    shares = [1.0] * world if None in parsed else [float(b) for b in parsed]
    return Plan(parsed, tuple(split_layers(sizes, shares)))


def _agree(value, group, what: str) -> None:
    """InputError on every rank unless every rank passed the same ``value`` (a collective)."""
    values: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(values, value, group=group)
    if any(v != values[0] for v in values):
        raise InputError(f"the ranks passed different {what}: every rank must pass the same ones")


def _all_ok(error: BitstackError | None, group) -> None:
    """Raise on every rank the first rank's error, if any rank had one (a collective)."""
    errors: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(errors, None if error is None else (type(error).__name__, str(error)), group=group)
    kinds = {kind.__name__: kind for kind in (InputError, BudgetError, ArtifactError, UnsupportedModelError)}
    for peer, found in enumerate(errors):
        if found is not None:
            raise kinds.get(found[0], BitstackError)(f"rank {peer}: {found[1]}")


def load_pipeline(path: str | Path, budgets: Sequence, *, layers: Sequence[int] | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                  verify: bool = True, group=None) -> "PipelineStage":
    """This rank's stage of the artifact at ``path`` split over the ranks of ``group`` (default:
    the default process group, which must be initialised).  Every rank calls it with the same
    ``path``, ``budgets`` and ``layers`` (checked); ``device`` is this rank's."""
    from bitstack.runtime.loader import _build_skeleton, load

    if not dist.is_available() or not dist.is_initialized():
        raise InputError("load_pipeline needs an initialised torch.distributed process group (init_process_group)")
    peer, world = dist.get_rank(group), dist.get_world_size(group)
    _agree((str(path), repr(budgets), repr(layers), str(dtype)), group, "artifacts, budgets, layers or dtypes")
    error, stage = None, None
    try:
        with open_artifact(path, verify=False) as reader:
            manifest = reader.manifest
        decoder, embed, head, num_layers = model_names(_build_skeleton(manifest))
        probe = LayerShard(0, 1, range(num_layers), num_layers, decoder)
        plan = plan_pipeline(manifest, num_layers, probe.layer_of, budgets, layers, world)
        shard = LayerShard(peer, world, plan.layers[peer], num_layers, decoder, embed, head)
        model = load(path, plan.budgets[peer], device=device, dtype=dtype, verify=verify, shard=shard)
        stage = PipelineStage(model, shard, plan, group)
    except BitstackError as err:
        error = err
    _all_ok(error, group)
    return stage


class PipelineStage:
    """One rank's part of a pipelined model: ``model`` (the transformers model holding only this
    rank's layers), ``shard`` (which), ``plan`` (every rank's budget and layers)."""

    def __init__(self, model: nn.Module, shard: LayerShard, plan: Plan, group=None):
        self.model, self.shard, self.plan, self.group = model, shard, plan, group
        self.stack = model.bitstack
        self.device = self.stack.device
        self.dtype = self.stack.dtype
        backend = dist.get_backend(group)
        self.comm_device = self.device if backend == "nccl" else torch.device("cpu")
        layers = model.get_submodule(shard.decoder)
        for i in range(shard.num_layers):
            if i not in shard.layers:
                layers[i] = _Skip(i)
        if not shard.first:
            layers[shard.layers.start].register_forward_pre_hook(self._receive, with_kwargs=True)
        if not shard.last:
            layers[shard.layers.stop - 1].register_forward_hook(self._send)

    # ---- point to point ---------------------------------------------------------------------
    def _receive(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        buffer = torch.empty(hidden.shape, dtype=hidden.dtype, device=self.comm_device)
        dist.recv(buffer, src=self._global(self.shard.peer - 1), group=self.group)
        received = buffer.to(hidden.device)
        if args:
            return (received, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": received}

    def _send(self, module, args, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        dist.send(hidden.contiguous().to(self.comm_device), dst=self._global(self.shard.peer + 1), group=self.group)
        raise _Handoff

    def _global(self, peer: int) -> int:
        return peer if self.group is None else dist.get_global_rank(self.group, peer)

    def _broadcast(self, tensor: torch.Tensor | None, src: int, shape_len: int, dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` of rank ``src`` on every rank (shape sent first)."""
        shape = torch.zeros(shape_len, dtype=torch.int64, device=self.comm_device)
        if self.shard.peer == src:
            shape.copy_(torch.tensor(tensor.shape, dtype=torch.int64))
        dist.broadcast(shape, src=self._global(src), group=self.group)
        buffer = (tensor.contiguous().to(self.comm_device) if self.shard.peer == src
                  else torch.empty(*shape.tolist(), dtype=dtype, device=self.comm_device))
        dist.broadcast(buffer, src=self._global(src), group=self.group)
        return buffer.to(self.device)

    # ---- forward --------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, *, last_only: bool = False, cache=None) -> torch.Tensor:
        """Logits (batch, seq, vocab) of int64 ``input_ids`` (batch, seq) — rank 0's ids, which
        every rank receives — on every rank, in the compute dtype; ``last_only``: of the last
        position only (batch, 1, vocab); ``cache``: this rank's KV cache (a transformers
        ``DynamicCache``), which the call extends.  Every rank must call it (a collective)."""
        ids = self._broadcast(input_ids if self.shard.peer == 0 else None, 0, 2, torch.int64)
        options = {"use_cache": cache is not None, **({"logits_to_keep": 1} if last_only else {}),
                   **({"cache": cache} if cache is not None else {})}
        logits = None
        try:
            if self.shard.first:
                logits = self.model(input_ids=ids, **options).logits
            else:
                hidden = self.model.config.hidden_size
                zeros = torch.zeros(*ids.shape, hidden, dtype=self.dtype, device=self.device)
                logits = self.model(inputs_embeds=zeros, **options).logits
        except _Handoff:
            pass
        return self._broadcast(logits, self.shard.world - 1, 3, self.dtype)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding of ``max_new_tokens`` tokens after rank 0's ``input_ids`` (batch, seq);
        every rank returns the same (batch, seq + max_new_tokens) ids.  With ``use_cache`` each
        rank keeps the KV cache of its own layers (a step sends one token's hidden states from
        rank to rank); without it, each step reruns the whole sequence."""
        from transformers import DynamicCache

        ids = self._broadcast(input_ids if self.shard.peer == 0 else None, 0, 2, torch.int64)
        cache = DynamicCache(config=self.model.config) if use_cache else None
        step_ids = ids
        for _ in range(max_new_tokens):
            step = self.logits(step_ids, last_only=True, cache=cache)[:, -1]
            token = step.argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            step_ids = token if use_cache else ids
        return ids

    # ---- memory ----------------------------------------------------------------------------
    @property
    def resident_bytes(self) -> int:
        """This rank's resident weight bytes (== ``bitstack.memory_bytes(self.model)``)."""
        return self.stack.resident_bytes

    def block_counts(self) -> dict[str, int]:
        """{weight name: its loaded blocks} of this rank's weights."""
        return {name: len(module.blocks) for name, module in self.stack.modules.items()}

    def resize(self, budgets: Sequence) -> list[ResizeReport]:
        """Collective resize: every rank passes the same budgets (one per rank); returns every
        rank's :class:`ResizeReport`, in rank order, on every rank."""
        _agree(repr(budgets), self.group, "budgets")
        error, target, budget = None, None, None
        try:
            if isinstance(budgets, (str, int)) or budgets is None or len(budgets) != self.shard.world:
                raise InputError(f"resize needs a list of {self.shard.world} budgets, one per rank, got {budgets!r}")
            budget = None if budgets[self.shard.peer] is None else parse_memory(budgets[self.shard.peer])
            target = self.stack.blocks_for(budget)
        except BitstackError as err:
            error = err
        _all_ok(error, self.group)
        report = self.stack.move_to(target, budget)
        self.plan = Plan(tuple(None if b is None else parse_memory(b) for b in budgets), self.plan.layers)
        reports: list = [None] * self.shard.world
        dist.all_gather_object(reports, report, group=self.group)
        return reports
