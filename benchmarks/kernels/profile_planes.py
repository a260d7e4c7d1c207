"""Quick per-kernel timings of the planes kernels on a GPU (for tuning; no table, no validation).

Times, on one shape, the decode kernel for each J and launch configuration given, the row
rebuild alone and the chunked prefill's parts (rebuild, cuBLAS into the column slice), each
checked against the reference first.  Timing: CUDA-graph replay, L2 flushed, median
(``_timing.Timing.graph``).  Run it under ``ncu`` for hardware counters, e.g.
``ncu --kernel-name regex:_planes --launch-count 4 --section SpeedOfLight --section Occupancy
--section WarpStateStats python -m benchmarks.kernels.profile_planes --ncu``.

    python -m benchmarks.kernels.profile_planes --shape 14336x4096 --blocks 1,2,4,8 \
        --configs '[{}, {"block_n": 64}]'

Prints one JSON object last; writes it to a result file with ``--out`` (``benchmarks/resultfile.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file: make this tree's benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.kernels.bench_planes import TOL, random_planes  # noqa: E402
from benchmarks.kernels._timing import Timing, rel_err  # noqa: E402
from benchmarks.resultfile import write_result  # noqa: E402
from bitstack.kernels.planes.decode import PlanesDecodeConfig, decode_config, planes_decode_launch  # noqa: E402
from bitstack.kernels.planes.rebuild import planes_linear_prefill, rebuild_planes_rows  # noqa: E402
from bitstack.kernels.planes.reference import planes_dense_weight, planes_linear_reference  # noqa: E402


def ptx_ops(compiled, prefixes) -> dict:
    """{PTX instruction (with its modifiers): count} of the instructions starting with ``prefixes``."""
    import collections
    import re

    if compiled is None:
        return {}
    ops = re.findall(r"^\s*(?:@%p\d+\s+)?([a-z][\w.]*)", compiled.asm["ptx"], flags=re.M)
    return dict(collections.Counter(op for op in ops if op.startswith(prefixes)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="14336x4096", help="OUTxIN weight shape")
    ap.add_argument("--blocks", default="1,2,4,8", help="block counts J")
    ap.add_argument("--tokens", default="1", help="token counts of the decode kernel (at most 8)")
    ap.add_argument("--configs", default="[{}]", help="JSON list of PlanesDecodeConfig kwargs ({} = decode_config's)")
    ap.add_argument("--rebuild-configs", default="[{}]", help="JSON list of rebuild_planes_rows kwargs")
    ap.add_argument("--prefill-tokens", type=int, default=2048, help="tokens of the prefill's timing")
    ap.add_argument("--ncu", action="store_true", help="one call of each kernel, no timing (run under ncu)")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter (TRITON_INTERPRET=1): the logic, tiny shapes")
    ap.add_argument("--out", default=None, help="also write a result file here (benchmarks/resultfile.py)")
    args = ap.parse_args()
    tm = Timing(smoke=args.smoke)
    device = torch.device("cpu" if args.smoke else "cuda")
    N, K = (64, 512) if args.smoke else (int(v) for v in args.shape.split("x"))
    w = torch.randn(N, K, device=device).half()
    out = {"shape": [N, K], "decode": [], "rebuild": []}
    for M in (int(m) for m in args.tokens.split(",")):
        x = torch.randn(M, K, device=device).half()
        t_lin = None if args.ncu else tm.graph(lambda: F.linear(x, w))
        print(f"{N}x{K}, {M} token(s): fp16 F.linear {t_lin} us", flush=True)
        for J in (int(j) for j in args.blocks.split(",")):
            packed = random_planes(N, K, J, 128, device, seed=J)
            ref = planes_linear_reference(x, packed)
            for c in json.loads(args.configs):
                cfg = PlanesDecodeConfig(**c) if c else decode_config(M, J)
                y, compiled = planes_decode_launch(x, packed, None, cfg, return_compiled=True)
                err = rel_err(y, ref)
                ok = err < TOL[torch.float16]
                t = None if args.ncu or not ok else tm.graph(lambda: planes_decode_launch(x, packed, None, cfg))
                ptx = ptx_ops(compiled, ("bar.sync", "ld.shared", "st.shared", "ld.local", "st.local"))
                regs = getattr(compiled, "n_regs", None)
                out["decode"].append(dict(M=M, J=J, cfg=c, err=err, us=t, lin_us=t_lin, ptx=ptx, regs=regs))
                speed = f"x{t_lin / t:.2f} vs fp16" if t else ""
                print(f"  decode J={J} {c or cfg}: {t} us {speed} err {err:.1e}{'' if ok else '  WRONG'} "
                      f"regs {regs} ptx {ptx}", flush=True)
    for J in (int(j) for j in args.blocks.split(",")):
        packed = random_planes(N, K, J, 128, device, seed=J)
        ref = planes_dense_weight(packed)
        scratch = torch.empty(N, K, dtype=torch.float16, device=device)
        for c in json.loads(args.rebuild_configs):
            _, compiled = rebuild_planes_rows(packed, 0, N, scratch, **c, return_compiled=True)
            err = rel_err(scratch, ref)
            t = None if args.ncu else tm.graph(lambda: rebuild_planes_rows(packed, 0, N, scratch, **c))
            gbs = (N * K * 2 + packed.nbytes) / t / 1e3 if t else None
            stores = ptx_ops(compiled, ("st.global", "st.shared", "ld.shared", "bar.sync"))
            out["rebuild"].append(dict(J=J, cfg=c, err=err, us=t, GBs=gbs, ptx=stores))
            print(f"  rebuild J={J} {c}: {t} us ({gbs} GB/s) err {err:.1e} ptx {stores}", flush=True)
    if not args.ncu:
        M = 64 if args.smoke else args.prefill_tokens
        x = torch.randn(M, K, device=device).half()
        packed = random_planes(N, K, 4, 128, device, seed=4)
        y = torch.empty(M, N, dtype=torch.float16, device=device)
        half = N // 2
        out["mm_slice_us"] = tm.graph(lambda: torch.mm(x, w[:half].t(), out=y[:, :half]))
        out["mm_us"] = tm.graph(lambda: torch.mm(x, w[:half].t()))
        out["prefill_us"] = tm.graph(lambda: planes_linear_prefill(x, packed))
        out["lin_us"] = tm.graph(lambda: F.linear(x, w))
        print(f"  {M} tokens: mm of half the rows into y's columns {out['mm_slice_us']:.1f} us, "
              f"into a fresh tensor {out['mm_us']:.1f} us; prefill J=4 {out['prefill_us']:.1f} us; "
              f"fp16 F.linear {out['lin_us']:.1f} us", flush=True)
    print(json.dumps(out))
    if args.out:
        cells = [[d["M"], d["J"], json.dumps(d["cfg"], sort_keys=True), d["us"], d["lin_us"], d["regs"]]
                 for d in out["decode"]]
        write_result(args.out, title=f"Planes decode kernel per configuration, {N}x{K}", topic="kernels",
                     columns=["tokens", "J", "configuration", "µs", "fp16 F.linear µs", "registers"], rows=cells,
                     extra=out, notes="CUDA-graph replay, L2 flushed, median; the rebuild and prefill timings in extra.")


if __name__ == "__main__":
    main()
