"""CPU decode speed of SmolLM2-135M: BitStack at several budgets against the float model (issue 5, part 3).

    python benchmarks/cpu_decode.py ARTIFACT [--threads 2] [--tokens 32]

Greedy generation, batch 1, bf16 compute, the same prompt for every setting; tokens/s is measured
over ``--tokens`` new tokens after one warm-up generation.  Two ways to compute a layer, both
measured on the same loaded model (``--paths``):

* ``rebuild``: each forward rebuilds every weight from its loaded blocks, then ``F.linear``;
* ``lut`` (codec planes; the CPU default for up to ``LUT_MAX_TOKENS`` tokens): byte lookup tables,
  no weight rebuilt (:mod:`bitstack.core.planes_lut`).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import bitstack
from bitstack.models.source import load_float_model
from bitstack.runtime.linear import LUT_MAX_TOKENS, BitStackLinear
from bitstack.runtime.report import memory_report


def tokens_per_second(model, ids, tokens: int) -> float:
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        began = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return tokens / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--bits", default="3,4,8", help="budgets in bits per decomposed parameter")
    parser.add_argument("--paths", default="lut,rebuild", help="lut and/or rebuild (module docstring)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = bitstack.load_tokenizer(args.artifact)
    ids = tokenizer("The history of the river valley begins", return_tensors="pt").input_ids
    dense = load_float_model("smollm2-135m").model.to(torch.bfloat16).eval()
    base = tokens_per_second(dense, ids, args.tokens)
    dense_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    del dense
    print(f"CPU {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"{args.tokens} new tokens, batch 1")
    paths = [p for p in args.paths.split(",") if p]
    print("| setting | memory (MB) | bits/param | " + " | ".join(f"{p} tokens/s | {p} vs float" for p in paths) + " |")
    print("|---|---|---|" + "---|---|" * len(paths))
    print(f"| float (bf16) | {dense_bytes / 1e6:.1f} | 16 | " + " | ".join(f"{base:.2f} | 1.00×" for _ in paths) + " |")
    full = bitstack.load(args.artifact, device="cpu")
    manifest, params = full.bitstack.manifest, full.bitstack.manifest.decomposed_params()
    del full
    for bits in [float(b) for b in args.bits.split(",")] + [None]:
        budget = None if bits is None else manifest.base_bytes + int(bits * params / 8)
        model = bitstack.load(args.artifact, budget, device="cpu")
        report = memory_report(model)
        cells = []
        for path in paths:
            for module in model.modules():
                if isinstance(module, BitStackLinear):
                    module.lut_max_tokens = LUT_MAX_TOKENS if path == "lut" else 0
            tps = tokens_per_second(model, ids, args.tokens)
            cells.append(f"{tps:.2f} | {tps / base:.2f}×")
        label = "full stack" if bits is None else f"{bits:g} bits"
        print(f"| {label} | {report['memory_bytes'] / 1e6:.1f} | {report['bits_per_param']:.2f} | " + " | ".join(cells) + " |",
              flush=True)
        del model


if __name__ == "__main__":
    main()
