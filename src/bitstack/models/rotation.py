"""Incoherence processing: randomized Hadamard rotations of a decoder, folded exactly into its weights.

A training-free form of QuaRot/SpinQuant's rotations (docs: "How it works").  With Q = diag(σ) H
(:mod:`bitstack.models.hadamard`), the rotated model computes the same function, its weights
spread every outlier over all channels, and every prefix of a compressed stack is still a model:

- RMSNorm weights are folded into the linears that read them (q/k/v, gate/up: W ← W diag(g),
  the norm's weight ← 1), so the norms commute with any rotation;
- the residual stream is rotated, x' = x Q_d: the embedding E ← E Q_d (a tied LM head is the same
  matrix, so the tie is kept), q/k/v/gate/up W ← W Q_d, o/down W ← Q_dᵀ W (and their biases);
- the final norm, whose weight g is kept, computes norm(x' Q_dᵀ) Q_d: two rotations of one token
  vector at run time (stored: σ_d, d int8 signs, buffer ``rotation_signs`` of the norm), so that the
  logits norm(x) (E Q_d)ᵀ are the original ones with the tied matrix E Q_d;
- each attention head's values are rotated by R = Q_hd (v rows per head W ← Rᵀ W, o columns per
  head W ← W R): exact, attention mixes the value vectors of a head linearly;
- down_proj's input is rotated at run time, x ↦ x Q_ff (no op before it commutes with a
  rotation: the GLU product is elementwise), W_down ← W_down Q_ff; the signs σ_ff are the int8
  buffer ``input_rotation`` of the linear (one tensor shared by every layer).

Families: Llama-like decoders (llama, mistral, qwen2, qwen3) with RMSNorm.  Shapes: hidden size d,
head_dim and intermediate size must be Hadamard orders (:func:`~bitstack.models.hadamard.hadamard_orders`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bitstack.errors import ArtifactError, UnsupportedModelError
from bitstack.models.architecture import find_decoder_layers
from bitstack.models.hadamard import hadamard_orders, random_signs, rotate, rotation_matrix

INPUT_ROTATION = "input_rotation"  # buffer of a linear: signs of its run-time input rotation
NORM_ROTATION = "rotation_signs"  # buffer of the final norm: signs of the residual rotation
ROTATABLE = ("llama", "mistral", "qwen2", "qwen3")
ROTATION_VERSION = 1  # of the manifest's rotation section (rotation_section)
ROTATION_KINDS = ("hadamard",)


def _rotate_input_hook(module: nn.Module, args):
    sigma = getattr(module, INPUT_ROTATION, None)
    if sigma is None:
        return None
    return (rotate(args[0], sigma),) + tuple(args[1:])


def _unrotate_norm_input(module: nn.Module, args):
    sigma = getattr(module, NORM_ROTATION, None)
    if sigma is None:
        return None
    return (rotate(args[0], sigma, transpose=True),) + tuple(args[1:])


def _rotate_norm_output(module: nn.Module, args, output):
    sigma = getattr(module, NORM_ROTATION, None)
    return output if sigma is None else rotate(output, sigma)


def attach_input_rotation(module: nn.Module, sigma: torch.Tensor | None) -> None:
    """Give a linear (``nn.Linear`` or ``BitStackLinear``) a run-time input rotation
    x ↦ x diag(σ) H, before anything else its forward does (buffer ``input_rotation`` + forward
    pre-hook); ``sigma`` None registers the buffer empty (to be assigned, e.g. by the loader)."""
    module.register_buffer(INPUT_ROTATION, sigma)
    module.register_forward_pre_hook(_rotate_input_hook)


def attach_norm_rotation(norm: nn.Module, sigma: torch.Tensor | None) -> None:
    """Make ``norm`` compute norm(x Qᵀ) Q, Q = diag(σ) H (buffer ``rotation_signs`` + two hooks);
    ``sigma`` None registers the buffer empty (to be assigned, e.g. by the loader)."""
    norm.register_buffer(NORM_ROTATION, sigma)
    norm.register_forward_pre_hook(_unrotate_norm_input)
    norm.register_forward_hook(_rotate_norm_output)


def rotation_section(model: nn.Module) -> dict | None:
    """The manifest's ``rotation`` section of a model rotated by :func:`rotate_model` (None if it
    was not): {"version", "kind", "inputs": modules with an input rotation, "norms": modules with a
    norm rotation}; the signs are their base buffers ``NAME.input_rotation`` / ``NAME.rotation_signs``."""
    inputs = [n for n, m in model.named_modules() if getattr(m, INPUT_ROTATION, None) is not None]
    norms = [n for n, m in model.named_modules() if getattr(m, NORM_ROTATION, None) is not None]
    if not inputs and not norms:
        return None
    return {"version": ROTATION_VERSION, "kind": "hadamard", "inputs": inputs, "norms": norms}


def prepare_loaded_rotations(model: nn.Module, section: dict | None) -> None:
    """Before an artifact's base tensors are assigned: give the modules that its (validated)
    ``rotation`` section names their empty sign buffers and hooks."""
    if section is None:
        return
    for name in section["inputs"]:
        attach_input_rotation(model.get_submodule(name), None)
    for name in section["norms"]:
        attach_norm_rotation(model.get_submodule(name), None)


def check_rotation_section(rotation: Any, base_specs: dict[str, dict], aliases: dict, weights: dict, what: str) -> None:
    """ArtifactError unless a manifest's ``rotation`` section (None: no rotation) has this version,
    a known kind, and an int8 base buffer of signs for every module it names (``inputs``:
    decomposed weights, of their in_features; ``norms``: any module).  ``base_specs``: base tensor
    name -> its manifest entry; ``aliases``: the base's aliases; ``weights``: name -> weight entry."""
    if rotation is None:
        return
    where = f"{what}: rotation"
    if not isinstance(rotation, dict) or set(rotation) != {"version", "kind", "inputs", "norms"}:
        raise ArtifactError(f"{where} must be an object of exactly version, kind, inputs, norms")
    if type(rotation["version"]) is not int or rotation["version"] != ROTATION_VERSION:
        raise ArtifactError(f"{where} has version {rotation['version']!r}, this bitstack reads {ROTATION_VERSION}: upgrade bitstack")
    if rotation["kind"] not in ROTATION_KINDS:
        raise ArtifactError(f"{where}: kind must be one of {', '.join(ROTATION_KINDS)}, got {rotation['kind']!r}"[:300])
    for key, attr in (("inputs", INPUT_ROTATION), ("norms", NORM_ROTATION)):
        if not isinstance(rotation[key], list) or not all(isinstance(n, str) and n for n in rotation[key]):
            raise ArtifactError(f"{where}: {key} must be a list of module names")
        for module in rotation[key]:
            if key == "inputs" and module not in weights:
                raise ArtifactError(f"{where}: {module!r} is not a decomposed weight")
            tensor = f"{module}.{attr}"
            spec = base_specs.get(aliases.get(tensor, tensor))
            length = [weights[module].in_features] if key == "inputs" else (spec or {}).get("shape")
            if spec is None or spec["kind"] != "buffer" or spec["dtype"] != "I8" or spec["shape"] != length \
                    or len(spec["shape"]) != 1:
                raise ArtifactError(f"{where} needs the base buffer {tensor}, int8 signs of shape {length or '[width]'}")


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _norm(model: nn.Module) -> nn.Module:
    norm = getattr(model.base_model, "norm", None)
    if norm is None or "RMSNorm" not in type(norm).__name__:
        raise UnsupportedModelError(f"{type(model).__name__} has no final RMSNorm at base_model.norm: it cannot be rotated")
    return norm


