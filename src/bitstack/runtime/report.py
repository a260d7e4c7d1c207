"""Describing a loaded model's memory: bytes, blocks, bits per decomposed parameter."""

from __future__ import annotations

from torch import nn

from bitstack.memory import format_sizes
from bitstack.runtime.budget import memory_bytes


def memory_report(model: nn.Module) -> dict:
    """Resident bytes of a loaded BitStack model, and what they buy.

    ``bits_per_param`` = 8 × (resident bytes − base bytes) / decomposed parameters: the bits
    per parameter spent on the decomposed linears (the usual "w-bits" of quantization papers).
    """
    state = model.bitstack
    manifest = state.manifest
    resident = memory_bytes(model)
    base = state.prefix_bytes[0]
    return {
        "memory_budget": state.budget,
        "memory_bytes": resident,
        "blocks_loaded": state.loaded,
        "blocks_total": len(manifest.stack),
        "bits_per_param": round(8 * (resident - base) / manifest.decomposed_params(), 4),
        "base_bytes": base,
    }


def budget_note(model: nn.Module) -> str | None:
    """A line to tell the user when the budget is more than the whole stack needs (every block is
    then loaded and the rest of the budget is unused); ``None`` otherwise."""
    state = model.bitstack
    full = state.prefix_bytes[-1]
    if state.budget is None or state.budget <= full:
        return None
    budget, needed = format_sizes(state.budget, full)
    return f"budget {budget} is more than the whole stack needs ({needed}): every block is loaded"
