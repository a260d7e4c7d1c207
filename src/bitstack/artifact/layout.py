"""Names and byte layout of a block inside a shard (shared by the writer and the reader).

Block ``i`` of weight ``W`` is its parts (its codec's ``block_parts``: (name, dtype, shape), in
on-disk order) back to back; the shard's safetensors header names each part ``W.i.<part>``.
"""

from __future__ import annotations

import torch

from bitstack.codecs.base import Block, Parts


def block_tensor_names(weight: str, index: int, parts: Parts) -> tuple[str, ...]:
    """safetensors names of a block's parts, in their on-disk order."""
    return tuple(f"{weight}.{index}.{name}" for name, _, _ in parts)


def part_spans(parts: Parts) -> tuple[tuple[str, int, int, torch.dtype, tuple[int, ...]], ...]:
    """(name, begin, end, dtype, shape) of each part inside a block's bytes."""
    spans = []
    offset = 0
    for name, dtype, shape in parts:
        count = 1
        for d in shape:
            count *= d
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        spans.append((name, offset, offset + nbytes, dtype, tuple(shape)))
        offset += nbytes
    return tuple(spans)


def block_from_buffer(buffer: torch.Tensor, spans) -> Block:
    """Views of one block's bytes (uint8 (block_bytes,), any device) as a :class:`Block` whose
    parts are laid out as ``spans`` (:func:`part_spans`).

    The parts share ``buffer``'s storage, so the block's resident size is exactly
    ``buffer.numel()`` bytes.
    """
    if spans[-1][2] != buffer.numel():
        raise ValueError(f"block buffer has {buffer.numel()} bytes, its parts need {spans[-1][2]}")
    return Block(**{name: buffer[begin:end].view(dtype).view(shape) for name, begin, end, dtype, shape in spans})
