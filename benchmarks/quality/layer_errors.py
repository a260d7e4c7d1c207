"""Relative output error of every prefix of the planes codec on a few real SmolLM2 layers.

For each setting (``CompressConfig`` overrides), the embedded model is (optionally) rotated, the
calibration tokens run through the float layers, and the chosen layers are compressed exactly as
``bitstack.compress`` does (scales, folds, grids, signs).  Printed per setting: for j = 1 … J
blocks, Σ_w tr(R_j H R_jᵀ) / Σ_w tr(W H Wᵀ) over the chosen layers' linears (the output error
on the calibration inputs, relative to the output energy), plus the geometric mean over weights.
A quick proxy, on a CPU, for whether a method choice helps before it is measured end to end.

    python -m benchmarks.quality.layer_errors --calib calib.txt --layers 2,15,27 \\
        rotate=none rotate=hadamard "rotate=hadamard level_weights=0.05,3,1,1,0.3,0.1"
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from benchmarks.quality.common import parse_settings


def layer_errors(settings: dict, calib: str, layers: list[int], nsamples: int, seqlen: int, seed: int, levels: int,
                 device: str) -> tuple[list[float], list[float]]:
    """(pooled relative error per prefix 1…levels, geometric mean over weights per prefix)."""
    from bitstack.calibration.layerwise import capture_layer_inputs, run_layer
    from bitstack.calibration.samples import calibration_samples
    from bitstack.codecs import get_codec
    from bitstack.decomposition import decompose_linears, layer_folds, layer_scales
    from bitstack.config import CompressConfig
    from bitstack.models.architecture import find_decoder_layers, layer_linears
    from bitstack.models.rotation import rotate_model
    from bitstack.models.source import load_float_model

    config = CompressConfig(calib=calib, nsamples=nsamples, seqlen=seqlen, seed=seed, niter=levels, **settings)
    loaded = load_float_model("smollm2-135m")
    model = loaded.model.float().eval()
    if config.rotate == "hadamard":
        rotate_model(model, config.seed)
    model.to(device)
    samples = calibration_samples(calib, model, loaded.tokenizer, nsamples, seqlen, seed, progress=False)
    decoder = find_decoder_layers(model)
    inputs = capture_layer_inputs(model, decoder.layers[0], samples, config.batch_size, torch.device(device))
    pooled = [0.0] * levels
    energy = 0.0
    logs: list[list[float]] = [[] for _ in range(levels)]
    for index, layer in enumerate(decoder.layers[: max(layers) + 1]):
        if index not in layers:
            inputs, _ = run_layer(layer, inputs, {})
            continue
        linears = layer_linears(layer)
        hessians = get_codec(config.codec).needs_hessian(config.codec_settings())
        outputs, stats = run_layer(layer, inputs, linears, hessians=hessians)
        scales = layer_scales(linears, stats, layer_folds(model, layer, linears), config)
        results = decompose_linears(linears, scales, stats, config, f"l{index}", 0)
        inputs = outputs  # the float layer's outputs, as in bitstack.compress
        for result in results.values():
            sq = result.residual_sq
            energy += sq[0]
            for j in range(levels):
                pooled[j] += sq[j + 1]
                logs[j].append(math.log(max(sq[j + 1], 1e-30) / sq[0]))
    return [p / energy for p in pooled], [math.exp(sum(l) / len(l)) for l in logs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib", required=True, help="calibration text (e.g. the calibration part of write_split)")
    parser.add_argument("--layers", default="2,15,27")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="result file (benchmarks/resultfile.py schema)")
    parser.add_argument("settings", nargs="+", help='one quoted "key=value ..." per setting')
    args = parser.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")]
    rows = []
    for text in args.settings:
        started = time.perf_counter()
        pooled, geo = layer_errors(parse_settings(text), args.calib, layers, args.nsamples, args.seqlen, args.seed,
                                   args.levels, args.device)
        rows.append([text or "defaults"] + [float(f"{p:.4g}") for p in pooled] + [float(f"{g:.4g}") for g in geo])
        print(f"{text:55s} pooled " + " ".join(f"{p:.2e}" for p in pooled)
              + " | geomean " + " ".join(f"{g:.2e}" for g in geo) + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.out:
        from pathlib import Path

        from benchmarks.resultfile import write_result

        levels = range(1, args.levels + 1)
        write_result(args.out, title="Relative output error per prefix on real SmolLM2 layers", topic="quality",
                     columns=["setting"] + [f"pooled j={j}" for j in levels] + [f"geomean j={j}" for j in levels], rows=rows,
                     notes=(f"Layers {args.layers} of SmolLM2-135M, compressed as bitstack.compress does (CompressConfig "
                            f"defaults plus the setting, {args.levels} blocks); calibration {args.nsamples} x {args.seqlen} "
                            f"tokens of {Path(args.calib).name}, seed {args.seed}. pooled: sum over the layers' linears of "
                            "tr(R_j H R_j^T) / sum of tr(W H W^T) after j blocks; geomean: geometric mean over the linears "
                            "of the same ratio per linear. A proxy, not a perplexity."))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
