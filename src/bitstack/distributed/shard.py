"""A rank's part of an artifact: a contiguous range of decoder layers, as a self-consistent view.

Pipeline placement (``docs/multi-gpu.md``) gives each rank (one device) a contiguous range of
decoder layers.  :class:`LayerShard` is that assignment; :meth:`LayerShard.select` turns an open
artifact into the rank's **part**: a :class:`ShardReader` whose manifest holds only the rank's
weights, the base tensors it needs and its **sub-stack** (the global stack's entries of its
weights, in global order, with its own prefix bytes), so that ``bitstack.load`` and the
:class:`~bitstack.runtime.stack.LiveStack` load and resize the part exactly as they do a whole
artifact (one load path, one budget rule), within the rank's own budget.

Which base tensors a part holds: those of its layers; the input embedding on the first rank; the
output embedding (LM head) on the last; every other non-layer tensor (final norm, rotary buffers)
on every rank (they are small).  A tied LM head brings its target (the input embedding) to the
last rank too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Collection

import torch
from torch import nn

from bitstack.artifact.manifest import Manifest
from bitstack.errors import ArtifactError, InputError


@dataclass(frozen=True)
class LayerShard:
    """Rank ``peer`` of ``world`` (this process's rank in its group) holds decoder layers
    ``layers`` (a range, step 1).

    ``decoder``: the dotted path of the decoder's layer list (e.g. ``"model.layers"``);
    ``embed`` / ``head``: names of the input / output embedding tensors (held by the first /
    last rank); ``num_layers``: the model's decoder layers."""

    peer: int
    world: int
    layers: range
    num_layers: int
    decoder: str
    embed: frozenset[str] = frozenset()
    head: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not 0 <= self.peer < self.world:
            raise InputError(f"rank {self.peer} is outside a world of {self.world}: use a rank in 0..{self.world - 1}")
        if self.layers.step != 1 or not 0 <= self.layers.start < self.layers.stop <= self.num_layers:
            raise InputError(f"rank {self.peer}'s layers {self.layers.start}..{self.layers.stop - 1} are not a "
                             f"non-empty range within the model's {self.num_layers} layers")

    @property
    def first(self) -> bool:
        return self.layers.start == 0

    @property
    def last(self) -> bool:
        return self.layers.stop == self.num_layers

    def layer_of(self, name: str) -> int | None:
        """The decoder layer a tensor or weight ``name`` belongs to (None: outside the layers)."""
        head = self.decoder + "."
        if not name.startswith(head):
            return None
        index = name[len(head):].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    def holds(self, name: str) -> bool:
        """Whether this rank holds tensor ``name`` (by the rule of the module docstring; a tied
        head's target is added by :meth:`select`)."""
        layer = self.layer_of(name)
        if layer is not None:
            return layer in self.layers
        if name in self.embed:
            return self.first
        if name in self.head:
            return self.last
        return True

    def select(self, reader) -> "ShardReader":
        """This rank's part of the open artifact ``reader`` (an ``ArtifactReader``)."""
        manifest, positions = part_manifest(reader.manifest, self)
        return ShardReader(reader, manifest, positions)


def part_manifest(manifest: Manifest, shard: LayerShard) -> tuple[Manifest, tuple[int, ...]]:
    """(the part's manifest, the global stack position of each entry of its sub-stack).

    The part's manifest keeps the model and compression sections and lists only the part's
    weights, base tensors and aliases; ``base_bytes``, ``prefix_bytes`` and ``floor_blocks`` are
    the part's, so that every memory rule applies to it unchanged."""
    layers = {shard.layer_of(w.name) for w in manifest.weights}
    if None in layers or layers != set(range(shard.num_layers)):
        raise ArtifactError(f"the artifact's weights do not lie in {shard.num_layers} layers under {shard.decoder!r}")
    weights = tuple(w for w in manifest.weights if shard.layer_of(w.name) in shard.layers)
    aliases = {a: t for a, t in manifest.base["aliases"].items() if shard.holds(a)}
    kept = {t["name"] for t in manifest.base["tensors"] if shard.holds(t["name"])} | set(aliases.values())
    tensors = [t for t in manifest.base["tensors"] if t["name"] in kept]
    names = {w.name for w in weights}
    positions = tuple(p for p, e in enumerate(manifest.stack) if e.tensor in names)
    stack = tuple(manifest.stack[p] for p in positions)
    floor = len(weights)
    if any(e.index != 0 for e in stack[:floor]):
        raise ArtifactError("the artifact's stack does not begin with the first block of every weight")
    base = {**manifest.base, "tensors": tensors, "aliases": aliases}
    part = dataclasses.replace(manifest, base=base, weights=weights, stack=stack, floor_blocks=floor, base_bytes=0,
                               prefix_bytes=())
    base_bytes = sum(t.nbytes() for t in part.base_tensors)
    prefix = [base_bytes]
    for entry in stack:
        prefix.append(prefix[-1] + entry.bytes)
    return dataclasses.replace(part, base_bytes=base_bytes, prefix_bytes=tuple(prefix)), positions


def _runs(positions: tuple[int, ...]) -> list[tuple[int, int]]:
    """Split sorted global positions into runs [a, b) of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


class ShardReader:
    """An ``ArtifactReader`` restricted to one rank's part: ``manifest`` is the part's (see
    :func:`part_manifest`); ``read_blocks`` and ``read_base`` take the part's positions and
    tensors.  Closing it closes the artifact."""

    def __init__(self, reader, manifest: Manifest, positions: tuple[int, ...]):
        self.reader = reader
        self.manifest = manifest
        self.positions = positions  # global stack position of each part position
        self.path = reader.path
        self.verify = reader.verify

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_base(self, dtype: torch.dtype | None = None, **options) -> dict[str, torch.Tensor]:
        """The part's base tensors only (``ArtifactReader.read_base`` with ``names``)."""
        return self.reader.read_base(dtype, names={t.name for t in self.manifest.base_tensors}, **options)

    def read_blocks(self, start: int, stop: int, device: torch.device | str | None = None) -> list:
        """Blocks ``start <= position < stop`` of the part's sub-stack, in order, all verified;
        each run of consecutive global positions is one ``ArtifactReader.read_blocks`` call."""
        if not 0 <= start <= stop <= len(self.positions):
            raise ValueError(f"block range [{start}, {stop}) is outside the part's stack of {len(self.positions)}")
        out: list = []
        for a, b in _runs(self.positions[start:stop]):
            out += self.reader.read_blocks(a, b, device)
        return out

    def load_tokenizer(self):
        return self.reader.load_tokenizer()


def model_names(model: nn.Module) -> tuple[str, frozenset[str], frozenset[str], int]:
    """(decoder path, input-embedding tensor names, output-embedding tensor names, layer count)
    of a (skeleton) model: what a :class:`LayerShard` needs to know of it."""
    from bitstack.models.architecture import find_decoder_layers

    decoder = find_decoder_layers(model)
    paths = {id(module): name for name, module in model.named_modules()}

    def names(module: nn.Module | None) -> frozenset[str]:
        """The module's tensors by their names under the module's own path (a tied head's weight
        is the LM head's under ``lm_head``, the embedding's under the embedding's path)."""
        if module is None:
            return frozenset()
        path = paths[id(module)]
        local = [n for n, _ in module.named_parameters(remove_duplicate=False)]
        local += [n for n, _ in module.named_buffers(remove_duplicate=False)]
        return frozenset(f"{path}.{n}" if path else n for n in local)

    return decoder.path, names(model.get_input_embeddings()), names(model.get_output_embeddings()), len(decoder.layers)


def split_layers(layer_bytes: Collection[int], shares: Collection[float]) -> list[range]:
    """Contiguous layer ranges, one per share, each non-empty, whose byte totals follow
    ``shares`` (e.g. the ranks' budgets) as closely as the layer boundaries allow: boundary k
    is the layer boundary nearest to the fraction (share_0 + … + share_{k-1}) / Σ shares of the
    total bytes.  Pure; InputError when there are more shares than layers or a share ≤ 0."""
    sizes, shares = list(layer_bytes), [float(s) for s in shares]
    if not shares or len(shares) > len(sizes):
        raise InputError(f"{len(shares)} ranks cannot split {len(sizes)} decoder layers: use at most {len(sizes)} ranks")
    if any(not s > 0 for s in shares):
        raise InputError(f"every rank's share must be positive, got {shares}")
    cumulative = [0]
    for size in sizes:
        cumulative.append(cumulative[-1] + size)
    total, bounds, acc = cumulative[-1], [0], 0.0
    for k, share in enumerate(shares[:-1]):
        acc += share
        target = total * acc / sum(shares)
        least, most = bounds[-1] + 1, len(sizes) - (len(shares) - 1 - k)  # leave a layer to every later rank
        best = min(range(least, most + 1), key=lambda b: (abs(cumulative[b] - target), b))
        bounds.append(best)
    bounds.append(len(sizes))
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]
