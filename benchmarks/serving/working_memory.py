"""Working memory of the serving engine's forward passes: measured against the estimate the
memory rule reserves (:func:`bitstack.serve.budget.working_bytes`).

For prefill chunks and decode batches of several sizes, the peak of the bytes allocated during
one forward pass (beyond what existed before it: weights and KV cache) is measured:

* CPU: with ``torch.profiler`` (``profile_memory=True``), replaying its allocation timeline
  (a private API of torch: ``_memory_profile()``);
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


SENTINEL_BYTES = 7919  # a marker allocation of this size starts the measured window


def cpu_peak(setup, fn) -> int:
    """Peak bytes allocated on the CPU while ``fn(setup())`` runs, above the bytes at its start.

    Replays the profiler's allocation timeline (``torch.profiler`` with ``profile_memory``; its
    ``_memory_profile()`` gives every create and destroy with its time).  ``setup`` runs inside
    the profile: the profiler sees no frees of blocks allocated before it started (the KV cache
    that a decode step replaces), so the state is built under it, and a marker allocation
    starts the measured window."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        state = setup()
        marker = torch.empty(SENTINEL_BYTES, dtype=torch.uint8)
        del marker
        fn(state)
    events = sorted((t, action.name, size) for t, action, _, size in prof._memory_profile().timeline if t >= 0)
    start = next(t for t, action, size in events if action == "CREATE" and size == SENTINEL_BYTES)
    current = at_start = peak = 0
    for t, action, size in events:
        current += size if action == "CREATE" else -size if action == "DESTROY" else 0
        if t <= start:
            at_start = peak = current
        else:
            peak = max(peak, current)
    return peak - at_start


def cuda_peak(setup, fn, device) -> int:
    import torch

    state = setup()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(state)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def measure(engine, cases: list[tuple[str, int, int]]) -> list[list]:
    """Rows [pass, tokens or rows, context, measured, estimate, ratio] for each (pass, n, context)."""
    import torch

    from bitstack.serve.budget import forward_bytes, weight_transient_bytes
    from bitstack.serve.kvbatch import DecodeBatch

    runner, shape, device = engine.runner, engine.shape, engine.device
    peak = (lambda setup, fn: cuda_peak(setup, fn, device)) if device.type == "cuda" else cpu_peak
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for kind, n, context in cases:
            if kind == "prefill":
                prompt = torch.randint(0, shape.vocab, (context,), generator=gen).to(device)

                def setup():
                    return runner.prefill(prompt[:context - n], None)[0] if context > n else None

                measured = peak(setup, lambda cache: runner.prefill(prompt[context - n:], cache))
                estimate = forward_bytes(shape, n, context, 1) + weight_transient_bytes(shape)
            else:
                prompts = [torch.randint(0, shape.vocab, (context,), generator=gen).to(device) for _ in range(n)]
                tokens = [int(t) for t in torch.randint(0, shape.vocab, (n,), generator=gen)]

                def setup():
                    batch = DecodeBatch(runner)
                    for i, prompt in enumerate(prompts):
                        batch.insert(i, runner.prefill(prompt, None)[0], context)
                    return batch

                measured = peak(setup, lambda batch: batch.step(tokens))
                # plus the KV append transient, which the rule reserves with the KV (one layer of the batch)
                estimate = (forward_bytes(shape, n, context + 1, n) + weight_transient_bytes(shape)
                            + n * (context + 1) * runner.kv_per_token // runner.layers)
            rows.append([kind, n, context, measured, estimate, round(measured / estimate, 3)])
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
