"""The build-at-first-use loader: the cache (concurrent first builds, no rebuild after), the
fallback with one warning line when nothing can be built, and the AVX2 and scalar back-ends."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitstack.native.build import build_library

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=900)


def test_concurrent_first_builds_then_the_cache(tmp_path):
    code = f"from bitstack.native.build import build_library; print(build_library({str(tmp_path)!r})[0])"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")}) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    path, built = build_library(tmp_path)
    assert not built and str(path) in paths
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary build directory left
    mtime = path.stat().st_mtime_ns
    assert build_library(tmp_path) == (path, False) and path.stat().st_mtime_ns == mtime


def test_no_compiler_falls_back_with_one_warning_line(tmp_path):
    code = """
import json, torch
from bitstack.codecs.planes.lut import planes_linear_lut
from bitstack.native.planes import planes_lut_linear, planes_dense, native_isa
signs = torch.randint(0, 256, (3, 10, 13), dtype=torch.uint8)
offset, step = torch.randn(10, 4).half(), torch.rand(10, 4).half()
x = torch.randn(2, 100)
same = [torch.equal(planes_lut_linear(x, signs, offset, step, 32), planes_linear_lut(x, list(signs), offset, step, 32))
        for _ in range(3)]
planes_dense(signs, offset, step, 100, 32)
print(json.dumps({"isa": native_isa(), "same": same}))
"""
    run = _python(code, CXX=str(tmp_path / "no-such-compiler"), BITSTACK_NATIVE_CACHE=str(tmp_path / "cache"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"isa": None, "same": [True, True, True]}
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "native CPU kernels unavailable" in lines[0], run.stderr


def _cpu_has(flag: str) -> bool:
    try:
        return any(flag in line.split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("flags"))
    except OSError:
        return False


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_other_backends_match_the_reference(isa):
    if isa == "avx2" and not (_cpu_has("avx2") and _cpu_has("fma")):
        pytest.skip("this CPU has no AVX2")
    code = f"""
import torch
from bitstack.native.build import load_library
from bitstack.native.planes import planes_lut_linear_reference
from bitstack.codecs.planes.grid import planes_reconstruct, sign_only_blocks
assert load_library(isa={isa!r}) == {isa!r}
worst = 0.0
for n, k, g, j, t in [(37, 200, 64, 3, 1), (9, 100, 8, 5, 7), (33, 576, 128, 16, 16), (17, 1100, 32, 2, 3)]:
    signs = torch.randint(0, 256, (j, n, (k + 7) // 8), dtype=torch.uint8)
    offset, step = torch.randn(n, -(-k // g)).half(), (torch.rand(n, -(-k // g)) * 0.1).half()
    for dtype in (torch.float32, torch.bfloat16):
        x, bias = torch.randn(t, k).to(dtype), torch.randn(n)
        got = torch.ops.bitstack.planes_lut_linear(x, list(signs), offset, step, g, bias)
        want = planes_lut_linear_reference(x, signs, offset, step, g, bias)
        err = float((got.float() - want.float()).norm() / want.float().norm())
        worst = max(worst, err / (1e-5 if dtype == torch.float32 else 1e-2))
    dense = torch.ops.bitstack.planes_dense(list(signs), offset, step, k, g, torch.float32)
    assert torch.equal(dense, planes_reconstruct(list(sign_only_blocks(list(signs), k)), offset, step, g))
from bitstack.codecs.planes.signs import _code_table, joint_block_reference
for r, c, j in [(40, 33, 6), (7, 128, 3)]:
    w, centre, step = torch.randn(r, j, c), torch.randn(r, c), torch.rand(r, c) + 0.1
    u = torch.linalg.cholesky(torch.eye(c) * c + torch.ones(c, c), upper=True)[None]
    args = (w, centre, step, u, torch.zeros(r, dtype=torch.long), torch.rand(j) * 16, _code_table(j, torch.device("cpu"))[1])
    got, want = torch.ops.bitstack.joint_signs_block(*args), joint_block_reference(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
print(worst)
"""
    run = _python(code)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip()) < 1.0
