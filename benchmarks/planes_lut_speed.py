"""CPU time of one planes linear: lookup tables (``core/planes_lut.py``) against rebuilding Ŵ (issue 5).

For SmolLM2's linear shapes, random weights decomposed into ``--blocks`` planes (groups of 128),
bf16 activations of 1 … 64 tokens: the median time of ``planes_linear_lut`` and of
``planes_reconstruct`` + ``F.linear`` (what the runtime's pure path does above
``LUT_MAX_TOKENS``), measured in the same run, and their ratio.  The float ``F.linear`` with a
bf16 weight is printed for reference.

    python benchmarks/planes_lut_speed.py [--threads 2] [--blocks 4]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def _median_us(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--tokens", default="1,4,8,16,32,64")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)

    from bitstack.codecs.planes.decompose import plane_decompose
    from bitstack.codecs.planes.grid import planes_reconstruct
    from bitstack.codecs.planes.lut import planes_linear_lut

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"{args.blocks} blocks, groups of 128, bf16 x; median of {args.repeats}")
    print("| out×in | tokens | float F.linear µs | rebuild + F.linear µs | lookup tables µs | rebuild / tables |")
    print("|---|---|---|---|---|---|")
    for out_features, in_features in ((576, 576), (192, 576), (1536, 576), (576, 1536)):
        weight = torch.randn(out_features, in_features)
        dec = plane_decompose(weight, args.blocks, 128)
        signs = [b.signs for b in dec.blocks]
        dense = weight.to(torch.bfloat16)
        for tokens in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(tokens, in_features).to(torch.bfloat16)
            t_float = _median_us(lambda: F.linear(x, dense), args.repeats)
            t_rebuild = _median_us(lambda: F.linear(x, planes_reconstruct(dec.blocks, dec.offset, dec.step, 128,
                                                                           torch.bfloat16)), args.repeats)
            t_lut = _median_us(lambda: planes_linear_lut(x, signs, dec.offset, dec.step, 128), args.repeats)
            print(f"| {out_features}×{in_features} | {tokens} | {t_float:.0f} | {t_rebuild:.0f} | {t_lut:.0f} | "
                  f"{t_rebuild / t_lut:.2f}× |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
