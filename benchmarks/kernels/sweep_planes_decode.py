"""Validate, then time the planes kernels for few tokens over their launch parameters: the
one-token kernel (``planes_gemv``, 1 token) and the few-token kernel (``planes_batch``, 1 to 16
tokens), beside fp16 ``F.linear``, the planes decode kernel (1 token) and ``planes_linear`` as
the runtime dispatches it (2+ tokens), all measured in the same run.

Every configuration is first checked against the float32 reference (fresh random input, output
poisoned with NaN); a wrong one is reported and not timed.  Times: CUDA-graph replay, L2 flushed
before each, median (``_timing.Timing.graph``).  GB/s counts sign + grid + x + y bytes once.
(Runs before the few-token kernel existed were made under this script's earlier name,
``sweep_planes_gemv.py``, with the same options for one token.)

    python -m benchmarks.kernels.sweep_planes_decode --shapes 14336x4096,4096x14336 --blocks 3,4 \
        --configs '[{"num_warps": 4, "rows": 2}]'
    python -m benchmarks.kernels.sweep_planes_decode --tokens 4,16 --batch-configs '[{"block_n": 64}]'
    python -m benchmarks.kernels.sweep_planes_decode --ncu ...   # one call per kernel, no timing (under ncu)
    TRITON_INTERPRET=1 python -m benchmarks.kernels.sweep_planes_decode --smoke   # CPU dry run

Writes a result file (``benchmarks/resultfile.py``; default
``benchmarks/results/kernels/sweep_planes_decode.json``, none for ``--smoke`` and ``--ncu``): one
row per (shape, tokens, J, kernel, configuration), with the compiled kernel's registers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file: make this tree's benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.kernels.bench_planes import TOL, grid_bytes, random_planes  # noqa: E402
from benchmarks.kernels._timing import Timing, default_out, rel_err  # noqa: E402
from benchmarks.resultfile import write_result  # noqa: E402
from bitstack.kernels import planes_linear  # noqa: E402
from bitstack.kernels.planes.batch import PlanesBatchConfig, planes_batch  # noqa: E402
from bitstack.kernels.planes.decode import decode_config, planes_decode_launch  # noqa: E402
from bitstack.kernels.planes.gemv import PlanesGemvConfig, planes_gemv  # noqa: E402
from bitstack.kernels.planes.reference import planes_linear_reference  # noqa: E402

# the sweep of run 3 (benchmarks/kernels/NOTES.md), and {} = gemv_config's choice for the shape
DEFAULT_CONFIGS = [{}] + [dict(num_warps=w, rows=r, programs_per_sm=p, prefetch=f)
                          for w, r, p, f in [(4, 2, 4, True), (4, 2, 4, False), (4, 1, 4, True), (4, 4, 4, True),
                                             (4, 2, 8, True), (2, 2, 8, True), (2, 4, 8, True), (1, 2, 16, True),
                                             (1, 4, 16, True), (8, 2, 2, True)]]
DEFAULT_BATCH_CONFIGS = [{}, dict(block_n=128, block_k=64), dict(block_n=64, block_k=64),
                         dict(block_n=64, block_k=128, num_stages=2), dict(block_n=128, block_k=128, num_warps=8),
                         dict(block_n=64, block_k=128, programs_per_sm=8), dict(block_n=32, block_k=128)]


COLUMNS = ["out×in", "tokens", "J", "kernel", "configuration", "µs", "fp16 F.linear µs", "speed-up vs fp16", "GB/s",
           "registers", "relative error"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="14336x4096,4096x14336", help="OUTxIN weight shapes")
    ap.add_argument("--blocks", default="3,4", help="block counts J")
    ap.add_argument("--group", type=int, default=128, help="group size of the grids")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"], help="x's dtype (and F.linear's)")
    ap.add_argument("--tokens", default="1", help="token counts (planes_gemv at 1 token only)")
    ap.add_argument("--configs", default="", help="JSON list of PlanesGemvConfig kwargs (default: a built-in sweep)")
    ap.add_argument("--batch-configs", default="", help="JSON list of PlanesBatchConfig kwargs ('[]': none; "
                    "default: a built-in sweep, at more than one token)")
    ap.add_argument("--no-decode", action="store_true", help="skip the planes decode kernel (the comparison)")
    ap.add_argument("--ncu", action="store_true", help="one call of each kernel, no timing (run under ncu)")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter (TRITON_INTERPRET=1), tiny shapes")
    ap.add_argument("--out", default=None, help="result file (default: benchmarks/results/kernels/sweep_planes_decode.json; "
                    "none with --smoke or --ncu)")
    args = ap.parse_args()
    tm = Timing(smoke=args.smoke)
    out = args.out if args.out is not None else (None if args.smoke or args.ncu else default_out("sweep_planes_decode"))
    if args.smoke:
        shapes, device = [(96, 512), (40, 1000)], torch.device("cpu")
    else:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    configs = json.loads(args.configs) if args.configs else DEFAULT_CONFIGS
    batch_configs = json.loads(args.batch_configs) if args.batch_configs else DEFAULT_BATCH_CONFIGS
    if args.smoke:
        configs, batch_configs = configs[:2], batch_configs[:2]
    bw = None if (args.ncu or args.smoke) else tm.copy_bandwidth(device)
    rows = []
    if bw:
        print(f"device copy bandwidth {bw:.0f} GB/s", flush=True)
    for (N, K), M in itertools.product(shapes, [int(m) for m in args.tokens.split(",")]):
        w = torch.randn(N, K, device=device).to(dtype)
        x = torch.randn(M, K, device=device).to(dtype)
        t_lin = None if args.ncu else tm.graph(lambda: F.linear(x, w))
        print(f"{N}x{K}, {M} token(s): {args.dtype} F.linear {t_lin} us", flush=True)
        for J in (int(j) for j in args.blocks.split(",")):
            packed = random_planes(N, K, J, args.group, device, seed=J)
            ref = planes_linear_reference(x, packed)
            nbytes = packed.nbytes + grid_bytes(packed) + 2 * (M * K + M * N)
            kernels = []  # (name, configuration, call(**kw)); the kernels' calls take return_compiled
            if M == 1:
                if not args.no_decode:
                    kernels.append(("decode", {}, lambda **kw: planes_decode_launch(
                        x, packed, None, decode_config(1, J), **kw)))
                kernels += [("gemv", c, lambda c=c, **kw: planes_gemv(x, packed, None, PlanesGemvConfig(**c), **kw))
                            for c in configs]
            else:
                kernels.append(("planes_linear", {}, lambda: planes_linear(x, packed)))
            if M > 1 or args.batch_configs:
                kernels += [("batch", c, lambda c=c, **kw: planes_batch(x, packed, None, PlanesBatchConfig(**c), **kw))
                            for c in batch_configs]
            for name, c, fn in kernels:
                try:
                    y = fn()
                    y.fill_(float("nan"))  # the next call must write every output
                    if name == "planes_linear":
                        y, compiled = fn(), None
                    else:
                        y, compiled = fn(return_compiled=True)
                    err = rel_err(y, ref)
                except Exception as exc:  # a configuration that does not compile or launch
                    print(f"  J={J} {name} {c}: FAILED {repr(exc)[:300]}", flush=True)
                    rows.append(dict(N=N, K=K, M=M, J=J, kernel=name, cfg=c, error=repr(exc)[:300]))
                    continue
                ok = err < TOL[dtype]
                t = None if (args.ncu or not ok) else tm.graph(fn)
                regs = getattr(compiled, "n_regs", None)
                row = dict(N=N, K=K, M=M, J=J, kernel=name, cfg=c, err=err, us=t, lin_us=t_lin, regs=regs,
                           speedup_vs_fp16=(t_lin / t) if t and t_lin else None,
                           GBs=(nbytes / t / 1e3) if t else None)
                rows.append(row)
                speed = f"x{t_lin / t:.2f} vs fp16, {nbytes / t / 1e3:.0f} GB/s" if t and t_lin else ""
                print(f"  J={J} {name} {c}: {t} us {speed} err {err:.1e}{'' if ok else '  WRONG'} regs {regs}",
                      flush=True)
    if out:
        def num(v, digits):
            return None if v is None else round(v, digits)

        cells = [[f"{r['N']}×{r['K']}", r["M"], r["J"], r["kernel"], json.dumps(r["cfg"], sort_keys=True),
                  num(r["us"], 1), num(r["lin_us"], 1), num(r["speedup_vs_fp16"], 2), num(r["GBs"], 0), r["regs"],
                  float(f"{r['err']:.2e}")] for r in rows if "error" not in r]
        path = write_result(out, title=f"Planes few-token kernels over their launch parameters ({args.dtype})",
                            topic="kernels", columns=COLUMNS, rows=cells, extra=dict(bandwidth_GBs=bw, rows=rows),
                            notes="CUDA-graph replay, L2 flushed, median; every configuration checked against the "
                            "float32 reference first; GB/s counts sign, grid, x and y bytes once.")
        print(f"wrote {path}", flush=True)
    if any(r.get("error") or (r.get("err") is not None and not r["err"] < TOL[dtype]) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
