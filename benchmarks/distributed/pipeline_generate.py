"""Load an artifact split by layers over n ranks, each within its own budget, resize it, and generate.

    python -m benchmarks.distributed.pipeline_generate ARTIFACT --budgets 70GB 70GB [--tokens 64] [--out FILE]
    python -m benchmarks.distributed.pipeline_generate /tmp/rand.bstk --budgets 60kB 60kB \\
        --backend gloo --device cpu --tokens 8       # a CPU check

One process per budget (``torch.multiprocessing.spawn``; NCCL, rank r on ``cuda:r``, by default)
calls :func:`bitstack.distributed.pipeline.load_pipeline`.  Reported per rank: its layers, load
time, resident weight bytes against its budget and the device's peak allocated bytes; then the
greedy decoding speed (tokens/s, batch 1, with the per-rank KV cache) at those budgets, after a
collective resize to ``--resize`` budgets (if given), and the decoding speed there.  Build a model
wider than one GPU with ``benchmarks.common.random_blocks_artifact`` (e.g. 70B-shaped layers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode(stage, args, device) -> float:
    ids = torch.randint(0, 100, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    stage.generate(ids, 2)  # warm-up
    _sync(device)
    started = time.perf_counter()
    stage.generate(ids, args.tokens)
    _sync(device)
    return args.tokens / (time.perf_counter() - started)


def _run(rank: int, world: int, args, folder: str) -> None:
    import torch.distributed as dist

    import bitstack
    from bitstack.distributed.pipeline import load_pipeline

    device = torch.device(f"cuda:{rank}") if args.device == "cuda" else torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    dist.init_process_group(args.backend, init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
                            timeout=datetime.timedelta(hours=1))
    started = time.perf_counter()
    stage = load_pipeline(args.artifact, args.budgets, device=device)
    _sync(device)
    load_seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    row = dict(rank=rank, layers=f"{stage.shard.layers.start}-{stage.shard.layers.stop - 1}",
               load_s=round(load_seconds, 1), resident=bitstack.memory_bytes(stage.model), budget=stage.plan.budgets[rank],
               peak=peak, tokens_per_s=round(_decode(stage, args, device), 2))
    if args.resize:
        stage.resize(args.resize)
        row.update(resized=bitstack.memory_bytes(stage.model), resized_tokens_per_s=round(_decode(stage, args, device), 2))
    rows: list = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        (Path(folder) / "rows.json").write_text(json.dumps(rows))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--budgets", nargs="+", required=True, help="one per rank, e.g. 70GB 70GB")
    parser.add_argument("--resize", nargs="+", default=None, help="budgets of a collective resize after the first run")
    parser.add_argument("--backend", default="nccl", choices=("nccl", "gloo"))
    parser.add_argument("--device", default="cuda", help="cuda (rank r on cuda:r) or cpu")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default=None, help="write a result file here (benchmarks/results/distributed/…)")
    args = parser.parse_args()
    import torch.multiprocessing as mp

    folder = tempfile.mkdtemp(prefix="pipeline-")
    mp.spawn(_run, args=(len(args.budgets), args, folder), nprocs=len(args.budgets), join=True)
    rows = json.loads((Path(folder) / "rows.json").read_text())
    columns = list(rows[0])
    for row in rows:
        print(", ".join(f"{k} {v}" for k, v in row.items()))
    if args.out:
        sys.path.insert(0, str(ROOT))
        from benchmarks.resultfile import write_result

        write_result(args.out, title="A model split by layers over several ranks: load and greedy decoding",
                     topic="distributed", columns=columns, rows=[[r[c] for c in columns] for r in rows],
                     notes=f"Artifact {args.artifact}; budgets {args.budgets}; resize {args.resize}; backend {args.backend}; "
                           f"batch 1, prompt {args.prompt}, {args.tokens} tokens.", extra={"args": vars(args)})


if __name__ == "__main__":
    main()
