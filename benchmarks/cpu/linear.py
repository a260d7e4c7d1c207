"""One planes linear on the CPU: the native lookup-table kernel against F.linear in bfloat16 and float32.

    python -m benchmarks.cpu.linear [--shapes 8192x2048,2048x8192] [--blocks 3,4] [--tokens 1]
        [--threads 2] [--rounds 7] [--calls 20] [--stat median] [--out benchmarks/results/cpu/linear.json]

Random weights (sign planes, float16 grids in groups of 128), bfloat16 activations.  Every
contender streams its weights from memory: each call uses the next of several copies whose total
is several times the last-level cache (``--stream-mb``), as a decode step touches each layer's
weights once.  Rounds are interleaved (bf16, float32, native, ... in turn), each round takes the
median (``--stat min``: minimum) of ``--calls`` calls, the table shows the same statistic over rounds.  The machine's memory
bandwidth is measured in the same run (a large copy: read + write; the faster of a large sum and a
large bfloat16 matrix-vector product: read), and each
contender's achieved read bandwidth (its weight bytes / time) is given as a share of the read
bandwidth: the highest read rate seen in the run, that of the probes or of any contender's
streamed weights (a lower bound of the machine's; on a loaded machine a probe alone can come out
lower than what a contender reached).
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from benchmarks.cpu.common import STAT_HELP, STATS, interleaved, load_average, median_call_s, memory_bandwidth_gbs, threads_note
from benchmarks.resultfile import write_result
from bitstack.native.planes import native_isa, planes_lut_linear


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 7, stat: str = "median") -> float:
    """GB/s of reading ``megabytes`` MB once, the faster of two pure reads: a sum of a float32
    tensor, and a bfloat16 matrix-vector product (one token through a (megabytes/4 K, 2 K) weight);
    ``stat`` of the repeats."""
    big = torch.ones((megabytes << 20) // 4)
    by_sum = big.numel() * 4 / median_call_s(lambda: big.sum(), repeats, stat) / 1e9
    del big
    weight = torch.ones((megabytes << 20) // 2 // 2048, 2048, dtype=torch.bfloat16)
    x = torch.ones(1, 2048, dtype=torch.bfloat16)
    by_gemv = weight.numel() * 2 / median_call_s(lambda: F.linear(x, weight), repeats, stat) / 1e9
    return max(by_sum, by_gemv)


def _copies(nbytes: int, stream_mb: int) -> int:
    return max(2, -(-(stream_mb << 20) // nbytes))


def _rotating(make, nbytes: int, stream_mb: int):
    """A callable that runs make(i)'s work on copy i, i cycling through enough copies."""
    items = [make() for _ in range(_copies(nbytes, stream_mb))]
    cycle = itertools.cycle(items)
    return lambda: next(cycle)()