@torch.no_grad()
def _mul_(param: torch.Tensor, left: torch.Tensor | None = None, right: torch.Tensor | None = None) -> None:
    """param ← left @ param @ right in float64, in place (param keeps its dtype)."""
    value = param.to(torch.float64)
    if left is not None:
        value = left.to(value.device) @ value
    if right is not None:
        value = value @ right.to(value.device)
    param.copy_(value.to(param.dtype))


@torch.no_grad()
def _fold_norm(norm: nn.Module, consumers: list[nn.Linear]) -> None:
    if "RMSNorm" not in type(norm).__name__ or getattr(norm, "bias", None) is not None:
        raise UnsupportedModelError(f"{type(norm).__name__} is not a plain RMSNorm: it cannot be folded for rotation")
    gain = norm.weight.to(torch.float64)
    for linear in consumers:
        _mul_(linear.weight, right=torch.diag(gain))
    norm.weight.fill_(1.0)


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int) -> None:
    """Rotate a Llama-like causal LM in place (module docstring); its outputs are unchanged up to
    the rounding of its parameters' dtype.  ``seed`` draws the signs σ_d, σ_hd and σ_ff."""
    config = model.config
    if getattr(config, "model_type", None) not in ROTATABLE:
        raise UnsupportedModelError(f"rotations support {', '.join(ROTATABLE)} models, not {getattr(config, 'model_type', None)!r}")
    head_dim = _head_dim(config)
    for width in (config.hidden_size, head_dim, config.intermediate_size):
        hadamard_orders(width)  # fails fast on a width without a Hadamard matrix
    norm = _norm(model)
    layers = find_decoder_layers(model).layers
    generator = torch.Generator().manual_seed(seed)
    sig_d = random_signs(config.hidden_size, generator)
    sig_hd = random_signs(head_dim, generator)
    sig_ff = random_signs(config.intermediate_size, generator)
    q_d, r_hd, q_ff = rotation_matrix(sig_d), rotation_matrix(sig_hd), rotation_matrix(sig_ff)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    _mul_(embed.weight, right=q_d)
    if head is not None and head.weight is not embed.weight:
        _mul_(head.weight, right=q_d)
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        _fold_norm(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        _fold_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _mul_(linear.weight, right=q_d)
        for linear in (attn.o_proj, mlp.down_proj):
            _mul_(linear.weight, left=q_d.T)
            if linear.bias is not None:
                _mul_(linear.bias.view(1, -1), right=q_d)
        v, o = attn.v_proj, attn.o_proj
        blocks = torch.block_diag(*[r_hd] * (v.out_features // head_dim))
        _mul_(v.weight, left=blocks.T)
        if v.bias is not None:
            _mul_(v.bias.view(1, -1), right=blocks)
        _mul_(o.weight, right=torch.block_diag(*[r_hd] * (o.in_features // head_dim)))
        _mul_(mlp.down_proj.weight, right=q_ff)
        attach_input_rotation(mlp.down_proj, sig_ff)
    attach_norm_rotation(norm, sig_d)


def has_input_rotation(module: nn.Module) -> bool:
    """Whether ``module`` rotates its input at run time (then no per-channel scale of the input
    can be folded into the op before it)."""
    return getattr(module, INPUT_ROTATION, None) is not None
