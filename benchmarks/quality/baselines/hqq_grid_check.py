"""How close HQQ's dequantized weights come to the float weights of the embedded SmolLM2.

The embedded model is a Q4_1 GGUF: its weights lie on a 16-level grid (float16 scale and
minimum) per block of 32.  A 4-bit quantizer with float zero-points and groups of 32 can land on
that grid.  This prints the relative Frobenius error ||W - deq(Q(W))|| / ||W|| of HQQ (the
``HQQLinear`` of ``quantize_baselines.py``'s ``hqq`` method, PYTORCH backend) for a few weights,
at 4 bits with groups of 32 and 64 and at 3 bits with groups of 64.

    python -m benchmarks.quality.baselines.hqq_grid_check [--layer 5]

Needs hqq (see this folder's README) and the embedded model; runs on the CPU in seconds.
"""

from __future__ import annotations

import argparse
import copy

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument("--weights", default="self_attn.q_proj,mlp.down_proj")
    parser.add_argument("--result", default=None, help="also write a result file (benchmarks/resultfile.py)")
    args = parser.parse_args(argv)

    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    from bitstack.models.source import load_float_model

    HQQLinear.set_backend(HQQBackend.PYTORCH)
    layer = load_float_model("smollm2-135m", dtype=torch.bfloat16).model.model.layers[args.layer]
    print("| weight | bits | group | relative error |")
    print("|---|---|---|---|")
    rows = []
    for name in args.weights.split(","):
        linear = layer.get_submodule(name)
        weight = linear.weight.detach().float()
        for bits, group in ((4, 32), (4, 64), (3, 64)):
            quantized = HQQLinear(copy.deepcopy(linear), BaseQuantizeConfig(nbits=bits, group_size=group),
                                  compute_dtype=torch.bfloat16, device="cpu")
            error = float((weight - quantized.dequantize().float()).norm() / weight.norm())
            print(f"| layer {args.layer} {name} | {bits} | {group} | {100 * error:.2f}% |", flush=True)
            rows.append([f"layer {args.layer} {name}", bits, group, f"{100 * error:.2f} %"])
    if args.result:
        from importlib.metadata import version

        from benchmarks.resultfile import write_result

        write_result(args.result, title="HQQ on the embedded model's Q4_1 grid: relative weight error", topic="quality",
                     columns=["weight", "bits", "group", "‖W − deq(Q(W))‖ / ‖W‖"], rows=rows,
                     notes=("HQQ `HQQLinear` (PYTORCH backend, the `hqq` method of quantize_baselines.py) on weights of "
                            "the embedded SmolLM2-135M, a Q4_1 GGUF whose weights lie on a 16-level grid per block of 32. "
                            f"hqq {version('hqq')}."))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
