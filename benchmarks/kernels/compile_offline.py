"""Compile the kernels for sm_90 without a GPU (Triton + its bundled ptxas) and report
registers, spills and IR op counts: a free check before spending device time.

Usage: python benchmarks/kernels/compile_offline.py [--dump DIR]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from bitstack.kernels import decode as dec  # noqa: E402
from bitstack.kernels import prefill as pre  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
KEYS_TTGIR = ("local_alloc", "convert_layout", "warp_group_dot", "tt.dot ", "local_load", "async_copy")
KEYS_PTX = ("wgmma.mma_async", "mma.sync", "shl.b32", "lop3.b32", "fma.rn.f16x2", "fma.rn.bf16x2",
            "ld.shared", "st.shared", "ldmatrix", "ld.global", "cp.async", "prmt")


def resource_usage(cubin: bytes) -> str:
    """Registers / stack / spills from the bundled cuobjdump (no driver needed)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return f"REG:{m.group(1)} STACK:{m.group(2)} SHARED:{m.group(3)} LOCAL:{m.group(4)}" if m else out.strip()


def loop_profile(cubin: bytes):
    """SASS opcode counts of the innermost loop (the largest backward-branch body)."""
    import collections

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True).stdout
    insts = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)", line)
        if m:
            insts.append((int(m.group(1), 16), m.group(3), m.group(4)))
    best = None
    for addr, op, rest in insts:
        if op.startswith("BRA"):
            t = re.search(r"0x([0-9a-f]+)", rest)
            if t and int(t.group(1), 16) < addr:
                lo, hi = int(t.group(1), 16), addr
                n = sum(1 for a, _, _ in insts if lo <= a <= hi)
                # innermost = smallest body that still contains an MMA
                has_mma = any(lo <= a <= hi and ("MMA" in o) for a, o, _ in insts)
                if has_mma and (best is None or n < best[2]):
                    best = (lo, hi, n)
    if best is None:
        return {}
    ops = collections.Counter(o.split(".")[0] for a, o, _ in insts if best[0] <= a <= best[1])
    return {"n": best[2], **dict(ops.most_common(14))}


def stats(k):
    ttgir, ptx = k.asm["ttgir"], k.asm["ptx"]
    s = {"res": resource_usage(k.asm["cubin"]), "smem": k.metadata.shared}
    if k.metadata.shared > 232448:
        s["SMEM_TOO_LARGE"] = True
    s.update({"ttgir:" + key.strip(): ttgir.count(key) for key in KEYS_TTGIR})
    s.update({"ptx:" + key: ptx.count(key) for key in KEYS_PTX})
    return s


def _attrs(fn, sig, ints):
    """Divisibility-16 hints as the JIT gives them: every pointer, and the ints in ``ints`` whose
    value is a multiple of 16 (the real call's values)."""
    names = list(sig)
    out = {}
    for name, ty in sig.items():
        if ty.startswith("*") or (name in ints and ints[name] % 16 == 0):
            out[(names.index(name),)] = [["tt.divisibility", 16]]
    return out


DECODE_INTS = dict(M=1, N=14336, K=4096, RANK=16, KB=512, J=3, stride_xm=4096, stride_ym=14336,
                   n_groups=16, groups_per_split=8)
PREFILL_INTS = dict(M=2048, N=14336, K=4096, RANK=16, KB=512, stride_xm=4096, stride_ym=14336)


def compile_decode(dtype="fp16", G=64, BN=128, KR=16, MP=1, UNPACK=2, SPLIT=True, warps=4, stages=3, EVEN=True, ZPRE=False, FLAT=False):
    sig = {"x_ptr": f"*{dtype}", "s_ptr": "*u8", "u_ptr": "*fp16", "v_ptr": "*fp16", "b_ptr": f"*{dtype}",
           "y_ptr": f"*{dtype}", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "z_ptr": f"*{dtype}",
           "M": "i32", "N": "i32", "K": "i32", "RANK": "i32", "KB": "i32", "J": "i32",
           "stride_xm": "i32", "stride_ym": "i32", "n_groups": "i32", "groups_per_split": "i32",
           "G": "constexpr", "BN": "constexpr", "KR": "constexpr", "MP": "constexpr", "UNPACK": "constexpr",
           "SPLIT": "constexpr", "HAS_BIAS": "constexpr", "DOT_F32": "constexpr",
           "EVEN_K": "constexpr", "EVEN_N": "constexpr", "EVEN_R": "constexpr", "ZPRE": "constexpr",
           "FLAT": "constexpr"}
    const = {"G": G, "BN": BN, "KR": KR, "MP": MP, "UNPACK": UNPACK, "SPLIT": SPLIT, "HAS_BIAS": False,
             "DOT_F32": False, "EVEN_K": EVEN, "EVEN_N": EVEN, "EVEN_R": EVEN, "ZPRE": ZPRE, "FLAT": FLAT}
    src = ASTSource(dec._decode_kernel, sig, const, _attrs(dec._decode_kernel, sig, DECODE_INTS))
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})


def compile_prefill(dtype="fp16", J=4, G=64, BN=128, BM=128, KR=16, warps=8, stages=2, UNPACK=1, PPI=4, ACC16=True):
    sig = {"x_ptr": f"*{dtype}", "s_ptr": "*u8", "u_ptr": "*fp16", "v_ptr": "*fp16", "b_ptr": f"*{dtype}",
           "y_ptr": f"*{dtype}", "M": "i32", "N": "i32", "K": "i32", "RANK": "i32", "KB": "i32",
           "stride_xm": "i32", "stride_ym": "i32",
           "J": "constexpr", "G": "constexpr", "BN": "constexpr", "BM": "constexpr", "KR": "constexpr",
           "GROUP_N": "constexpr", "HAS_BIAS": "constexpr", "DOT_F32": "constexpr",
           "EVEN_K": "constexpr", "EVEN_N": "constexpr", "EVEN_M": "constexpr", "EVEN_R": "constexpr",
           "UNPACK": "constexpr", "PPI": "constexpr", "ACC16": "constexpr"}
    const = {"J": J, "G": G, "BN": BN, "BM": BM, "KR": KR, "GROUP_N": 8, "HAS_BIAS": False, "DOT_F32": False,
             "EVEN_K": True, "EVEN_N": True, "EVEN_M": True, "EVEN_R": True, "UNPACK": UNPACK, "PPI": PPI, "ACC16": ACC16}
    src = ASTSource(pre._prefill_kernel, sig, const, _attrs(pre._prefill_kernel, sig, PREFILL_INTS))
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", default="")
    ap.add_argument("--which", default="decode,prefill")
    args = ap.parse_args()
    jobs = []
    if "decode" in args.which:
        for u in (0, 1, 2):
            jobs.append((f"decode fp16 u{u}", lambda u=u: compile_decode(UNPACK=u)))
        jobs.append(("decode bf16 u2", lambda: compile_decode(dtype="bf16", UNPACK=2)))
        jobs.append(("decode fp16 u2 MP=4", lambda: compile_decode(MP=4)))
    if "prefill" in args.which:
        jobs.append(("prefill fp16 J4", lambda: compile_prefill()))
    for name, fn in jobs:
        try:
            k = fn()
        except Exception as exc:
            print(name, "FAILED", repr(exc)[:2000])
            continue
        print(name, stats(k))
        if args.dump:
            d = Path(args.dump)
            d.mkdir(parents=True, exist_ok=True)
            tag = name.replace(" ", "_")
            for ext in ("ttgir", "ptx"):
                (d / f"{tag}.{ext}").write_text(k.asm[ext])


if __name__ == "__main__":
    main()
