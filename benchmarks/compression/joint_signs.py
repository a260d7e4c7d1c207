"""The joint-sign search on the CPU: the native block against its PyTorch reference, checked equal, then timed.

    python -m benchmarks.compression.joint_signs --rounds 3 --out benchmarks/results/compression/joint_signs_cpu.json

For each shape (rows R stacked from the weights of one input width, columns of the search), one
whole :func:`bitstack.codecs.planes.signs.joint_signs_batched` with six levels (the default level
weights) on random weights and a random calibration Hessian: first the native blocks
(``bitstack::joint_signs_block``) and the PyTorch blocks (``joint_block_reference``) must give
equal signs, then each is timed ``--rounds`` times, interleaved, and the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.cpu.common import load_average, threads_note
from benchmarks.resultfile import write_result
from bitstack.codecs.planes.signs import inverse_hessian_factor, joint_block_reference, joint_signs_batched
from bitstack.native.planes import native_isa
from bitstack.native.signs import joint_signs_block

LEVEL_WEIGHTS = (0.05, 5.0, 1.0, 1.0, 0.3, 0.1)
SHAPES = {  # name -> (rows of each weight, input columns)
    "SmolLM2 q,k,v,o,gate,up": ((576, 192, 192, 576, 1536, 1536), 576),
    "SmolLM2 down": ((576,), 1536),
    "Llama-3-8B q,k,v,o,gate,up, 256 columns": ((4096, 1024, 1024, 4096, 14336, 14336), 256),
}


def problem(rows: tuple[int, ...], columns: int, seed: int = 0):
    """Random weights (one per entry of ``rows``), their grids and one Hessian factor each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * columns, columns, generator=g)
    factor = inverse_hessian_factor(x.T @ x, 0.01)
    targets = [torch.randn(r, columns, generator=g) for r in rows]
    centres = [t.mean(1, keepdim=True).expand_as(t).contiguous() for t in targets]
    steps = [(t.abs().amax(1, keepdim=True) / 2).expand_as(t).contiguous() for t in targets]
    return targets, centres, steps, [factor] * len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", help="result file (benchmarks/resultfile.py schema)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    isa = native_isa(True)
    load_before = load_average()
    rows = []
    for name, (weights, columns) in SHAPES.items():
        args_ = problem(weights, columns)
        blocks = {"native": joint_signs_block, "pytorch": joint_block_reference}
        signs = {k: joint_signs_batched(*args_, LEVEL_WEIGHTS, block=f) for k, f in blocks.items()}
        equal = all(torch.equal(a, b) for a, b in zip(signs["native"], signs["pytorch"]))
        if not equal:
            raise SystemExit(f"{name}: the native signs differ from the reference's")
        times = {k: [] for k in blocks}
        for _ in range(args.rounds):
            for k, f in blocks.items():
                began = time.perf_counter()
                joint_signs_batched(*args_, LEVEL_WEIGHTS, block=f)
                times[k].append(time.perf_counter() - began)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = [name, sum(weights), columns, round(med["pytorch"], 3), round(med["native"], 3),
               round(med["pytorch"] / med["native"], 2), equal]
        rows.append(row)
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    load_after = load_average()
    print(f"load average before {load_before}, after {load_after}")
    if args.out:
        write_result(args.out, title="Joint-sign search on the CPU: native block vs PyTorch reference", topic="compression",
                     columns=["weights", "rows", "columns", "PyTorch blocks (s)", "native blocks (s)", "speed-up",
                              "signs equal"],
                     rows=rows, extra={"isa": isa},
                     notes=f"Six levels (level weights {','.join(map(str, LEVEL_WEIGHTS))}), blocks of 128 columns, random "
                           f"weights and Hessian; signs checked equal before timing; medians of {args.rounds} interleaved "
                           f"rounds. Native back-end {isa}; {threads_note(args.threads)}. Load average before "
                           f"{load_before}, after {load_after}.")


if __name__ == "__main__":
    main()
