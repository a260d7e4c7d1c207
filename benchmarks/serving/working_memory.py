"""Working memory of the serving engine's forward passes: measured against the estimate the
memory rule reserves (:func:`bitstack.serve.budget.working_bytes`).

For prefill chunks and decode batches of several sizes, the peak of the bytes allocated during
one forward pass (beyond what existed before it: weights and KV cache) is measured:

* CPU: with ``torch.profiler`` (``profile_memory=True``), replaying every allocation and free
  in time order;
* CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated bytes before the pass.

The rule holds when every measured peak is at most the estimate (the "ratio" column is
measured / estimate, which must stay <= 1).

    python -m benchmarks.serving.working_memory /tmp/smol.bstk --out benchmarks/results/serving/working_memory_cpu.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cpu_peak(fn) -> int:
    """Peak bytes allocated on the CPU while ``fn`` runs, above the bytes at its start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = []
    for event in prof.events():
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta:
            changes.append((event.time_range.start, delta))
    current = peak = 0
    for _, delta in sorted(changes):
        current += delta
        peak = max(peak, current)
    return peak


def cuda_peak(fn, device) -> int:
    import torch

    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def measure(engine, cases: list[tuple[str, int, int]]) -> list[list]:
    """Rows [kind, tokens, context, measured, estimate, ratio] for each (kind, rows/tokens, context)."""
    import torch

    from bitstack.serve.budget import Request, forward_bytes, weight_transient_bytes
    from bitstack.serve.kvbatch import DecodeBatch

    runner, shape, device = engine.runner, engine.shape, engine.device
    peak = cuda_peak if device.type == "cuda" else (lambda fn, _device: cpu_peak(fn))
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for kind, n, context in cases:
            if kind == "prefill":
                prompt = torch.randint(0, shape.vocab, (context,), generator=gen).to(device)
                cache, _ = runner.prefill(prompt[:context - n], None) if context > n else (None, None)
                measured = peak(lambda: runner.prefill(prompt[context - n:], cache), device)
                estimate = forward_bytes(shape, n, context, 1) + weight_transient_bytes(shape)
                requests = [Request(context, 1)]
            else:
                batch = DecodeBatch(runner)
                for i in range(n):
                    prompt = torch.randint(0, shape.vocab, (context,), generator=gen).to(device)
                    cache, _ = runner.prefill(prompt, None)
                    batch.insert(i, cache, context)
                tokens = [int(t) for t in torch.randint(0, shape.vocab, (n,), generator=gen)]
                measured = peak(lambda: batch.step(tokens), device)
                requests = [Request(context, 1)] * n
                estimate = forward_bytes(shape, n, context + 1, n) + weight_transient_bytes(shape)
            # the rule reserves the KV append transient separately (one layer of the batch, in the KV reserve)
            append = n * (context + 1) * runner.kv_per_token // runner.layers if kind == "decode" else 0
            rows.append([kind, n, context, measured, estimate + append, round(measured / (estimate + append), 3)])
            del requests
    return rows


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving.working_memory", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")
    p.add_argument("--prefill", default="1:64,16:64,64:256,256:256,256:1024", help="prefill cases TOKENS:CONTEXT,...")
    p.add_argument("--decode", default="1:64,8:128,16:256,32:256", help="decode cases ROWS:CONTEXT,...")
    p.add_argument("--out", default=None, help="result JSON (default: print only)")
    args = p.parse_args(argv)

    from benchmarks.resultfile import write_result
    from bitstack.serve.options import ServeOptions
    from bitstack.serve.server import build

    server = build(args.artifact, ServeOptions(memory="1TB", device=args.device, dtype=args.dtype, port=0))
    engine = server.engine
    engine.stop()  # measured here, not by the engine thread
    parse = lambda text: [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]  # noqa: E731
    cases = [("prefill", t, c) for t, c in parse(args.prefill)] + [("decode", r, c) for r, c in parse(args.decode)]
    rows = measure(engine, cases)
    columns = ["pass", "tokens or rows", "context", "measured bytes", "estimate bytes", "measured / estimate"]
    for row in rows:
        print("  ".join(str(v) for v in row))
    worst = max(r[-1] for r in rows)
    print(f"worst measured / estimate: {worst}")
    if args.out:
        write_result(args.out, title=f"serve working memory: measured peak vs the rule's estimate ({engine.device.type})",
                     topic="serving", columns=columns, rows=rows,
                     notes="peak bytes allocated during one forward pass above those before it; the estimate must "
                           "cover it (ratio <= 1)", extra={"artifact": str(args.artifact), "worst_ratio": worst})
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
