"""Names and byte layout of a block inside a shard (shared by the writer and the reader)."""

from __future__ import annotations

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


def block_from_buffer(buffer: torch.Tensor, out_features: int, in_features: int, rank: int) -> ResidualBlock:
    """Views of one block's bytes (uint8 (block_bytes,), any device) as a :class:`ResidualBlock`.

    The three tensors share ``buffer``'s storage, so the block's resident size is exactly
    ``buffer.numel()`` bytes.
    """
    tensors = []
    offset = 0
    for dtype, shape in block_parts(out_features, in_features, rank):
        nbytes = shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size()
        tensors.append(buffer[offset : offset + nbytes].view(dtype).view(shape))
        offset += nbytes
    if offset != buffer.numel():
        raise ValueError(f"block buffer has {buffer.numel()} bytes, its shapes need {offset}")
    u, v, signs = tensors
    return ResidualBlock(signs=signs, u=u, v=v)
