"""Ablation of the planes codec's options on SmolLM2-135M: perplexity with every weight at j blocks.

Compresses the embedded model with the given ``CompressConfig`` overrides (8 × 512 calibration
tokens of the given text, 6 blocks per weight) and reports perplexity on the first 4 windows of
512 tokens of WikiText-2 test with *every* weight at j = 6, 4, 3, 2 blocks (uniform precision, so
the options are compared without the ordering's effect).  Memory per weight is j bits plus the
group grids' 32 / group_size bits.

    python -m benchmarks.quality.planes_ablation --calib ../shared/data/calibration_wikipedia.txt \\
        --ppl ../shared/data/wikitext2_test.txt --out /tmp/ablation scale_power=auto clip=search
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import torch


def feedback_synthetic() -> None:
    """Signs 'nearest' vs 'hessian' on a random 256 x 384 weight with correlated inputs (seeded):
    the output error tr(R H Rᵀ) after j blocks, as a ratio hessian / nearest."""
    from bitstack.codecs.planes.decompose import plane_decompose

    torch.manual_seed(0)
    w = torch.randn(256, 384)
    x = torch.randn(4096, 384) @ (torch.randn(384, 384) * 0.1 + torch.eye(384)) * (torch.rand(384) * 3)
    h = x.T @ x
    nearest = plane_decompose(w, 6, 64, hessian=h)
    fed = plane_decompose(w, 6, 64, hessian=h, feedback=True)
    ratios = [f / n for f, n in zip(fed.residual_sq[1:], nearest.residual_sq[1:])]
    print("synthetic output error, hessian / nearest signs, after 1..6 blocks: " + " ".join(f"{r:.3f}" for r in ratios))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib", required=True)
    parser.add_argument("--ppl", required=True)
    parser.add_argument("--out", required=True, help="folder for the artifact")
    parser.add_argument("--float", action="store_true", help="also score the float model on the same windows")
    parser.add_argument("--feedback-synthetic", action="store_true", help="only run feedback_synthetic() and exit")
    parser.add_argument("settings", nargs="*", help="CompressConfig overrides, KEY=VALUE")
    args = parser.parse_args(argv)
    if args.feedback_synthetic:
        feedback_synthetic()
        return 0

    import bitstack
    from bitstack.calibration.samples import tokenize_text
    from bitstack.config import CompressConfig
    from bitstack.evaluation.perplexity import token_windows
    from bitstack.sorting.measure import StackEvaluator

    kinds = {f.name: type(f.default) for f in dataclasses.fields(CompressConfig)}
    overrides = {}
    for item in args.settings:
        key, _, value = item.partition("=")
        overrides[key] = kinds[key](value)
    name = "_".join(f"{k}-{v}" for k, v in overrides.items()) or "defaults"
    path = Path(args.out) / f"{name}.bstk"
    if not (path / "manifest.json").is_file():
        started = time.perf_counter()
        config = CompressConfig(**{"calib": args.calib, "nsamples": 8, "seqlen": 512, "niter": 6, "sort": "proxy",
                                   **overrides})
        bitstack.compress("smollm2-135m", path, config, device="cpu", progress=False)
        print(f"compressed in {time.perf_counter() - started:.0f} s", flush=True)
    evaluator = StackEvaluator(path, dtype="float32", batch_size=1)
    tokenizer = bitstack.load_tokenizer(path)
    text = Path(args.ppl).read_text(encoding="utf-8")[:200000]
    windows = token_windows(tokenize_text(tokenizer, text, special_tokens=True), 512, 4)
    if args.float:
        from bitstack.models.source import load_float_model

        model = load_float_model("smollm2-135m").model.float().eval()
        with torch.no_grad():
            nll = sum(float(model(w[None], labels=w[None]).loss) for w in windows) / len(windows)
        print(f"float32: ppl {math.exp(nll):.2f}", flush=True)
    for blocks in (6, 4, 3, 2):
        evaluator.set_counts([blocks] * len(evaluator.modules))
        print(f"{name}: {blocks} blocks per weight: ppl {math.exp(evaluator.evaluate(windows)):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
