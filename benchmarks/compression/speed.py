"""Decomposition speed on a Llama-3-8B-shaped model with random weights.

    python -m benchmarks.compression.speed [--layers 32] [--niter 16] [--rank 16] [--result FILE]

Builds every linear of a Llama-3-8B-shaped decoder (4096 hidden, 14336 MLP, 32 layers, GQA 32/8)
with random weights directly on the GPU (no download), decomposes each with AVD exactly as
``bitstack.compress`` does (activation-scaled weight, float32, randomized truncated SVD, blocks
moved to host memory), and reports the total time.  It also measures, on a sample of residuals,
the truncated SVD's rank-k error against the full SVD's and the time of one full SVD, from which
the reference implementation's SVD time is extrapolated.
"""

from __future__ import annotations

import argparse
import time

import torch

from bitstack.codecs.avd.decompose import avd_decompose, block_dense
from bitstack.codecs.avd.lowrank import truncated_svd

SHAPES = {  # name: (out, in) per layer
    "q_proj": (4096, 4096), "k_proj": (1024, 4096), "v_proj": (1024, 4096), "o_proj": (4096, 4096),
    "gate_proj": (14336, 4096), "up_proj": (14336, 4096), "down_proj": (4096, 14336),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--niter", type=int, default=16)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--power-iters", type=int, default=4)
    parser.add_argument("--oversample", type=int, default=8)
    parser.add_argument("--result", default=None, help="also write a result file (benchmarks/resultfile.py)")
    args = parser.parse_args()
    rows = []
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    torch.cuda.synchronize()

    # ---- accuracy of the truncated SVD against the full SVD, on real AVD residuals -----------
    print("truncated vs full SVD (rank-k Frobenius error of |R|, ratio to optimal):")
    for name in ("q_proj", "gate_proj", "down_proj"):
        out, inp = SHAPES[name]
        w = torch.randn(out, inp, device=device, generator=gen) * 0.02
        s = torch.rand(inp, device=device, generator=gen) + 0.5
        residual = w * s[None, :]
        for it in range(3):
            a = residual.abs()
            began = time.perf_counter()
            sv = torch.linalg.svdvals(a)
            torch.cuda.synchronize()
            full_time = time.perf_counter() - began
            optimal = sv[args.rank:].square().sum().sqrt()
            u, sig, vh = truncated_svd(a, args.rank, oversample=args.oversample, power_iters=args.power_iters,
                                       generator=torch.Generator(device=device).manual_seed(it))
            err = (a - (u * sig) @ vh).norm()
            print(f"  {name} {out}x{inp} iteration {it}: ratio {float(err / optimal):.5f}  (full svdvals {full_time:.2f} s)")
            rows.append([name, f"{out}x{inp}", it, f"{float(err / optimal):.5f}", round(full_time, 2)])
            dec = avd_decompose(residual, 1, args.rank, oversample=args.oversample, power_iters=args.power_iters, seed=it)
            residual = residual - block_dense(dec.blocks[0]).to(device)
        del w, residual, a

    # ---- all linears of the model ------------------------------------------------------------
    total_params = 0
    started = time.perf_counter()
    svd_calls = 0
    for layer in range(args.layers):
        for name, (out, inp) in SHAPES.items():
            w = torch.randn(out, inp, device=device, generator=gen) * 0.02
            s = torch.rand(inp, device=device, generator=gen) + 0.5
            dec = avd_decompose(w * s[None, :], args.niter, args.rank, oversample=args.oversample,
                                power_iters=args.power_iters, seed=layer)
            blocks = [(b.signs.cpu(), b.u.cpu(), b.v.cpu()) for b in dec.blocks]
            total_params += out * inp
            svd_calls += args.niter
            del w, dec, blocks
        if layer == 0:
            torch.cuda.synchronize()
            print(f"layer 0 done in {time.perf_counter() - started:.1f} s")
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    print(f"\n{args.layers} layers, {total_params / 1e9:.2f} B decomposed params, niter {args.niter}, rank {args.rank}: "
          f"{elapsed:.1f} s ({elapsed / 60:.2f} min) on {torch.cuda.get_device_name(device)}, torch {torch.__version__}; "
          f"{svd_calls} truncated SVDs")
    if args.result:
        from benchmarks.resultfile import write_result

        write_result(args.result, title="Decomposition speed and truncated-SVD accuracy (codec avd, Llama-3-8B shapes)",
                     topic="compression",
                     columns=["weight", "shape", "iteration", "rank-16 error of |R|, truncated / full SVD",
                              "one full `svdvals` (s)"], rows=rows, extra={"total_seconds": round(elapsed, 1)},
                     notes=(f"All {len(SHAPES) * args.layers} linears of a Llama-3-8B-shaped decoder ({args.layers} layers, "
                            f"{total_params / 1e9:.2f} B parameters, random weights built on the GPU) decomposed with niter "
                            f"{args.niter}, rank {args.rank}: **{elapsed:.1f} s** for {svd_calls} randomized truncated SVDs "
                            f"({args.power_iters} power iterations), blocks moved to host memory. The table: the truncated "
                            "SVD's error against the optimal (full SVD) error on residuals of the first iterations, and the "
                            "time of one full `svdvals` of that shape on the same GPU."))


if __name__ == "__main__":
    main()
