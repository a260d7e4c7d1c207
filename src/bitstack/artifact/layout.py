"""Names and byte layout of a block inside a shard (shared by the writer and the reader)."""

from __future__ import annotations

import functools

import torch

from bitstack.core.avd import ResidualBlock


def block_tensor_names(weight: str, index: int) -> tuple[str, str, str]:
    """safetensors names of a block's ``u``, ``v`` and ``signs``, in their on-disk order."""
    return f"{weight}.{index}.u", f"{weight}.{index}.v", f"{weight}.{index}.signs"


def block_parts(out_features: int, in_features: int, rank: int) -> tuple[tuple[torch.dtype, tuple[int, int]], ...]:
    """(dtype, shape) of u, v and signs, in on-disk order."""
    return (
        (torch.float16, (out_features, rank)),
        (torch.float16, (rank, in_features)),
        (torch.uint8, (out_features, (in_features + 7) // 8)),
    )


@functools.lru_cache(maxsize=4096)
def _views(out_features: int, in_features: int, rank: int) -> tuple[tuple[int, int, torch.dtype, tuple[int, int]], ...]:
    """(begin, end, dtype, shape) of u, v, signs inside a block's bytes."""
    spans = []
    offset = 0
    for dtype, shape in block_parts(out_features, in_features, rank):
        nbytes = shape[0] * shape[1] * (2 if dtype == torch.float16 else 1)
        spans.append((offset, offset + nbytes, dtype, shape))
        offset += nbytes
    return tuple(spans)


def block_from_buffer(buffer: torch.Tensor, out_features: int, in_features: int, rank: int) -> ResidualBlock:
    """Views of one block's bytes (uint8 (block_bytes,), any device) as a :class:`ResidualBlock`.

    The three tensors share ``buffer``'s storage, so the block's resident size is exactly
    ``buffer.numel()`` bytes.
    """
    spans = _views(out_features, in_features, rank)
    if spans[-1][1] != buffer.numel():
        raise ValueError(f"block buffer has {buffer.numel()} bytes, its shapes need {spans[-1][1]}")
    u, v, signs = (buffer[begin:end].view(dtype).view(shape) for begin, end, dtype, shape in spans)
    return ResidualBlock(signs=signs, u=u, v=v)
