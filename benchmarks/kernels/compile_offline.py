"""Compile the Triton kernels for sm_90 without a GPU (Triton and its bundled ptxas/cuobjdump) and
report, per kernel and configuration, registers, spills, shared memory, IR op counts and the SASS
instruction counts: a check that needs no GPU, and the way to show that a change
which should not touch the generated code (a move, a rename) does not.

    python -m benchmarks.kernels.compile_offline                       # every kernel, a summary line each
    python -m benchmarks.kernels.compile_offline --which planes --out benchmarks/results/kernels/sass_planes.json
    python -m benchmarks.kernels.compile_offline --compare A.json B.json   # SASS counts equal?

The configurations are the launchers' defaults on the large target shapes (14336x4096, 1 to 16
tokens); the integer arguments get the divisibility hints the JIT would give them.  The SASS of a
kernel depends on the Triton version: compare files written with the same one (``machine`` names it).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

# where each kernel lives: (module, Triton function)
KERNELS = {
    "avd_decode": ("bitstack.kernels.avd.decode", "_decode_kernel"),
    "avd_zprep": ("bitstack.kernels.avd.decode", "_zprep_kernel"),
    "avd_rebuild": ("bitstack.kernels.avd.rebuild", "_rebuild_kernel"),
    "planes_decode": ("bitstack.kernels.planes.decode", "_planes_decode_kernel"),
    "planes_gemv": ("bitstack.kernels.planes.gemv", "_planes_gemv_kernel"),
    "planes_batch": ("bitstack.kernels.planes.batch", "_planes_batch_kernel"),
    "planes_rebuild": ("bitstack.kernels.planes.rebuild", "_planes_rebuild_kernel"),
}
KEYS_TTGIR = ("local_alloc", "convert_layout", "warp_group_dot", "tt.dot ", "local_load", "async_copy")
KEYS_PTX = ("wgmma.mma_async", "mma.sync", "shl.b32", "lop3.b32", "fma.rn.f16x2", "fma.rn.bf16x2",
            "ld.shared", "st.shared", "ldmatrix", "ld.global", "cp.async", "prmt")
N, K = 14336, 4096  # the large target shape (out x in)


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_tool("cuobjdump"), flag, f.name], capture_output=True, text=True).stdout


def resource_usage(cubin: bytes) -> str:
    """Registers / stack / shared / local bytes (cuobjdump, no driver needed)."""
    out = _cuobjdump(cubin, "-res-usage")
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return f"REG:{m.group(1)} STACK:{m.group(2)} SHARED:{m.group(3)} LOCAL:{m.group(4)}" if m else out.strip()


def sass_instructions(cubin: bytes) -> list[tuple[int, str, str]]:
    """(address, opcode with modifiers, operands) of every SASS instruction of the cubin."""
    insts = []
    for line in _cuobjdump(cubin, "-sass").splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)", line)
        if m:
            insts.append((int(m.group(1), 16), m.group(3), m.group(4)))
    return insts


def innermost_loop(insts) -> dict:
    """Opcode counts (without modifiers) of the innermost loop: the smallest backward-branch body
    that holds an MMA if any loop does, else the smallest one."""
    loops = []
    for addr, op, rest in insts:
        t = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if t and int(t.group(1), 16) < addr:
            lo, hi = int(t.group(1), 16), addr
            body = [o for a, o, _ in insts if lo <= a <= hi]
            loops.append((any("MMA" in o for o in body), -len(body), body))
    if not loops:
        return {}
    _, _, body = max(loops)
    ops = collections.Counter(o.split(".")[0] for o in body)
    return {"n": len(body), **dict(ops.most_common(14))}


def compile_kernel(name: str, pointers: dict, constexprs: dict, ints: dict, floats=(), warps: int = 4,
                   stages: int = 3):
    """Compile kernel ``name`` (:data:`KERNELS`) for sm_90: ``pointers`` maps pointer arguments to
    element types (``fp16``, ``u8``, ...), ``ints`` the int32 arguments to the values of a real call
    (multiples of 16 get the divisibility hint), ``floats`` the float32 arguments."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, attr = KERNELS[name]
    fn = getattr(importlib.import_module(module), attr)
    sig, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg in pointers:
            sig[arg] = "*" + pointers[arg]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg in floats:
            sig[arg] = "fp32"
        elif arg in ints:
            sig[arg] = "i32"
            if ints[arg] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise ValueError(f"{name}: no type given for argument {arg}")
    src = ASTSource(fn, sig, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def stats(k) -> dict:
    ttgir, ptx, cubin = k.asm["ttgir"], k.asm["ptx"], k.asm["cubin"]
    insts = sass_instructions(cubin)
    s = {"res": resource_usage(cubin), "smem": k.metadata.shared, "sass_total": len(insts),
         "sass": dict(sorted(collections.Counter(op for _, op, _ in insts).items())), "loop": innermost_loop(insts)}
    s.update({"ttgir:" + key.strip(): ttgir.count(key) for key in KEYS_TTGIR})
    s.update({"ptx:" + key: ptx.count(key) for key in KEYS_PTX})
    return s


# ---- the configurations -------------------------------------------------------------------------
def avd_decode(dtype="fp16", G=64, BN=128, KR=16, MP=1, UNPACK=2, SPLIT=True, warps=4, stages=3, EVEN=True,
               ZPRE=False, FLAT=False):
    ptrs = dict(x_ptr=dtype, s_ptr="u8", u_ptr="fp16", v_ptr="fp16", b_ptr=dtype, y_ptr=dtype, ws_ptr="fp32",
                cnt_ptr="i32", z_ptr=dtype)
    ints = dict(M=MP, N=N, K=K, RANK=16, KB=K // 8, J=3, stride_xm=K, stride_ym=N, n_groups=K // (8 * G),
                groups_per_split=8)
    const = dict(G=G, BN=BN, KR=KR, MP=MP, UNPACK=UNPACK, SPLIT=SPLIT, HAS_BIAS=False, DOT_F32=False, EVEN_K=EVEN,
                 EVEN_N=EVEN, EVEN_R=EVEN, ZPRE=ZPRE, FLAT=FLAT)
    return compile_kernel("avd_decode", ptrs, const, ints, warps=warps, stages=stages)


def avd_zprep(dtype="fp16", G=32, KR=16, MP=1):
    ptrs = dict(x_ptr=dtype, v_ptr="fp16", z_ptr=dtype)
    ints = dict(M=MP, K=K, RANK=16, n_groups=K // (8 * G), stride_xm=K)
    return compile_kernel("avd_zprep", ptrs, dict(G=G, KR=KR, MP=MP), ints, warps=1)


def avd_rebuild(dtype="fp16", J=4, G=32, BN=64, UNPACK=1, ACC16=True, WIDE=False):
    ptrs = dict(s_ptr="u8", u_ptr="fp16", v_ptr="fp16", w_ptr=dtype)
    ints = dict(N=N, K=K, RANK=16, KB=K // 8, row0=0, n_rows=2048, stride_w=K)
    const = dict(J=J, G=G, BN=BN, KR=16, UNPACK=UNPACK, ACC16=ACC16, DOT_F32=False, EVEN_K=True, EVEN_N=True,
                 EVEN_R=True, WIDE=WIDE)
    return compile_kernel("avd_rebuild", ptrs, const, ints, warps=4)


def planes_decode(dtype="fp16", J=4, MP=1, BN=32, block_k=256, GS=128, SPLIT=True):
    ptrs = dict(xt_ptr="fp32", s_ptr="i32", off_ptr="fp16", step_ptr="fp16", b_ptr=dtype, y_ptr=dtype,
                ws_ptr="fp32", cnt_ptr="i32")
    ints = dict(M=MP, N=N, K=K, KB=K // 8, NG=K // GS, KWP=K // 32, n_ktiles=K // block_k, tiles_per_split=4,
                stride_ym=N)
    const = dict(J=J, GS=GS, NS=block_k // 32, BN=BN, MP=MP, WORDS=True, SPLIT=SPLIT, HAS_BIAS=False, EVEN_N=True,
                 EVEN_K=True)
    return compile_kernel("planes_decode", ptrs, const, ints, floats=("coef",), warps=4, stages=1)


def planes_gemv(dtype="fp16", J=4, warps=4, R=2, GS=128, PREFETCH=True):
    ptrs = dict(x_ptr=dtype, s_ptr="i32", off_ptr="fp16", step_ptr="fp16", b_ptr=dtype, y_ptr=dtype, ws_ptr="fp32",
                cnt_ptr="i32")
    ints = dict(N=N, K=K, KB=K // 8, NG=K // GS, rows_per_prog=256)
    const = dict(J=J, GS=GS, NW=32 * warps, R=R, WORDS=True, SPLIT=False, HAS_BIAS=False, EVEN_N=True, EVEN_K=True,
                 PREFETCH=PREFETCH)
    return compile_kernel("planes_gemv", ptrs, const, ints, floats=("coef",), warps=warps)


def planes_batch(dtype="fp16", J=4, BN=64, KT=128, GS=128, M=4):
    ptrs = dict(x_ptr=dtype, s_ptr="u8", off_ptr="fp16", step_ptr="fp16", b_ptr=dtype, y_ptr=dtype, ws_ptr="fp32",
                cnt_ptr="i32")
    ints = dict(M=M, N=N, K=K, KB=K // 8, NG=K // GS, stride_xm=K, stride_ym=N, n_ktiles=K // KT, tiles_per_split=8)
    const = dict(J=J, GS=GS, BN=BN, KT=KT, MP=16, SPLIT=True, HAS_BIAS=False, DOT_F32=False)
    return compile_kernel("planes_batch", ptrs, const, ints, floats=("coef",), warps=4, stages=1)


def planes_rebuild(dtype="fp16", J=4, BN=16, KT=512, GS=128):
    ptrs = dict(s_ptr="u8", off_ptr="fp16", step_ptr="fp16", w_ptr=dtype)
    ints = dict(N=N, K=K, KB=K // 8, NG=K // GS, row0=0, n_rows=2048, stride_w=K)
    return compile_kernel("planes_rebuild", ptrs, dict(J=J, GS=GS, BN=BN, KT=KT), ints, floats=("coef",), warps=4)


def jobs() -> list[tuple[str, object]]:
    """(name, thunk) of every configuration compiled, avd first."""
    out = [(f"avd_decode fp16 u{u}", lambda u=u: avd_decode(UNPACK=u)) for u in (0, 1, 2)]
    out += [("avd_decode bf16 u2", lambda: avd_decode(dtype="bf16")), ("avd_decode fp16 u2 MP=4", lambda: avd_decode(MP=4)),
            ("avd_decode fp16 zpre flat", lambda: avd_decode(G=32, BN=128, warps=8, ZPRE=True, FLAT=True)),
            ("avd_zprep fp16", lambda: avd_zprep()), ("avd_rebuild fp16 J4", lambda: avd_rebuild()),
            ("avd_rebuild bf16 J4 fp32-sum", lambda: avd_rebuild(dtype="bf16", ACC16=False))]
    for J in (1, 3, 4, 8):
        out.append((f"planes_gemv fp16 J{J}", lambda J=J: planes_gemv(J=J)))
    out += [("planes_gemv bf16 J4 2 warps", lambda: planes_gemv(dtype="bf16", warps=2)),
            ("planes_gemv fp16 J3 R4 no-prefetch", lambda: planes_gemv(J=3, R=4, PREFETCH=False))]
    for J in (1, 4, 8, 12):
        out.append((f"planes_decode fp16 J{J}", lambda J=J: planes_decode(J=J)))
    out += [("planes_decode fp16 J1 64x128", lambda: planes_decode(J=1, BN=64, block_k=128)),
            ("planes_decode fp16 J4 MP=4", lambda: planes_decode(MP=4)),
            ("planes_decode fp16 J2 g16", lambda: planes_decode(J=2, GS=16))]
    for J in (1, 4, 8):
        out.append((f"planes_batch fp16 J{J}", lambda J=J: planes_batch(J=J)))
    out += [("planes_batch bf16 J3", lambda: planes_batch(dtype="bf16", J=3))]
    out += [("planes_rebuild fp16 J4", lambda: planes_rebuild()),
            ("planes_rebuild fp16 J8 32x256", lambda: planes_rebuild(J=8, BN=32, KT=256)),
            ("planes_rebuild fp32 J3", lambda: planes_rebuild(dtype="fp32", J=3))]
    return out


def compare(a: dict, b: dict) -> list[str]:
    """The configurations whose SASS instruction counts differ between two result files' rows."""
    rows_a, rows_b = ({r[0]: r for r in d["rows"]} for d in (a, b))
    diffs = [f"{name}: only in one file" for name in sorted(set(rows_a) ^ set(rows_b))]
    for name in sorted(set(rows_a) & set(rows_b)):
        sa, sb = a["extra"][name]["sass"], b["extra"][name]["sass"]
        if sa != sb:
            ops = sorted(op for op in set(sa) | set(sb) if sa.get(op) != sb.get(op))
            diffs.append(f"{name}: " + ", ".join(f"{op} {sa.get(op, 0)} -> {sb.get(op, 0)}" for op in ops))
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--which", default="", help="comma-separated prefixes of the configurations to compile "
                    "(e.g. planes,avd_decode; default: all)")
    ap.add_argument("--out", default="", help="write a result file (benchmarks/resultfile.py schema) here")
    ap.add_argument("--dump", default="", help="also write each configuration's TTGIR, PTX and SASS into this folder")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare the SASS counts of two result files and exit")
    args = ap.parse_args()
    if args.compare:
        from benchmarks.resultfile import read_result

        diffs = compare(*(read_result(p) for p in args.compare))
        print("\n".join(diffs) if diffs else "SASS instruction counts identical for every configuration")
        sys.exit(1 if diffs else 0)
    prefixes = tuple(p for p in args.which.split(",") if p)
    rows, extra = [], {}
    for name, thunk in jobs():
        if prefixes and not name.startswith(prefixes):
            continue
        try:
            k = thunk()
        except Exception as exc:  # a configuration that does not compile: report it, go on
            print(name, "FAILED", repr(exc)[:2000], flush=True)
            rows.append([name, "FAILED", None, None, None])
            continue
        s = stats(k)
        extra[name] = s
        rows.append([name, s["res"], s["smem"], s["sass_total"], s["loop"].get("n")])
        print(name, {key: val for key, val in s.items() if key != "sass"}, flush=True)
        if args.dump:
            d = Path(args.dump)
            d.mkdir(parents=True, exist_ok=True)
            tag = name.replace(" ", "_")
            for ext in ("ttgir", "ptx"):
                (d / f"{tag}.{ext}").write_text(k.asm[ext])
            (d / f"{tag}.sass").write_text(_cuobjdump(k.asm["cubin"], "-sass"))
    if args.out:
        from benchmarks.resultfile import write_result

        write_result(args.out, title="Triton kernels compiled offline for sm_90", topic="kernels",
                     columns=["configuration", "resources", "shared bytes", "SASS instructions", "innermost loop"],
                     rows=rows, notes="Compiled without a GPU by Triton's bundled ptxas; SASS counts per opcode "
                     "in extra.", extra=extra)


if __name__ == "__main__":
    main()
