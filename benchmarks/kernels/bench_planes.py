"""Validate and time the codec-``planes`` Triton kernels on a GPU.

Phases (``--phases``, default ``validate,probe,table``):

* ``validate``: the planes decode kernel (several launch configurations, split-K on and off), the
  row rebuild and the chunked prefill, fp16 and bf16, odd shapes (K not a multiple of 8 or of the
  group, N odd, groups of 32/64/128/256) and real ones, against the float32 PyTorch reference
  (:func:`bitstack.kernels.planes.reference.planes_linear_reference`); fresh random inputs,
  output memory poisoned with NaN first; split-K repeatability.  **Any failure aborts the run
  before anything is timed** (exit code 1).
* ``probe``: decode launch parameters on 14336x4096 and 4096x14336 at J = 4, 1 token; the
  fastest (summed time ratio vs fp16) is used by the table unless ``--decode-config`` is given.
* ``table``: per shape (out x in), tokens and J: fp16 ``F.linear`` on a dense weight, the naive
  path (``planes_reconstruct`` then ``F.linear``; ``--naive-blocks`` limits it to some J), the
  kernel (``planes_linear`` as the runtime calls it; at 2..16 tokens also the decode kernel and
  the chunked prefill separately; with a probe or ``--decode-config`` also the tuned decode), ratio
  vs fp16 and the kernel's achieved GB/s, counting sign bytes + grid bytes (offset, step) + x + y
  once.  All
  times are CUDA-graph replays with the L2 flushed before each (``triton.testing.do_bench``,
  median, ``_timing.py``); the device copy bandwidth is measured in the same run.

    python -m benchmarks.kernels.bench_planes --phases table --shapes 14336x4096 --tokens 1,16,2048 --blocks 3,4
    TRITON_INTERPRET=1 python -m benchmarks.kernels.bench_planes --smoke    # CPU dry run, tiny shapes

Writes a result file (``benchmarks/resultfile.py``; default
``benchmarks/results/kernels/bench_planes.json``, none for ``--smoke``): the table's rows, and the
validation and probe rows under ``extra``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file: make this tree's benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.kernels._timing import Timing, default_out, device_info, log, poison, rel_err  # noqa: E402
from benchmarks.resultfile import write_result  # noqa: E402
from bitstack.core.packing import pack_signs  # noqa: E402
from bitstack.kernels import PLANES_DECODE_MAX_TOKENS, PackedPlanes, planes_linear  # noqa: E402
from bitstack.kernels.planes.reference import planes_linear_naive, planes_linear_reference  # noqa: E402

SHAPES = [(14336, 4096), (4096, 14336), (4096, 4096), (1024, 4096)]  # (out, in) = F.linear weight
TOL = {torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def random_planes(N: int, K: int, J: int, group: int, device, seed: int, exact_signs: bool = False) -> PackedPlanes:
    """Random grids (offset ~ N(0, 0.02), step in [0.005, 0.025)) and signs; ``exact_signs``:
    through ``pack_signs`` (zero padding bits, any K), else random bytes (K % 8 == 0)."""
    g = torch.Generator(device=device).manual_seed(seed)
    G = (K + group - 1) // group
    offset = (torch.randn(N, G, device=device, generator=g) * 0.02).half()
    step = (torch.rand(N, G, device=device, generator=g) * 0.02 + 0.005).half()
    if exact_signs or K % 8:
        signs = torch.stack([pack_signs(torch.rand(N, K, device=device, generator=g) > 0.5) for _ in range(J)])
    else:
        signs = torch.randint(0, 256, (J, N, K // 8), dtype=torch.uint8, device=device, generator=g)
    return PackedPlanes(signs, offset, step, N, K, group)


def grid_bytes(p: PackedPlanes) -> int:
    return p.offset.numel() * 2 + p.step.numel() * 2


# ---------------------------------------------------------------------------------------------
def phase_validate(device, tm: Timing, results: dict, args) -> bool:
    from bitstack.kernels.planes.decode import DECODE_MAX_M, PlanesDecodeConfig, planes_decode_launch
    from bitstack.kernels.planes.rebuild import planes_linear_prefill

    rows, failures = [], []
    cases = [  # N, K, J, tokens, group (each J and token count compiles the kernels anew: few cases)
        (1001, 1030, 3, 1, 64), (333, 577, 5, 8, 256), (4096, 14336, 4, 1, 128), (1024, 4096, 8, 5, 128),
        (257, 4100, 2, 300, 32),
    ]
    if args.validate_all:
        cases += [(1001, 1030, 3, 3, 128), (333, 577, 1, 2, 32), (4096, 4096, 2, 1, 128), (14336, 4096, 16, 1, 128),
                  (4096, 4096, 4, 300, 64)]
    if tm.smoke:
        cases = [(37, 70, 2, 1, 16), (24, 300, 3, 3, 32), (40, 256, 2, 20, 64)]
    decode_cfgs = [dict(), dict(splits=3), dict(block_n=64, block_k=512)]
    if args.validate_all:
        decode_cfgs += [dict(splits=1), dict(block_n=32, block_k=128), dict(block_k=512, num_warps=8)]
    seed = 200
    for (N, K, J, M, group) in cases:
        seed += 1
        packed = random_planes(N, K, J, group, device, seed, exact_signs=True)
        for dtype in (torch.float16, torch.bfloat16):
            gx = torch.Generator(device=device).manual_seed(seed)
            x = torch.randn(M, K, device=device, generator=gx).to(dtype)
            bias = torch.randn(N, device=device, generator=gx)
            ref = planes_linear_reference(x, packed, bias)
            variants = [("planes_linear", None)]
            if M <= DECODE_MAX_M:
                variants += [("decode", c) for c in decode_cfgs]
            variants += [("prefill", dict(chunk_bytes=2 * K * 64))]
            for kind, c in variants:
                poison(M * N * 2, device)
                name = f"{kind}/{c}"
                try:
                    if kind == "planes_linear":
                        y = planes_linear(x, packed, bias)
                    elif kind == "decode":
                        y = planes_decode_launch(x, packed, bias, PlanesDecodeConfig(**c))
                    else:
                        y = planes_linear_prefill(x, packed, bias, **c)
                    if not tm.smoke:
                        torch.cuda.synchronize()
                    err = rel_err(y, ref)
                    ok = bool(torch.isfinite(y).all()) and err < TOL[dtype] and y.dtype == dtype
                except Exception as exc:  # record and go on: every failure is listed
                    err, ok = float("nan"), False
                    name += f" EXC {type(exc).__name__}: {str(exc)[:300]}"
                rows.append(dict(kernel=name, N=N, K=K, J=J, M=M, group=group, dtype=str(dtype)[6:], err=err, ok=ok))
                if not ok:
                    failures.append(rows[-1])
                    log("  FAIL", rows[-1])
        log(f"  validate {N}x{K} J={J} M={M} g={group}: "
            f"max err {max(r['err'] for r in rows[-2 * len(variants):]):.2e}")
    # split-K repeatability: the fp32 atomics add in varying order, nothing else may move
    NR, KR = (64, 512) if tm.smoke else (4096, 14336)
    packed = random_planes(NR, KR, 3, 128, device, seed=3)
    x = torch.randn(1, KR, device=device).half()
    ys = [planes_decode_launch(x, packed, None, PlanesDecodeConfig(splits=8)).float() for _ in range(2 if tm.smoke else 20)]
    spread = max((y - ys[0]).abs().max().item() for y in ys)
    scale = ys[0].abs().max().item()
    rows.append(dict(kernel="decode split-K repeat", spread=spread, ok=spread <= 2e-3 * scale))
    if not rows[-1]["ok"]:
        failures.append(rows[-1])
    log(f"  split-K repeatability: max spread {spread:.2e} (max |y| {scale:.2e})")
    results["validate"] = rows
    results["validate_failures"] = failures
    log(f"validate: {len(rows)} checks, {len(failures)} failures")
    return not failures


# ---------------------------------------------------------------------------------------------
def phase_probe(device, tm: Timing, results: dict, args) -> dict:
    from bitstack.kernels.planes.decode import PlanesDecodeConfig, decode_config, planes_decode_launch

    configs = json.loads(args.probe_configs) if args.probe_configs else [
        dict(), dict(block_n=32, block_k=256), dict(block_n=64, block_k=128, programs_per_sm=16),
        dict(block_n=16, block_k=256), dict(block_n=32, block_k=512), dict(block_n=32, programs_per_sm=8),
        dict(block_n=32, num_warps=2), dict(block_n=64, num_warps=8)]
    shapes = [(128, 512)] if tm.smoke else [(14336, 4096), (4096, 14336)]
    score, rows = {}, []
    for (N, K) in shapes:
        w = torch.randn(N, K, device=device).half()
        x = torch.randn(1, K, device=device).half()
        t_lin = tm.graph(lambda: F.linear(x, w))
        packed = random_planes(N, K, 4, 128, device, seed=4)
        ref = planes_linear_reference(x, packed)
        for c in configs:
            cfg = PlanesDecodeConfig(**c) if c else decode_config(1, 4)
            try:
                err = rel_err(planes_decode_launch(x, packed, None, cfg), ref)
                t = tm.graph(lambda: planes_decode_launch(x, packed, None, cfg))
            except Exception as exc:
                log("  probe failed", N, K, c, repr(exc)[:300])
                continue
            if not err < TOL[torch.float16]:
                log("  probe config gives a wrong result, skipped", c, err)
                continue
            key = json.dumps(c, sort_keys=True)
            score[key] = score.get(key, 0.0) + t / t_lin
            rows.append(dict(N=N, K=K, J=4, M=1, cfg=c, us=t, lin_us=t_lin, speedup=t_lin / t, err=err))
            log(f"  probe decode {N}x{K} J=4 {c}: {t:.1f} us (fp16 {t_lin:.1f}, x{t_lin / t:.2f}) err {err:.1e}")
    best = json.loads(min(score, key=score.get)) if score else {}
    log(f"  chosen decode config: {best or 'decode_config'}")
    results["probe"] = rows
    results["chosen_decode"] = best
    return best


# ---------------------------------------------------------------------------------------------
def phase_table(device, tm: Timing, results: dict, args, bw: float, dec_kw: dict, save=lambda: None) -> list[dict]:
    """``kernel_us``: ``planes_linear`` (its dispatch and default launch parameters, as the runtime
    runs it); ``decode_us``/``prefill_us``: both paths at 2..16 tokens; ``decode_tuned_us``: the
    decode kernel with ``dec_kw`` (the probe's choice or --decode-config), when given."""
    from bitstack.kernels import planes_linear_decode
    from bitstack.kernels.planes.decode import DECODE_MAX_M, PlanesDecodeConfig, planes_decode_launch
    from bitstack.kernels.planes.rebuild import planes_linear_prefill

    dcfg = PlanesDecodeConfig(**dec_kw) if dec_kw else None
    rows = []
    blocks = [int(b) for b in args.blocks.split(",")]
    naive_blocks = {int(b) for b in args.naive_blocks.split(",")} if args.naive_blocks else set()
    for (N, K) in [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]:
        w = torch.randn(N, K, device=device).half()
        for M in [int(m) for m in args.tokens.split(",")]:
            x = torch.randn(M, K, device=device).half()
            t_lin = tm.graph(lambda: F.linear(x, w))
            for J in blocks:
                packed = random_planes(N, K, J, args.group, device, seed=J)
                moved = packed.nbytes + grid_bytes(packed) + 2 * (M * K + M * N)
                row = dict(N=N, K=K, M=M, J=J, group=args.group, lin_us=t_lin,
                           lin_GBs=2 * (N * K + M * K + M * N) / t_lin / 1e3, bytes=moved)
                try:
                    # the reference check before timing: a wrong kernel is not timed
                    err = rel_err(planes_linear(x, packed), planes_linear_reference(x, packed))
                    row["err"] = err
                    if not err < TOL[torch.float16]:
                        raise RuntimeError(f"kernel result off by {err:.2e} relative")
                    if not args.skip_naive and (not args.naive_blocks or J in naive_blocks):
                        row["naive_us"] = tm.graph(lambda: planes_linear_naive(x, packed))
                    row["kernel_us"] = tm.graph(lambda: planes_linear(x, packed))
                    row["path"] = "decode" if M <= PLANES_DECODE_MAX_TOKENS else "prefill"
                    if dcfg is not None and M <= DECODE_MAX_M:
                        row["decode_tuned_us"] = tm.graph(lambda: planes_decode_launch(x, packed, None, dcfg))
                    if 1 < M <= 16:  # both paths around the dispatch threshold
                        if M <= DECODE_MAX_M:
                            row["decode_us"] = tm.graph(lambda: planes_linear_decode(x, packed))
                        row["prefill_us"] = tm.graph(lambda: planes_linear_prefill(x, packed, None))
                except Exception as exc:
                    row["error"] = repr(exc)[:300]
                    log("  table ERROR", row)
                    if "off by" in row["error"]:
                        results["table"] = rows + [row]
                        raise SystemExit("kernel result does not match the reference: aborting the timings")
                    rows.append(row)
                    continue
                rows.append(with_ratios(row, bw))
            results["table"] = rows
            save()  # after each (shape, tokens): a run stopped by a time limit keeps its rows
    results["table"] = rows
    return rows


def with_ratios(row: dict, bw: float) -> dict:
    """``row`` with the kernel's time ratios to fp16 (and naive) and its GB/s (and % of ``bw``), logged."""
    t, moved = row["kernel_us"], row["bytes"]
    gbs = moved / t / 1e3
    row.update(ratio_vs_fp16=t / row["lin_us"], speedup_vs_fp16=row["lin_us"] / t, kernel_GBs=gbs,
               pct_of_copy=100 * gbs / bw, speedup_vs_naive=row["naive_us"] / t if "naive_us" in row else None)
    log("  table", {key: round(val, 3) if isinstance(val, float) else val for key, val in row.items()})
    return row


COLUMNS = ["out×in", "tokens", "J", "fp16 F.linear µs", "naive µs", "kernel µs", "path", "kernel / fp16 time",
           "speed-up vs fp16", "kernel GB/s", "% of copy", "decode µs", "prefill µs", "decode, tuned µs"]


def table_cells(r: dict) -> list:
    """One row of :data:`COLUMNS` (numbers rounded; None where a path was not timed)."""
    def num(key, digits=1):
        return None if r.get(key) is None else round(r[key], digits)

    return [f"{r['N']}×{r['K']}", r["M"], r["J"], num("lin_us"), num("naive_us"), num("kernel_us"), r["path"],
            num("ratio_vs_fp16", 2), num("speedup_vs_fp16", 2), round(r["kernel_GBs"]), round(r["pct_of_copy"]),
            num("decode_us"), num("prefill_us"), num("decode_tuned_us")]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if "kernel_us" not in r:
            lines.append(f"| {r['N']}×{r['K']} | {r['M']} | {r['J']} | {r['lin_us']:.1f} | error: {r.get('error')} |")
        else:
            lines.append("| " + " | ".join("–" if v is None else str(v) for v in table_cells(r)) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="validate,probe,table", help="comma-separated: validate, probe, table")
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="OUTxIN weight shapes")
    ap.add_argument("--tokens", default="1,16,2048", help="token counts of the table")
    ap.add_argument("--blocks", default="1,2,3,4,5,6,7,8", help="block counts J of the table")
    ap.add_argument("--group", type=int, default=128, help="group size of the grids")
    ap.add_argument("--decode-config", default="", help="JSON kwargs of PlanesDecodeConfig (else the probe's choice)")
    ap.add_argument("--probe-configs", default="", help="JSON list of PlanesDecodeConfig kwargs to probe")
    ap.add_argument("--skip-naive", action="store_true", help="do not time the naive path (rebuild, then F.linear)")
    ap.add_argument("--naive-blocks", default="", help="time the naive path only at these J (it is slow)")
    ap.add_argument("--validate-all", action="store_true", help="more shapes and launch configurations")
    ap.add_argument("--out", default=None, help="result file, rewritten after each shape and token count (default: "
                    "benchmarks/results/kernels/bench_planes.json; none with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter dry run (TRITON_INTERPRET=1), tiny sizes")
    args = ap.parse_args()
    tm = Timing(smoke=args.smoke)
    out = args.out if args.out is not None else (None if args.smoke else default_out("bench_planes"))
    if args.smoke:
        args.shapes, args.tokens, args.blocks = "40x256,33x300", "1,9", "1,3"
    device = torch.device("cpu" if args.smoke else "cuda")
    results = device_info(device)
    log(results)
    t0 = time.time()
    bw = tm.copy_bandwidth(device)
    results["copy_GBs"] = bw
    log(f"device copy bandwidth {bw:.0f} GB/s (read + write)")

    def save():
        if out:
            rows = [table_cells(r) for r in results.get("table", []) if "kernel_us" in r]
            write_result(out, title="Codec planes kernels against fp16 F.linear", topic="kernels", columns=COLUMNS,
                         rows=rows, extra=results,
                         notes=f"Kernel = planes_linear as the runtime calls it (decode paths up to "
                         f"{PLANES_DECODE_MAX_TOKENS} tokens, chunked prefill above); CUDA-graph replay, L2 flushed, "
                         f"median; device copy {bw:.0f} GB/s measured in the same run; GB/s counts sign, grid, x "
                         "and y bytes once; random signs and grids.")

    phases = args.phases.split(",")
    if "validate" in phases:
        ok = phase_validate(device, tm, results, args)
        save()
        log(f"[{time.time() - t0:.0f}s] validate done")
        if not ok:
            for r in results["validate_failures"]:
                log("  FAILED", r)
            raise SystemExit("validation FAILED: nothing timed")
    dec_kw = json.loads(args.decode_config) if args.decode_config else {}
    if "probe" in phases and not args.decode_config:
        dec_kw = phase_probe(device, tm, results, args)
        save()
        log(f"[{time.time() - t0:.0f}s] probe done")
    if "table" in phases:
        try:
            rows = phase_table(device, tm, results, args, bw, dec_kw, save)
        finally:
            save()
        log(f"[{time.time() - t0:.0f}s] table done")
        log(f"\ndevice copy bandwidth {bw:.0f} GB/s; decode config {dec_kw or 'default'}; "
            f"planes_linear: decode kernels up to {PLANES_DECODE_MAX_TOKENS} tokens, chunked prefill above")
        log(markdown_table(rows))
    log(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