def bench_shape(out_features: int, in_features: int, blocks: int, tokens: int, args) -> dict:
    group = 128
    groups = -(-in_features // group)
    x = torch.randn(tokens, in_features).to(torch.bfloat16)
    xf = x.float()

    def dense(dtype):
        w = (torch.randn(out_features, in_features) * 0.02).to(dtype)
        inp = x if dtype == torch.bfloat16 else xf
        return lambda: F.linear(inp, w)

    def planes():
        signs = [torch.randint(0, 256, (out_features, -(-in_features // 8)), dtype=torch.uint8) for _ in range(blocks)]
        offset = (torch.randn(out_features, groups) * 0.01).half()
        step = (torch.rand(out_features, groups) * 0.01).half()
        return lambda: planes_lut_linear(x, signs, offset, step, group, native=True)

    planes_bytes = blocks * out_features * -(-in_features // 8) + 2 * out_features * groups * 2
    sizes = {"bf16": out_features * in_features * 2, "f32": out_features * in_features * 4, "native": planes_bytes}
    fns = {"bf16": _rotating(lambda: dense(torch.bfloat16), sizes["bf16"], args.stream_mb),
           "f32": _rotating(lambda: dense(torch.float32), sizes["f32"], args.stream_mb),
           "native": _rotating(planes, sizes["native"], args.stream_mb)}
    timed = {name: (lambda fn=fn: median_call_s(fn, args.calls, args.stat)) for name, fn in fns.items()}
    rounds = interleaved(timed, args.rounds)
    med = {name: STATS[args.stat](values) for name, values in rounds.items()}
    return {"shape": f"{out_features}x{in_features}", "blocks": blocks, "tokens": tokens, "median_s": med,
            "rounds_s": rounds, "bytes": sizes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--shapes", default="8192x2048,2048x8192", help="out x in, comma separated")
    parser.add_argument("--blocks", default="3,4", help="planes J, comma separated")
    parser.add_argument("--tokens", default="1", help="token counts, comma separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20, help="calls per round (their median is the round's)")
    parser.add_argument("--stat", choices=sorted(STATS), default="median", help=STAT_HELP)
    parser.add_argument("--stream-mb", type=int, default=256, help="weight copies of each contender total this much")
    parser.add_argument("--out", default=None, help="write the result file here (benchmarks/resultfile.py)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    isa = native_isa(True)
    load_before = load_average()
    copy_bw, read_bw = (memory_bandwidth_gbs(repeats=15, stat=args.stat),
                       read_bandwidth_gbs(repeats=15, stat=args.stat))
    print(f"native kernel: {isa}; {threads_note(args.threads)}; load {load_before}")
    print(f"memory bandwidth: copy {copy_bw:.1f} GB/s (read + write), read {read_bw:.1f} GB/s")
    columns = ["out×in", "J", "tokens", "bf16 F.linear µs", "float32 F.linear µs", "native µs", "vs bf16", "vs float32",
               "native GB/s", "native share of read bandwidth", "bf16 share of read bandwidth"]
    results = []
    for shape in args.shapes.split(","):
        out_features, in_features = (int(v) for v in shape.split("x"))
        for tokens in (int(t) for t in args.tokens.split(",")):
            for blocks in (int(j) for j in args.blocks.split(",")):
                results.append(bench_shape(out_features, in_features, blocks, tokens, args))
    rates = [r["bytes"][name] / r["median_s"][name] / 1e9 for r in results for name in ("bf16", "f32", "native")]
    read_bw = max([read_bw, *rates])
    rows, raw = [], results
    print(f"read bandwidth (highest read rate of the run): {read_bw:.1f} GB/s")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in results:
        m, b = r["median_s"], r["bytes"]
        gbs = b["native"] / m["native"] / 1e9
        row = [r["shape"], r["blocks"], r["tokens"], round(m["bf16"] * 1e6, 1), round(m["f32"] * 1e6, 1),
               round(m["native"] * 1e6, 1), round(m["bf16"] / m["native"], 2), round(m["f32"] / m["native"], 2),
               round(gbs, 1), round(gbs / read_bw, 2), round(b["bf16"] / m["bf16"] / 1e9 / read_bw, 2)]
        rows.append(row)
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    load_after = load_average()
    print(f"load average before {load_before}, after {load_after}")
    if args.out:
        notes = (f"Native kernel {isa}, bfloat16 activations, random weights, groups of 128; {threads_note(args.threads)}. "
                 f"Weights streamed from memory (copies totalling {args.stream_mb} MB per contender, cycled). "
                 f"{args.stat.capitalize()} over {args.rounds} interleaved rounds of the {args.stat} of {args.calls} calls. Measured memory "
                 f"bandwidth: copy {copy_bw:.1f} GB/s (read + write), read {read_bw:.1f} GB/s (the highest read rate of the "
                 f"run, probes and contenders). "
                 f"Load average before {load_before}, after {load_after}.")
        write_result(args.out, title="CPU: one planes linear, native kernel vs F.linear", topic="cpu", columns=columns,
                     rows=rows, notes=notes, extra={"copy_gbs": copy_bw, "read_gbs": read_bw, "isa": isa,
                                                    "load_before": load_before, "load_after": load_after, "raw": raw})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
