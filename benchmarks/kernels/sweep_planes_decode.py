"""Validate, then time the planes kernels for few tokens over their launch parameters: the
one-token kernel (``planes_gemv``, 1 token) and the few-token kernel (``planes_batch``, 1 to 16
tokens), beside fp16 ``F.linear``, the planes decode kernel (1 token) and ``planes_linear`` as
the runtime dispatches it (2+ tokens), all measured in the same run (issue 5, decode targets).

Every configuration is first checked against the float32 reference (fresh random input, output
poisoned with NaN); a wrong one is reported and not timed.  Times: CUDA-graph replay, L2 flushed
before each, median (``bench_kernels.bench_graph``).  GB/s counts sign + grid + x + y bytes once.
(Runs before the few-token kernel existed were made under this script's earlier name,
``sweep_planes_gemv.py``, with the same options for one token.)

    python benchmarks/kernels/sweep_planes_decode.py --shapes 14336x4096,4096x14336 --blocks 3,4 \
        --configs '[{"num_warps": 4, "rows": 2}]' --json $OUT/sweep.json
    python benchmarks/kernels/sweep_planes_decode.py --tokens 4,16 --batch-configs '[{"block_n": 64}]'
    python benchmarks/kernels/sweep_planes_decode.py --ncu ...   # one call per kernel, no timing (under ncu)
CPU dry run (Triton interpreter): ``TRITON_INTERPRET=1 python benchmarks/kernels/sweep_planes_decode.py --smoke``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
sys.path.insert(0, str(HERE))

import bench_kernels as bk  # noqa: E402
from bench_planes import TOL, grid_bytes, random_planes, rel_err  # noqa: E402

from bitstack.kernels import planes_linear  # noqa: E402
from bitstack.kernels.planes import default_decode_config, planes_decode_launch  # noqa: E402
from bitstack.kernels.planes_batch import LAST_COMPILED as BATCH_COMPILED  # noqa: E402
from bitstack.kernels.planes_batch import PlanesBatchConfig, planes_batch  # noqa: E402
from bitstack.kernels.planes_gemv import LAST_COMPILED, PlanesGemvConfig, planes_gemv  # noqa: E402
from bitstack.kernels.planes_reference import planes_linear_reference  # noqa: E402

# the sweep of run 3 (benchmarks/kernels/NOTES.md), and {} = gemv_config's choice for the shape
DEFAULT_CONFIGS = [{}] + [dict(num_warps=w, rows=r, programs_per_sm=p, prefetch=f)
                          for w, r, p, f in [(4, 2, 4, True), (4, 2, 4, False), (4, 1, 4, True), (4, 4, 4, True),
                                             (4, 2, 8, True), (2, 2, 8, True), (2, 4, 8, True), (1, 2, 16, True),
                                             (1, 4, 16, True), (8, 2, 2, True)]]
DEFAULT_BATCH_CONFIGS = [{}, dict(block_n=128, block_k=64), dict(block_n=64, block_k=64),
                         dict(block_n=64, block_k=128, num_stages=2), dict(block_n=128, block_k=128, num_warps=8),
                         dict(block_n=64, block_k=128, programs_per_sm=8), dict(block_n=32, block_k=128)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="14336x4096,4096x14336")
    ap.add_argument("--blocks", default="3,4")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--tokens", default="1", help="token counts (planes_gemv at 1 token only)")
    ap.add_argument("--configs", default="", help="JSON list of PlanesGemvConfig kwargs (default: a built-in sweep)")
    ap.add_argument("--batch-configs", default="", help="JSON list of PlanesBatchConfig kwargs ('[]': none; "
                    "default: a built-in sweep, at more than one token)")
    ap.add_argument("--no-decode", action="store_true", help="skip the planes decode kernel (the comparison)")
    ap.add_argument("--ncu", action="store_true", help="one call of each kernel, no timing (run under ncu)")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.smoke:
        bk.SMOKE = True
        shapes, device = [(96, 512), (40, 1000)], torch.device("cpu")
    else:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    configs = json.loads(args.configs) if args.configs else DEFAULT_CONFIGS
    batch_configs = json.loads(args.batch_configs) if args.batch_configs else DEFAULT_BATCH_CONFIGS
    if args.smoke:
        configs, batch_configs = configs[:2], batch_configs[:2]
    bw = None if (args.ncu or args.smoke) else bk.copy_bandwidth(device)
    rows = []
    if bw:
        print(f"device copy bandwidth {bw:.0f} GB/s", flush=True)
    for (N, K), M in itertools.product(shapes, [int(m) for m in args.tokens.split(",")]):
        w = torch.randn(N, K, device=device).to(dtype)
        x = torch.randn(M, K, device=device).to(dtype)
        t_lin = None if args.ncu else bk.bench_graph(lambda: F.linear(x, w))
        print(f"{N}x{K}, {M} token(s): {args.dtype} F.linear {t_lin} us", flush=True)
        for J in (int(j) for j in args.blocks.split(",")):
            packed = random_planes(N, K, J, args.group, device, seed=J)
            ref = planes_linear_reference(x, packed)
            nbytes = packed.nbytes + grid_bytes(packed) + 2 * (M * K + M * N)
            kernels = []
            if M == 1:
                if not args.no_decode:
                    kernels.append(("decode", {}, lambda: planes_decode_launch(
                        x, packed, None, default_decode_config(1, N, K, J))))
                kernels += [("gemv", c, lambda c=c: planes_gemv(x, packed, None, PlanesGemvConfig(**c)))
                            for c in configs]
            else:
                kernels.append(("planes_linear", {}, lambda: planes_linear(x, packed)))
            if M > 1 or args.batch_configs:
                kernels += [("batch", c, lambda c=c: planes_batch(x, packed, None, PlanesBatchConfig(**c)))
                            for c in batch_configs]
            for name, c, fn in kernels:
                try:
                    y = fn()
                    y.fill_(float("nan"))  # the next call must write every output
                    y = fn()
                    err = rel_err(y, ref)
                except Exception as exc:  # a configuration that does not compile or launch
                    print(f"  J={J} {name} {c}: FAILED {repr(exc)[:300]}", flush=True)
                    rows.append(dict(N=N, K=K, M=M, J=J, kernel=name, cfg=c, error=repr(exc)[:300]))
                    continue
                ok = err < TOL[dtype]
                t = None if (args.ncu or not ok) else bk.bench_graph(fn)
                compiled = {"gemv": LAST_COMPILED.get("planes_gemv"), "batch": BATCH_COMPILED.get("planes_batch")}
                regs = getattr(compiled.get(name), "n_regs", None)
                row = dict(N=N, K=K, M=M, J=J, kernel=name, cfg=c, err=err, us=t, lin_us=t_lin, regs=regs,
                           speedup_vs_fp16=(t_lin / t) if t and t_lin else None,
                           GBs=(nbytes / t / 1e3) if t else None)
                rows.append(row)
                speed = f"x{t_lin / t:.2f} vs fp16, {nbytes / t / 1e3:.0f} GB/s" if t and t_lin else ""
                print(f"  J={J} {name} {c}: {t} us {speed} err {err:.1e}{'' if ok else '  WRONG'} regs {regs}",
                      flush=True)
    if args.json:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        Path(args.json).write_text(json.dumps(dict(command=" ".join(sys.argv), bandwidth_GBs=bw, device=name,
                                                   torch=torch.__version__, rows=rows), indent=1))
    if any(r.get("error") or (r.get("err") is not None and not r["err"] < TOL[dtype]) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
