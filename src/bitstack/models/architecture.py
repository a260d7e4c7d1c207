"""Finding what to decompose in a causal LM, from its module structure.

Any model whose decoder is a ``nn.ModuleList`` of identical layers containing ``nn.Linear``
projections is supported: every linear inside a decoder layer is decomposed, everything else
(embeddings, norms, the LM head) is kept as is.  A small table per model family says which
producer op each linear's input scale can be folded into; a linear without a fold target gets
its scale applied at run time, which is always exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bitstack.errors import UnsupportedModelError


@dataclass(frozen=True)
class DecoderStack:
    """The decoder layers of a model: ``path`` is their dotted name, e.g. ``"model.layers"``."""

    path: str
    layers: nn.ModuleList


def find_decoder_layers(model: nn.Module) -> DecoderStack:
    """The largest ``nn.ModuleList`` of same-type layers that contain ``nn.Linear`` modules."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        if not any(isinstance(m, nn.Linear) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        kinds = sorted({type(m).__name__ for m in model.modules()})[:12]
        raise UnsupportedModelError(
            f"{type(model).__name__} is not supported: no list of decoder layers with nn.Linear "
            f"projections was found (module types seen: {', '.join(kinds)})"
        )
    return DecoderStack(path=best[1], layers=best[2])


def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of one decoder layer, by name relative to the layer."""
    linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise UnsupportedModelError(f"decoder layer {type(layer).__name__} has no nn.Linear projections")
    return linears


@dataclass(frozen=True)
class FoldRule:
    """Fold the input scale of ``consumers`` into ``producer``.

    kind ``"norm"``: producer is a norm whose output is the consumers' input (its weight, and
    bias if any, are divided by s).  kind ``"rows"``: producer is a linear whose output rows feed
    the consumer's input channels through an op that commutes with a positive per-channel scale
    (attention-value mixing, the GLU product, ReLU).
    """

    producer: str
    consumers: tuple[str, ...]
    kind: str


_LLAMA_LIKE = (
    FoldRule("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "norm"),
    FoldRule("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "norm"),
    FoldRule("self_attn.v_proj", ("self_attn.o_proj",), "rows"),  # exact only without GQA: shapes check it
    FoldRule("mlp.up_proj", ("mlp.down_proj",), "rows"),
)

_OPT = (
    FoldRule("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "norm"),
    FoldRule("final_layer_norm", ("fc1",), "norm"),
    FoldRule("self_attn.v_proj", ("self_attn.out_proj",), "rows"),
    FoldRule("fc1", ("fc2",), "rows"),  # through ReLU; checked below
)

FOLD_TABLE: dict[str, tuple[FoldRule, ...]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "opt": _OPT,
}

_NORM_NAMES = ("RMSNorm", "LayerNorm")
# Norms whose weight is applied as (1 + w) cannot be folded by scaling w.
_OFFSET_NORMS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")


def _fold_allowed(rule: FoldRule, layer: nn.Module, linears: dict[str, nn.Linear], config) -> bool:
    try:
        producer = layer.get_submodule(rule.producer)
    except AttributeError:
        return False
    if any(c not in linears for c in rule.consumers):
        return False
    in_features = {linears[c].in_features for c in rule.consumers}
    if len(in_features) != 1:
        return False
    (width,) = in_features
    if rule.kind == "norm":
        name = type(producer).__name__
        if name in _OFFSET_NORMS or not any(n in name for n in _NORM_NAMES):
            return False
        weight = getattr(producer, "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (width,):
            return False
        if getattr(config, "model_type", None) == "opt" and not getattr(config, "do_layer_norm_before", True):
            return False  # post-LN OPT: this norm does not produce the consumers' input
        return True
    if rule.kind == "rows":
        if not isinstance(producer, nn.Linear) or producer.out_features != width:
            return False
        if rule.producer == "fc1" and getattr(config, "activation_function", "relu") != "relu":
            return False
        return True
    raise ValueError(f"unknown fold kind {rule.kind!r}")


def plan_folds(model_type: str, layer: nn.Module, linears: dict[str, nn.Linear], config=None) -> dict[str, FoldRule]:
    """For each consumer linear whose scale can be folded exactly, the rule to use.

    Linears missing from the result get their input scale applied at run time.
    """
    plan: dict[str, FoldRule] = {}
    for rule in FOLD_TABLE.get(model_type, ()):
        if _fold_allowed(rule, layer, linears, config):
            for consumer in rule.consumers:
                plan[consumer] = rule
    return plan
