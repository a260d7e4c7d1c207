"""Validate and time the codec-``avd`` Triton kernels on a GPU.

One script, three phases (``--phases``):

* ``validate``: every kernel variant (decode with each sign-unpack implementation, the chunked
  prefill with several rebuild configurations), fp16 and bf16, on odd and real shapes, against the
  float32 PyTorch reference; fresh random inputs, output memory poisoned with NaN first.  Prints
  the relative error of each; any failure is listed again at the end.
* ``probe``: launch-parameter sweep on the two target shapes (decode at J=3, prefill at J=4).
* ``table``: per shape (out × in) × tokens × J: fp16 ``F.linear`` (dense weight), the naive path
  (rebuild Ŵ, then ``F.linear``), and the kernels, all timed in this run (CUDA-graph replay, L2
  flushed, median of ``triton.testing.do_bench``); achieved GB/s against the device-to-device
  copy bandwidth measured here first.

    python -m benchmarks.kernels.bench_kernels --phases table --tokens 1,16,2048 --blocks 3,4
    TRITON_INTERPRET=1 python -m benchmarks.kernels.bench_kernels --smoke    # CPU dry run, tiny shapes

Writes a result file (``benchmarks/resultfile.py``; default
``benchmarks/results/kernels/bench_kernels.json``, none for ``--smoke``): the table's rows, and
the validation and probe rows under ``extra``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file: make this tree's benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.kernels._timing import Timing, default_out, device_info, log, poison, rel_err  # noqa: E402
from benchmarks.resultfile import write_result  # noqa: E402
from bitstack.kernels import PackedBitStack, repack  # noqa: E402
from bitstack.kernels.avd.reference import bitstack_linear_naive, bitstack_linear_reference  # noqa: E402

SHAPES = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]  # (out, in) = F.linear weight
RANK = 16


def random_packed(N, K, k, J, device, seed=0, group=32):
    """Random blocks directly in the kernel layout (random bits are random in any order)."""
    g = torch.Generator(device=device).manual_seed(seed)
    signs = torch.randint(0, 256, (J, N, (K + 7) // 8), dtype=torch.uint8, device=device, generator=g)
    if K % 8:
        raise ValueError("random_packed needs K % 8 == 0 (no padding bits)")
    u = (torch.randn(J, N, k, device=device, generator=g) * 0.1).half()
    v = (torch.randn(J, k, K, device=device, generator=g) * 0.1).half()
    return PackedBitStack(signs, u, v, N, K, k, group)


def stored_blocks(N, K, k, J, device, seed):
    from bitstack.core.packing import pack_signs

    g = torch.Generator(device=device).manual_seed(seed)
    return [(pack_signs(torch.rand(N, K, device=device, generator=g) > 0.5),
             (torch.randn(N, k, device=device, generator=g) * 0.3).half(),
             (torch.randn(k, K, device=device, generator=g) * 0.3).half()) for _ in range(J)]


# ---------------------------------------------------------------------------------------------
def phase_validate(device, tm: Timing, results: dict) -> bool:
    from bitstack.kernels.avd.decode import DecodeConfig, decode_launch
    from bitstack.kernels.avd.rebuild import bitstack_linear_prefill

    tol = {torch.float16: 3e-3, torch.bfloat16: 1.5e-2}
    failures = []
    rows = []
    cases = [
        # N, K, k, J, M, group
        (1000, 1030, 16, 3, 1, 32), (1000, 1030, 16, 3, 3, 32), (1000, 1030, 4, 2, 16, 64),
        (4096, 4096, 16, 2, 1, 32), (4096, 14336, 16, 4, 1, 64), (333, 577, 1, 1, 2, 16), (1024, 4096, 16, 3, 2, 64),
    ]
    if tm.smoke:
        cases = [(40, 70, 4, 2, 1, 16), (24, 300, 16, 1, 3, 32)]
    seed = 100
    for (N, K, k, J, M, group) in cases:
        seed += 1
        packed = repack(stored_blocks(N, K, k, J, device, seed), group=group)
        for dtype in (torch.float16, torch.bfloat16):
            x = torch.randn(M, K, device=device, generator=torch.Generator(device=device).manual_seed(seed)).to(dtype)
            bias = torch.randn(N, device=device)
            ref = bitstack_linear_reference(x, packed, bias)
            variants = [("decode", dict(unpack=u)) for u in (0, 1, 2)] + [
                ("decode", dict(zpre=False)), ("decode", dict(flat=False)), ("decode", dict(block_n=64, num_warps=4))]
            variants += [("prefill", dict(chunk_bytes=2 * K * 64, rebuild=r))
                         for r in (dict(), dict(acc16=False), dict(unpack=0), dict(block_n=128, num_warps=8))]
            for kind, c in variants:
                poison(M * N * 2, device)
                name = f"{kind}/{c}"
                try:
                    if kind == "decode":
                        y = decode_launch(x, packed, bias, DecodeConfig(**c))
                    else:
                        y = bitstack_linear_prefill(x, packed, bias, **c)
                    if not tm.smoke:
                        torch.cuda.synchronize()
                    err = rel_err(y, ref)
                    ok = bool(torch.isfinite(y).all()) and err < tol[dtype]
                except Exception as exc:  # record and go on
                    err, ok = float("nan"), False
                    name += f" EXC {type(exc).__name__}: {str(exc)[:200]}"
                rows.append(dict(kernel=name, N=N, K=K, k=k, J=J, M=M, group=group, dtype=str(dtype)[6:], err=err,
                                 ok=ok))
                log("  validate", rows[-1])
                if not ok:
                    failures.append(rows[-1])
    # the prefill at a real size
    NP, MP_ = (64, 32) if tm.smoke else (4096, 2048)
    packed = repack(stored_blocks(NP, NP, 16, 4, device, 7), group=32)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(MP_, NP, device=device).to(dtype)
        ref = bitstack_linear_reference(x, packed)
        for r in (dict(), dict(acc16=False)):
            poison(MP_ * NP * 2, device)
            try:
                y = bitstack_linear_prefill(x, packed, None, rebuild=r)
                err = rel_err(y, ref)
                ok = bool(torch.isfinite(y).all()) and err < tol[dtype]
                name = f"prefill/{r}"
            except Exception as exc:
                err, ok, name = float("nan"), False, f"prefill/{r} EXC {type(exc).__name__}: {str(exc)[:200]}"
            rows.append(dict(kernel=name, N=NP, K=NP, k=16, J=4, M=MP_, group=32, dtype=str(dtype)[6:], err=err,
                             ok=ok))
            log("  validate", rows[-1])
            if not ok:
                failures.append(rows[-1])
    # repeatability of the split-K reduction (a race would move the result)
    NR_, KR_ = (64, 512) if tm.smoke else (4096, 14336)
    packed = random_packed(NR_, KR_, 16, 3, device, seed=3)
    x = torch.randn(1, KR_, device=device).half()
    ys = [decode_launch(x, packed, None, DecodeConfig(splits=8)).float() for _ in range(2 if tm.smoke else 20)]
    spread = max((y - ys[0]).abs().max().item() for y in ys)
    rows.append(dict(kernel="decode split-K repeat x20", spread=spread, ok=spread < 1e-2))
    log("  validate", rows[-1])
    results["validate"] = rows
    results["validate_failures"] = failures
    log(f"validate: {len(rows)} checks, {len(failures)} failures")
    return not failures


# ---------------------------------------------------------------------------------------------
def phase_probe(device, tm: Timing, results: dict):
    """Sweep launch parameters; return the chosen (group, DecodeConfig kwargs, prefill kwargs)."""
    from bitstack.kernels.avd import decode as dec
    from bitstack.kernels.avd import rebuild as rb

    rows = []
    shapes = [(128, 512)] if tm.smoke else [(14336, 4096), (4096, 14336)]
    dec_configs = [dict(), dict(flat=False), dict(unpack=1), dict(splits=2), dict(splits=4), dict(splits=8),
                   dict(block_n=64, num_warps=4), dict(num_stages=4), dict(zprep_warps=4)]
    score = {}
    for (N, K) in shapes:
        w = torch.randn(N, K, device=device).half()
        x = torch.randn(1, K, device=device).half()
        t_lin = tm.graph(lambda: F.linear(x, w))
        log(f"  profile F.linear {N}x{K}: {tm.kernel_profile(lambda: F.linear(x, w))}")
        for group in (32, 64):
            packed = random_packed(N, K, RANK, 3, device, seed=3, group=group)
            ref = bitstack_linear_reference(x, packed)
            log(f"  profile decode {N}x{K} J=3 G={group}: "
                f"{tm.kernel_profile(lambda: dec.decode_launch(x, packed, None, None))}")
            for c in dec_configs:
                cfg = dec.DecodeConfig(**c)
                try:
                    y = dec.decode_launch(x, packed, None, cfg)
                    err = rel_err(y, ref)
                    t = tm.graph(lambda: dec.decode_launch(x, packed, None, cfg))
                except Exception as exc:
                    log("  probe decode failed", N, K, group, c, repr(exc)[:300])
                    continue
                key = (group, json.dumps(c, sort_keys=True))
                score[key] = score.get(key, 0.0) + t / t_lin
                rows.append(dict(kernel="decode", N=N, K=K, J=3, M=1, group=group, cfg=c, us=t, lin_us=t_lin,
                                 speedup=t_lin / t, err=err))
                log(f"  probe decode {N}x{K} J=3 G={group} {c}: {t:.1f} us (fp16 {t_lin:.1f}, x{t_lin / t:.2f}) "
                    f"err {err:.1e}")
    best_group, best_dec = min(score, key=score.get)
    best_dec = json.loads(best_dec)
    log(f"  chosen decode: G={best_group} {best_dec}")
    # prefill (2048 tokens, J=4) on the chosen layout
    N, K, M = (128, 512, 64) if tm.smoke else (14336, 4096, 2048)
    x = torch.randn(M, K, device=device).half()
    w = torch.randn(N, K, device=device).half()
    t_lin = tm.graph(lambda: F.linear(x, w))
    packed = random_packed(N, K, RANK, 4, device, seed=2, group=best_group)
    ref = bitstack_linear_reference(x, packed)
    variants = [dict(rebuild=r, chunk_bytes=64 << 20)
                for r in (dict(), dict(acc16=False), dict(block_n=128, num_warps=8), dict(block_n=32, num_warps=4),
                          dict(block_n=64, num_warps=8))]
    variants += [dict(rebuild=dict(), chunk_bytes=cb) for cb in (16 << 20, 32 << 20)]
    best_chunk, best_t = None, math.inf
    for c in variants:
        try:
            y = rb.bitstack_linear_prefill(x, packed, None, **c)
            err = rel_err(y, ref)
            t = tm.graph(lambda: rb.bitstack_linear_prefill(x, packed, None, **c))
            prof = tm.kernel_profile(lambda: rb.bitstack_linear_prefill(x, packed, None, **c), iters=3)
        except Exception as exc:
            log("  probe prefill failed", c, repr(exc)[:300])
            continue
        if t < best_t:
            best_chunk, best_t = c, t
        rows.append(dict(kernel="prefill", N=N, K=K, J=4, M=M, group=best_group, cfg=c, us=t, lin_us=t_lin,
                         ratio=t / t_lin, err=err, profile=prof))
        log(f"  probe prefill {c}: {t:.1f} us (fp16 {t_lin:.1f}, {t / t_lin:.2f}x of fp16) err {err:.1e} {prof}")
    log(f"  chosen prefill: {best_chunk}")
    results["probe"] = rows
    results["chosen"] = dict(group=best_group, decode=best_dec, prefill=best_chunk)
    return best_group, best_dec, best_chunk


# ---------------------------------------------------------------------------------------------
def phase_table(device, tm: Timing, results: dict, args, group, dec_kw, prefill_kw) -> list[dict]:
    from bitstack.kernels.avd import decode as dec
    from bitstack.kernels.avd import rebuild as rb

    dcfg = dec.DecodeConfig(**dec_kw)
    rows = []
    blocks = [int(b) for b in args.blocks.split(",")]
    for (N, K) in [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]:
        w = torch.randn(N, K, device=device).half()
        for M in [int(m) for m in args.tokens.split(",")]:
            x = torch.randn(M, K, device=device).half()
            t_lin = tm.graph(lambda: F.linear(x, w))
            lin_bytes = 2 * (N * K + M * K + M * N)
            for J in blocks:
                packed = random_packed(N, K, RANK, J, device, seed=J, group=group)
                kbytes = packed.nbytes + 2 * (M * K + M * N)
                row = dict(N=N, K=K, M=M, J=J, lin_us=t_lin, lin_GBs=lin_bytes / t_lin / 1e3, bytes=kbytes,
                           flops=2 * M * N * K)
                try:
                    if not args.skip_naive and (M == 1 or J in (1, 3, 4, 8)):
                        row["naive_us"] = tm.graph(lambda: bitstack_linear_naive(x, packed))
                    if M <= 16:
                        row["decode_us"] = tm.graph(lambda: dec.decode_launch(x, packed, None, dcfg))
                        if args.decode_alt and M == 1:
                            acfg = dec.DecodeConfig(**json.loads(args.decode_alt))
                            row["decode_alt_us"] = tm.graph(lambda: dec.decode_launch(x, packed, None, acfg))
                    if M >= 16:
                        row["prefill_us"] = tm.graph(lambda: rb.bitstack_linear_prefill(x, packed, None, **prefill_kw))
                except Exception as exc:
                    row["error"] = repr(exc)[:300]
                best = min(row.get(k, math.inf) for k in ("decode_us", "decode_alt_us", "prefill_us"))
                row["best_us"] = best
                row["best_GBs"] = kbytes / best / 1e3
                row["speedup_vs_fp16"] = t_lin / best
                if "naive_us" in row:
                    row["speedup_vs_naive"] = row["naive_us"] / best
                rows.append(row)
                log("  table", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()})
    results["table"] = rows
    return rows


COLUMNS = ["out×in", "tokens", "J", "fp16 F.linear µs", "naive µs", "decode µs", "decode (alt) µs", "prefill µs",
           "best vs fp16", "best vs naive", "best GB/s", "% of copy"]


def table_cells(r: dict, bw: float) -> list:
    """One row of :data:`COLUMNS` (numbers rounded; None where a path was not timed)."""
    def num(key, digits=1):
        return None if r.get(key) is None else round(r[key], digits)

    gbs = r["bytes"] / r["best_us"] / 1e3
    return [f"{r['N']}×{r['K']}", r["M"], r["J"], num("lin_us"), num("naive_us"), num("decode_us"),
            num("decode_alt_us"), num("prefill_us"), num("speedup_vs_fp16", 2), num("speedup_vs_naive", 1),
            round(gbs), round(100 * gbs / bw)]


def markdown_table(rows: list[dict], bw: float) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("–" if v is None else str(v) for v in table_cells(r, bw)) + " |" for r in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="validate,probe,table", help="comma-separated: validate, probe, table")
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="OUTxIN weight shapes")
    ap.add_argument("--tokens", default="1,16,2048", help="token counts of the table")
    ap.add_argument("--blocks", default="1,2,3,4,5,6,7,8", help="block counts J of the table")
    ap.add_argument("--decode-config", default="", help="JSON kwargs of DecodeConfig (table without probe)")
    ap.add_argument("--chunk-config", default="", help="JSON kwargs of the (chunked) prefill, e.g. "
                    "'{\"rebuild\": {\"block_n\": 64}}' (table without probe)")
    ap.add_argument("--group", type=int, default=32, help="layout group G (table without probe)")
    ap.add_argument("--skip-naive", action="store_true", help="do not time the naive path (rebuild, then F.linear)")
    ap.add_argument("--decode-alt", default="", help="JSON kwargs of a second DecodeConfig timed at 1 token")
    ap.add_argument("--out", default=None, help="result file (default: benchmarks/results/kernels/bench_kernels.json; "
                    "none with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter dry run (TRITON_INTERPRET=1), tiny sizes")
    args = ap.parse_args()
    tm = Timing(smoke=args.smoke)
    out = args.out if args.out is not None else (None if args.smoke else default_out("bench_kernels"))
    device = torch.device("cpu" if args.smoke else "cuda")
    results = device_info(device)
    log(results)
    t0 = time.time()
    bw = tm.copy_bandwidth(device)
    tf = tm.matmul_tflops(device)
    results["copy_GBs"] = bw
    results["fp16_matmul_TFLOPs"] = tf
    log(f"device copy bandwidth {bw:.0f} GB/s (read+write), fp16 8192^3 matmul {tf:.0f} TFLOP/s")
    phases = args.phases.split(",")
    ok = True
    if "validate" in phases:
        ok = phase_validate(device, tm, results)
        log(f"[{time.time() - t0:.0f}s] validate done")
    if "probe" in phases:
        phase_probe(device, tm, results)
        log(f"[{time.time() - t0:.0f}s] probe done")
    rows = []
    if "table" in phases:
        chosen = results.get("chosen") or dict(group=args.group, decode=json.loads(args.decode_config or "{}"),
                                               prefill=json.loads(args.chunk_config or "{}"))
        rows = phase_table(device, tm, results, args, chosen["group"], chosen["decode"], chosen["prefill"] or {})
        log(f"[{time.time() - t0:.0f}s] table done")
        log(markdown_table(rows, bw))
    if "probe" in phases:
        for r in results["probe"]:
            extra = f"x{r['speedup']:.2f} vs fp16" if r["kernel"] == "decode" else f"{r['ratio']:.2f}x fp16 time"
            log(f"probe {r['kernel']} {r['N']}x{r['K']} J={r['J']} G={r.get('group')} {r['cfg']}: {r['us']:.1f} us "
                f"(fp16 {r['lin_us']:.1f}), {extra}")
        log(f"chosen: {results['chosen']}")
    if results.get("validate_failures"):
        log("VALIDATION FAILURES:")
        for r in results["validate_failures"]:
            log("  ", r)
    if out:
        path = write_result(out, title="Codec avd kernels against fp16 F.linear", topic="kernels", columns=COLUMNS,
                            rows=[table_cells(r, bw) for r in rows if "error" not in r],
                            notes=f"CUDA-graph replay, L2 flushed, median; device copy {bw:.0f} GB/s measured in the "
                            "same run; random blocks of rank 16.", extra=results)
        log(f"wrote {path}")
    log(f"validation {'passed' if ok else 'FAILED'}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
