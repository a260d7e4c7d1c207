"""How close each grid comes to SmolLM2's stored weights, which lie on a 4-bit grid per 32 (Q4_1).

Every decomposed linear of the embedded GGUF is Q4_1: in each block of 32 consecutive weights of
a row, w = d·q + m, q in 0 … 15, one float16 d and m per block.  For a few linears (no
calibration: plain weights, no activation scale), prints the relative Frobenius error
||W - Ŵ|| / ||W|| of

- the planes codec's round-to-nearest prefixes of 2, 3 and 4 blocks (full group span, no clip),
  at groups of 32 (aligned with the Q4_1 blocks), 64 and 128, and at groups of 32 with the span
  widened to 16/15 of the group's range (the 16 levels of 4 planes sit at bin centres; a span of
  16 d puts them on Q4_1's levels m + d·q);
- round-to-nearest on llmcompressor's grid at 4 bits (bfloat16 scale, integer zero point;
  :func:`benchmarks.quality.gptq.rtn_quantize`) at groups of 32 and 64;

and the bits per parameter each costs (grid metadata included).  A check of the grid argument
in docs/quality-method.md, not a perplexity.

    python -m benchmarks.quality.grid_check --layers 0,15,29 --out benchmarks/results/quality/q4_1_grid_cpu.json
"""

from __future__ import annotations

import argparse
import time

import torch


def relative_errors(weight: torch.Tensor) -> dict[str, float]:
    """setting -> ||W - Ŵ||_F / ||W||_F for one float32 (out, in) weight (module docstring)."""
    from benchmarks.quality.gptq import rtn_quantize
    from bitstack.codecs.planes.decompose import plane_decompose

    norm = float(weight.norm())
    out = {}
    for group, ratio in ((32, 1.0), (64, 1.0), (128, 1.0), (32, 16 / 15)):
        result = plane_decompose(weight, 4, group, clip_ratios=(ratio,))
        span = "" if ratio == 1.0 else " span 16/15"
        for blocks in (2, 3, 4):
            out[f"planes g{group}{span}, {blocks} blocks"] = (result.residual_sq[blocks] ** 0.5) / norm
    for group in (32, 64):
        out[f"RTN w4 g{group} (llmcompressor grid)"] = float((weight - rtn_quantize(weight, 4, group)).norm()) / norm
    return out


def bits(setting: str) -> float:
    """Bits per parameter of a setting, grid metadata included (planes: two float16 per group;
    llmcompressor: a bfloat16 scale and a 4-bit zero per group)."""
    if setting.startswith("planes"):
        group, blocks = int(setting.split(",")[0].split()[1][1:]), int(setting.split(", ")[1].split()[0])
        return blocks + 32 / group
    group = int(setting.split(" g")[1].split()[0])
    return 4 + 20 / group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="0,15,29")
    parser.add_argument("--out", default=None, help="result file (benchmarks/resultfile.py schema)")
    args = parser.parse_args(argv)
    from bitstack.models.architecture import find_decoder_layers, layer_linears
    from bitstack.models.source import load_float_model

    started = time.perf_counter()
    model = load_float_model("smollm2-135m").model.float()
    layers = find_decoder_layers(model).layers
    totals: dict[str, list[float]] = {}
    names = []
    for index in (int(x) for x in args.layers.split(",")):
        for name, linear in layer_linears(layers[index]).items():
            names.append(f"{index}.{name}")
            for setting, err in relative_errors(linear.weight.detach().float()).items():
                totals.setdefault(setting, []).append(err)
    rows = []
    for setting, errs in totals.items():
        rows.append([setting, round(bits(setting), 3), float(f"{sum(errs) / len(errs):.4g}"), float(f"{max(errs):.4g}")])
        print(f"{setting:40s} {bits(setting):6.3f} bits  mean {rows[-1][2]:.3e}  max {rows[-1][3]:.3e}", flush=True)
    if args.out:
        from benchmarks.resultfile import write_result

        write_result(args.out, title="Grids against SmolLM2's stored 4-bit grid (Q4_1, blocks of 32)", topic="quality",
                     columns=["grid", "bits/param (metadata included)", "relative weight error (mean)", "(max)"],
                     rows=rows,
                     notes=(f"Relative Frobenius error ||W - Ŵ|| / ||W|| of the plain weights (no activation scale, no "
                            f"calibration) of the {len(names)} linears of layers {args.layers} of the embedded "
                            "SmolLM2-135M-Instruct GGUF, whose decomposed linears are all Q4_1. planes: round-to-nearest "
                            "prefixes on the full group span (clip none). RTN: llmcompressor's grid (bfloat16 scale, "
                            f"integer zero point). Wall {time.perf_counter() - started:.0f} s."))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
