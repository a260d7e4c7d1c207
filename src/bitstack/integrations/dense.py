"""A loaded model's BitStack linears as plain ``nn.Linear`` modules (what export writes)."""

from __future__ import annotations

import torch
from torch import nn


def dense_linear(module) -> nn.Linear:
    """The ``nn.Linear`` computing what the :class:`~bitstack.runtime.linear.BitStackLinear`
    ``module`` computes with its loaded blocks: weight Ŵ · diag(input_scale) (float32 math, cast to
    the dtype of the module's float tensors)."""
    weight = module.dense_weight(torch.float32)
    if module.input_scale is not None:
        weight = weight * module.input_scale.to(torch.float32)[None, :]
    dtype = module.bias.dtype if module.bias is not None else (
        module.input_scale.dtype if module.input_scale is not None else None)
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       device=weight.device, dtype=dtype or weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


def densify(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Replace, in place, every BitStackLinear of a loaded model by its :func:`dense_linear` in
    ``dtype``; the model no longer follows its artifact (no ``bitstack``, transformers'
    ``save_pretrained``)."""
    from bitstack.runtime.linear import BitStackLinear

    for name, module in list(model.named_modules()):
        if isinstance(module, BitStackLinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, dense_linear(module).to(dtype))
    for handle in model.bitstack._handles:
        handle.remove()
    model.__dict__.pop("save_pretrained", None)
    del model.bitstack
    return model
