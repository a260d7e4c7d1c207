"""Compression time over 1, 2, 4 … ranks, and whether every run writes the same artifact bytes.

    python -m benchmarks.distributed.compress_time --ranks 1 2 4 [--layers 32] [--out FILE]
    python -m benchmarks.distributed.compress_time --ranks 1 2 --backend gloo --device cpu \\
        --hidden 64 --intermediate 128 --heads 4 --kv-heads 2 --vocab 64 --layers 2   # a CPU check

For each rank count n, n processes (``torch.multiprocessing.spawn``; NCCL, rank r on ``cuda:r``,
by default) compress the same random Llama-shaped model (default: Llama-3-8B's widths, 32 layers,
random weights, ``calib self``: no download) with
:func:`bitstack.distributed.compress.compress_parallel`: rank 0 runs the calibration pass and
writes the artifact, every rank decomposes its share of each layer's weights.  Prints the time
of each n, its speed-up over the first n, and whether its files are byte-identical to the first
n's artifact.  ``--out`` writes a result file (``benchmarks/resultfile.py``, topic distributed).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cpu"):
        return LlamaForCausalLM(config).eval()


def _run(rank: int, world: int, args, folder: str, output: str) -> None:
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import tiny_tokenizer

    from bitstack.config import CompressConfig
    from bitstack.distributed.compress import compress_parallel

    device = torch.device(f"cuda:{rank}") if args.device == "cuda" else torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(args.threads)
    dist.init_process_group(args.backend, init_method=f"file://{folder}/rendezvous-{world}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(hours=2))
    config = CompressConfig(calib="self", nsamples=args.nsamples, seqlen=args.seqlen, niter=args.niter,
                            batch_size=args.batch_size, codec=args.codec, dtype="bfloat16")
    model = _model(args) if rank == 0 else None
    dist.barrier()
    started = time.perf_counter()
    compress_parallel(model, output, config, tokenizer=tiny_tokenizer() if rank == 0 else None, device=device,
                      progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    if rank == 0:
        (Path(folder) / f"seconds-{world}").write_text(f"{seconds}\n")
    dist.destroy_process_group()


def _same(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backend", default="nccl", choices=("nccl", "gloo"))
    parser.add_argument("--device", default="cuda", help="cuda (rank r on cuda:r) or cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per rank (--device cpu)")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--codec", default="planes", choices=("planes", "avd"))
    parser.add_argument("--niter", type=int, default=16)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--work", default=None, help="folder for the artifacts (default: a temporary one)")
    parser.add_argument("--out", default=None, help="write a result file here (benchmarks/results/distributed/…)")
    args = parser.parse_args()
    import torch.multiprocessing as mp

    folder = Path(args.work or tempfile.mkdtemp(prefix="compress-time-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows, first = [], None
    for world in args.ranks:
        output = folder / f"ranks-{world}.bstk"
        mp.spawn(_run, args=(world, args, str(folder), str(output)), nprocs=world, join=True)
        seconds = float((folder / f"seconds-{world}").read_text())
        first = first or (world, seconds, output)
        same = _same(first[2], output)
        rows.append([world, round(seconds, 1), round(first[1] / seconds, 2), same])
        print(f"{world} rank(s): {seconds:.1f} s, {first[1] / seconds:.2f}x of {first[0]} rank(s), "
              f"identical bytes: {same}", flush=True)
    if args.out:
        sys.path.insert(0, str(ROOT))
        from benchmarks.resultfile import write_result

        write_result(args.out, title="Compression time over several ranks", topic="distributed",
                     columns=["ranks", "seconds", f"speed-up over {args.ranks[0]}", "identical bytes"], rows=rows,
                     notes=(f"Random Llama-shaped model: hidden {args.hidden}, MLP {args.intermediate}, {args.layers} "
                            f"layers, heads {args.heads}/{args.kv_heads}, vocab {args.vocab}; codec {args.codec}, "
                            f"niter {args.niter}, calib self {args.nsamples}x{args.seqlen}; backend {args.backend}."),
                     extra={"args": vars(args)})


if __name__ == "__main__":
    main()
