"""Round-to-nearest and GPTQ (with act-order) weight quantization of a causal LM: the table's
fixed-size anchors, computed in the same process and on the same calibration tokens as BitStack.

Grid, as llmcompressor stores it: per row and group of ``group`` input columns, asymmetric
integers 0 … 2^bits − 1 with scale (max − min) / (2^bits − 1) rounded to bfloat16 and an integer
zero point round(−min / scale); memory = the non-decomposed weights + bits/8 bytes per weight +
(16 + bits)/8 bytes per group.  GPTQ (Frantar et al., 2022): columns quantized in order of
decreasing Hessian diagonal ("act-order"), each column's rounding error spread over the columns
not yet quantized through the Cholesky factor of H⁻¹ (lazy batches of 128 columns); the groups'
grids are fixed from the original weight before the pass ("static groups"), so the stored layout
is the plain group layout.  The layers are quantized one after another, each calibrated on the
outputs of the already quantized layers before it; the linears of one layer share one pass.

    python -m benchmarks.quality.gptq --help   (a smoke run on the embedded model)
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn


def group_grid(weight: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32 (out, G) with bfloat16 values, zero float32 (out, G) integers) of the
    asymmetric min/max grid of each (row, group); weight float32 (out, in), in % group == 0."""
    out_features, in_features = weight.shape
    if in_features % group:
        raise ValueError(f"{in_features} input columns are not a multiple of the group size {group}")
    grouped = weight.reshape(out_features, in_features // group, group)
    lo = grouped.amin(2).clamp_max(0.0)
    hi = grouped.amax(2).clamp_min(0.0)
    levels = 2 ** bits - 1
    scale = ((hi - lo) / levels).clamp_min(1e-8).to(torch.bfloat16).to(torch.float32)
    zero = torch.round(-lo / scale).clamp(0, levels)
    return scale, zero


def quantize_columns(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Dequantized round-to-nearest values of ``w`` on the grid (all float32, same shape)."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)
    return (q - zero) * scale


def rtn_quantize(weight: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Round-to-nearest on :func:`group_grid`; float32 (out, in) dequantized."""
    scale, zero = group_grid(weight, bits, group)
    return quantize_columns(weight, scale.repeat_interleave(group, 1), zero.repeat_interleave(group, 1), bits)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group: int, *, damp: float = 0.01,
                  act_order: bool = True, block: int = 128) -> torch.Tensor:
    """GPTQ on :func:`group_grid` (module docstring); weight float32 (out, in), hessian float32
    (in, in) = Σ x xᵀ of the layer's inputs.  Returns the dequantized weight, float32 (out, in)."""
    w = weight.to(torch.float32).clone()
    h = hessian.to(torch.float32).clone()
    scale, zero = group_grid(w, bits, group)
    scale, zero = scale.repeat_interleave(group, 1), zero.repeat_interleave(group, 1)  # per column
    dead = h.diagonal() <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    columns = w.shape[1]
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(columns, device=w.device)
    w, h, scale, zero = w[:, perm], h[perm][:, perm], scale[:, perm], zero[:, perm]
    h += torch.eye(columns, device=h.device) * damp * h.diagonal().mean()
    factor = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    out = torch.zeros_like(w)
    for first in range(0, columns, block):
        last = min(first + block, columns)
        part = w[:, first:last].clone()
        errors = torch.zeros_like(part)
        for i in range(last - first):
            q = quantize_columns(part[:, i], scale[:, first + i], zero[:, first + i], bits)
            out[:, first + i] = q
            err = (part[:, i] - q) / factor[first + i, first + i]
            part[:, i:] -= err[:, None] * factor[first + i, first + i:last][None, :]
            errors[:, i] = err
        w[:, last:] -= errors @ factor[first:last, last:]
    return out[:, torch.argsort(perm)]


def quantized_bytes(model: nn.Module, bits: int, group: int) -> int:
    """Resident bytes of the quantized model by the llmcompressor rule (module docstring): the
    parameters outside the decoder's linears at 2 bytes (bfloat16; tied ones once), every decoder
    linear at bits/8 per weight + (16 + bits)/8 per group."""
    from bitstack.models.architecture import find_decoder_layers, layer_linears

    linear_ids = {id(l.weight) for layer in find_decoder_layers(model).layers for l in layer_linears(layer).values()}
    seen, base, packed = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in linear_ids:
            packed += p.numel() * bits + (p.numel() // group) * (16 + bits)
        else:
            base += p.numel() * 2
    return base + packed // 8


@torch.no_grad()
def quantize_model(model: nn.Module, method: str, bits: int, group: int, samples: torch.Tensor | None = None,
                   batch_size: int = 8) -> None:
    """Quantize every decoder linear of ``model`` (float32, on its device) in place: ``method``
    "rtn" (no data) or "gptq" (needs ``samples``, int64 (n, seqlen) calibration tokens)."""
    from bitstack.calibration.layerwise import capture_layer_inputs, run_layer
    from bitstack.models.architecture import find_decoder_layers, layer_linears

    layers = find_decoder_layers(model).layers
    if method == "rtn":
        for layer in layers:
            for linear in layer_linears(layer).values():
                linear.weight.copy_(rtn_quantize(linear.weight.float(), bits, group).to(linear.weight.dtype))
        return
    if method != "gptq" or samples is None:
        raise ValueError("method must be 'rtn', or 'gptq' with calibration samples")
    device = next(model.parameters()).device
    inputs = capture_layer_inputs(model, layers[0], samples, batch_size, device)
    for layer in layers:
        linears = layer_linears(layer)
        _, stats = run_layer(layer, inputs, linears, hessians=True)
        for name, linear in linears.items():
            q = gptq_quantize(linear.weight.float(), stats[name].hessian, bits, group)
            linear.weight.copy_(q.to(linear.weight.dtype))
        del stats
        inputs, _ = run_layer(layer, inputs, {})  # the quantized layer's outputs feed the next


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Smoke run: quantize SmolLM2 with RTN or GPTQ, print memory and perplexity.")
    parser.add_argument("--method", default="gptq", choices=("rtn", "gptq"))
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--calib", required=True)
    parser.add_argument("--ppl", required=True)
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from pathlib import Path

    from bitstack.calibration.samples import text_file_samples
    from bitstack.evaluation.perplexity import perplexity
    from bitstack.models.source import load_float_model

    loaded = load_float_model("smollm2-135m")
    model = loaded.model.float().eval().to(args.device)
    samples = text_file_samples(args.calib, loaded.tokenizer, args.nsamples, args.seqlen, 0)
    quantize_model(model, args.method, args.bits, args.group, samples)
    ppl = perplexity(model.to(torch.bfloat16), loaded.tokenizer, Path(args.ppl).read_text(encoding="utf-8"),
                     max_windows=args.max_windows, progress=False)
    print(f"{args.method} w{args.bits} g{args.group}: {quantized_bytes(model, args.bits, args.group) / 1e6:.2f} MB, "
          f"ppl {ppl.ppl:.2f} ({args.max_windows} windows)")
    return 0 if math.isfinite(ppl.ppl) else 1


if __name__ == "__main__":
    raise SystemExit(main())
