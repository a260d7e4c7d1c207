"""CPU time of one planes linear by token count: which path wins where (the native_max_tokens evidence).

    python -m benchmarks.cpu.tokens [--shapes 576x576,192x576,1536x576,576x1536] [--blocks 3]
        [--tokens 1,4,8,16,32,64] [--threads 2] [--rounds 5] [--calls 15] [--stat median] [--dtype bfloat16]
        [--out benchmarks/results/cpu/tokens.json]

For each shape (default: SmolLM2's linears), random weights in ``--blocks`` planes (groups of
128) and activations of each token count, in interleaved rounds:

* ``native lut``: the native lookup-table kernel (bitstack.native, torch.ops.bitstack.planes_lut_linear);
* ``native rebuild``: Ŵ rebuilt natively in the activation dtype, then F.linear (the runtime's
  path above ``native_max_tokens``);
* ``embedding_bag lut``: the PyTorch lookup tables (the path without the native library);
* ``float``: F.linear with a dense weight of the activation dtype (reference).

The runtime takes the native lookup tables up to ``native_max_tokens`` tokens (bitstack.kernels.dispatch)
and rebuilds above: the crossover of the first two columns is where that threshold belongs.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.cpu.common import STAT_HELP, STATS, interleaved, load_average, median_call_s, threads_note
from benchmarks.resultfile import write_result
from bitstack.codecs.planes.lut import planes_linear_lut
from bitstack.native.planes import native_isa, planes_dense, planes_lut_linear
from bitstack.kernels.dispatch import DEFAULT_TABLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--shapes", default="576x576,192x576,1536x576,576x1536")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--tokens", default="1,4,8,16,32,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--stat", choices=sorted(STATS), default="median", help=STAT_HELP)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    isa = native_isa(True)
    load_before = load_average()
    print(f"native kernel: {isa}; {threads_note(args.threads)}; {args.blocks} blocks, groups of 128, {args.dtype} x; "
          f"native_max_tokens = {DEFAULT_TABLE.native_max_tokens}; load {load_before}")
    columns = ["out×in", "tokens", "float F.linear µs", "native lut µs", "native rebuild + F.linear µs",
               "embedding_bag lut µs", "rebuild / native lut"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    rows, raw = [], []
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        groups = -(-k // 128)
        signs = [torch.randint(0, 256, (n, -(-k // 8)), dtype=torch.uint8) for _ in range(args.blocks)]
        offset, step = (torch.randn(n, groups) * 0.01).half(), (torch.rand(n, groups) * 0.01).half()
        dense = (torch.randn(n, k) * 0.02).to(dtype)
        for tokens in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(tokens, k).to(dtype)
            fns = {
                "float": lambda: F.linear(x, dense),
                "native lut": lambda: planes_lut_linear(x, signs, offset, step, 128, native=True),
                "native rebuild": lambda: F.linear(x, planes_dense(signs, offset, step, k, 128, dtype, native=True)),
                "embedding_bag lut": lambda: planes_linear_lut(x, signs, offset, step, 128),
            }
            timed = {name: (lambda fn=fn: median_call_s(fn, args.calls, args.stat)) for name, fn in fns.items()}
            med = {name: STATS[args.stat](v) * 1e6 for name, v in interleaved(timed, args.rounds).items()}
            row = [shape, tokens, round(med["float"], 1), round(med["native lut"], 1), round(med["native rebuild"], 1),
                   round(med["embedding_bag lut"], 1), round(med["native rebuild"] / med["native lut"], 2)]
            rows.append(row)
            raw.append({"shape": shape, "tokens": tokens, "us": med, "stat": args.stat})
            print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    load_after = load_average()
    print(f"load average before {load_before}, after {load_after}")
    if args.out:
        notes = (f"Native kernel {isa}; {args.blocks} blocks, groups of 128, {args.dtype} activations, random weights; "
                 f"{threads_note(args.threads)}; {args.stat} over {args.rounds} interleaved rounds of the {args.stat} of "
                 f"{args.calls} calls. native_max_tokens = {DEFAULT_TABLE.native_max_tokens}. Load average before {load_before}, after "
                 f"{load_after}.")
        write_result(args.out, title="CPU: one planes linear by token count (lookup tables vs rebuild)", topic="cpu",
                     columns=columns, rows=rows, notes=notes, extra={"isa": isa, "raw": raw})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
