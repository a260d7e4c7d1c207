"""The KV cache of the running decode batch, and the forward passes that use it.

A request is prefilled alone (batch 1, its own ``DynamicCache``, in chunks), then its cache is
inserted as a row of the decode batch.  The batch's cache is one transformers ``DynamicCache``
whose keys/values are ``(rows, kv_heads, columns, head_dim)``, left-padded: every row ends at
the last column, a row shorter than the batch has zeros (masked out) on its left.  Each decode
step feeds one token per row with its own position id (its own length) and the ``(rows,
columns + 1)`` attention mask, so a row computes what it would compute alone.  Rows leave as
soon as they finish; their KV is freed at once (the remaining rows are copied, and columns that
are padding for every remaining row are dropped).
"""

from __future__ import annotations

import inspect

import torch

from bitstack.errors import UnsupportedModelError


class ModelRunner:
    """Forward passes of a transformers causal LM with an explicit cache (any family whose
    cache is full attention).  ``kv_per_token`` is measured once, from a real forward pass."""

    def __init__(self, model, device: torch.device):
        from transformers import DynamicCache

        self.model = model
        self.device = device
        self._cache_class = DynamicCache
        names = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in names else "past_key_values"
        self._keep_arg = "logits_to_keep" in names
        with torch.no_grad():
            cache, _ = self.prefill(torch.tensor([0, 0], device=device), None)
        layers = getattr(cache, "layers", None)
        if layers is None:
            raise UnsupportedModelError("bitstack serve needs transformers >= 5 (its DynamicCache layers)")
        if any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers})
            raise UnsupportedModelError(f"bitstack serve supports full-attention KV caches only; this model's cache has {kinds}")
        self.layers = len(layers)
        self.kv_per_token = cache_bytes(cache) // 2

    def new_cache(self):
        return self._cache_class()

    def forward(self, input_ids: torch.Tensor, cache, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Logits of the last position of every row: (rows, vocab)."""
        kwargs = {self._cache_arg: cache, "use_cache": True}
        if self._keep_arg:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return out.logits[:, -1, :]

    def prefill(self, tokens: torch.Tensor, cache):
        """Feed ``tokens`` (1-D int64, one sequence) after ``cache`` (None: a new one)."""
        cache = self.new_cache() if cache is None else cache
        logits = self.forward(tokens.view(1, -1), cache)
        return cache, logits


def cache_bytes(cache) -> int:
    """Bytes of a DynamicCache's key and value tensors (each storage once)."""
    seen = {}
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None and tensor.numel():
                storage = tensor.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """``tensor`` (rows, heads, length, dim) with zeros prepended up to ``columns``."""
    missing = columns - tensor.shape[2]
    if missing <= 0:
        return tensor
    return torch.cat([tensor.new_zeros(tensor.shape[0], tensor.shape[1], missing, tensor.shape[3]), tensor], dim=2)


class DecodeBatch:
    """Rows of the decode batch (see the module docstring).  ``rows[i]`` is whatever the engine
    keeps per row; ``lengths[i]`` is row i's real tokens in the cache."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.cache = None
        self.mask: torch.Tensor | None = None  # int64 (rows, columns): 1 where a row has a token
        self.rows: list = []
        self.lengths: list[int] = []

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    @property
    def kv_bytes(self) -> int:
        return 0 if self.cache is None else cache_bytes(self.cache)

    def insert(self, row, cache, length: int) -> None:
        """Add a prefilled sequence (``cache``: its own DynamicCache of ``length`` tokens)."""
        device = self.runner.device
        if self.cache is None:
            self.cache, self.mask = cache, torch.ones(1, length, dtype=torch.long, device=device)
        else:
            columns = max(self.columns, length)
            for mine, theirs in zip(self.cache.layers, cache.layers):  # one layer at a time: one layer's transient
                mine.keys = torch.cat([_left_pad(mine.keys, columns), _left_pad(theirs.keys, columns)], dim=0)
                mine.values = torch.cat([_left_pad(mine.values, columns), _left_pad(theirs.values, columns)], dim=0)
                theirs.keys = theirs.values = None
            row_mask = torch.zeros(1, columns, dtype=torch.long, device=device)
            row_mask[0, columns - length:] = 1
            old = torch.zeros(len(self.rows), columns, dtype=torch.long, device=device)
            old[:, columns - self.columns:] = self.mask
            self.mask = torch.cat([old, row_mask], dim=0)
        self.rows.append(row)
        self.lengths.append(length)

    def remove(self, indices: list[int]) -> None:
        """Drop the rows at ``indices`` and free their KV now."""
        if not indices:
            return
        drop = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in drop]
        self.rows = [self.rows[i] for i in keep]
        self.lengths = [self.lengths[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=self.runner.device)
        mask = self.mask[index]
        first = int(mask.any(dim=0).nonzero()[0])  # columns before this are padding in every row left
        self.mask = mask[:, first:].contiguous()
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:].contiguous()
            layer.values = layer.values[index, :, first:].contiguous()

    def step(self, tokens: list[int]) -> torch.Tensor:
        """One decode step: ``tokens[i]`` is row i's newest token; returns logits (rows, vocab)."""
        device = self.runner.device
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long, device=device)], dim=1)
        ids = torch.tensor(tokens, device=device).view(-1, 1)
        positions = torch.tensor(self.lengths, device=device).view(-1, 1)
        logits = self.runner.forward(ids, self.cache, attention_mask=self.mask, position_ids=positions)
        self.lengths = [n + 1 for n in self.lengths]
        return logits
