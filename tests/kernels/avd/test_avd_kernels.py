"""Triton kernels vs their PyTorch references, in Triton's CPU interpreter (TRITON_INTERPRET=1).

The interpreter cannot run inline PTX, so it checks the plain-Triton sign unpacking (UNPACK=0);
the PTX variants are checked against the same reference on the GPU by
benchmarks/kernels/bench_kernels.py before anything is timed.  The interpreter rounds to bf16 by
truncation and cannot multiply bf16 (the kernels upcast the bf16-rounded operands there), hence the
looser bf16 bound.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from bitstack.core.packing import pack_signs  # noqa: E402
from bitstack.kernels import (  # noqa: E402
    bitstack_linear,
    bitstack_linear_decode,
    bitstack_linear_decode_reference,
    bitstack_linear_prefill,
    bitstack_linear_prefill_reference,
    decode_max_tokens,
    repack,
)
from bitstack.kernels._checks import interpret_mode  # noqa: E402

if not interpret_mode():  # conftest sets TRITON_INTERPRET=1 unless the caller chose otherwise
    pytest.skip("kernel tests run in Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)

REL_TOL = {torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


def _packed(N, K, k, J, group, seed):
    g = torch.Generator().manual_seed(seed)
    blocks = [(pack_signs(torch.rand(N, K, generator=g) > 0.5),
               (torch.randn(N, k, generator=g) * 0.3).half(),
               (torch.randn(k, K, generator=g) * 0.3).half()) for _ in range(J)]
    return repack(blocks, group=group)


def _check(kernel, reference, N, K, k, J, M, dtype, group=16, bias=True, seed=0, lead=None):
    packed = _packed(N, K, k, J, group, seed)
    g = torch.Generator().manual_seed(seed + 1)
    shape = (M, K) if lead is None else (*lead, K)
    x = torch.randn(*shape, generator=g).to(dtype)
    b = torch.randn(N, generator=g) if bias else None
    y = kernel(x, packed, b)
    ref = reference(x, packed, b)
    assert y.shape == ref.shape == (*shape[:-1], N) and y.dtype == dtype
    assert torch.isfinite(y).all()
    err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
    assert err < REL_TOL[dtype], f"relative error {err:.2e}"


# (N, K, k, J, M, dtype, group): odd sizes, tail groups, k in {1, 4, 16}, J = 1..4, batch 1/3/16
DECODE_CASES = [
    (37, 70, 4, 1, 1, torch.float16, 16),
    (37, 300, 16, 3, 1, torch.bfloat16, 16),
    (20, 1030, 1, 2, 1, torch.float16, 16),
    (50, 129, 4, 4, 3, torch.float16, 16),
    (13, 45, 16, 2, 3, torch.bfloat16, 16),
    (33, 77, 1, 1, 16, torch.float16, 16),
    (70, 200, 4, 2, 16, torch.bfloat16, 32),
    (9, 600, 16, 1, 1, torch.float16, 64),
    (40, 256, 16, 2, 1, torch.float16, 16),  # K % 8G == 0: the flat loop
    (40, 256, 4, 3, 3, torch.bfloat16, 16),
]

PREFILL_CASES = [
    (37, 70, 4, 1, 1, torch.float16, 16),
    (37, 300, 16, 3, 3, torch.bfloat16, 16),
    (20, 1030, 1, 2, 16, torch.float16, 16),
    (50, 129, 4, 4, 40, torch.float16, 16),
    (13, 45, 16, 2, 3, torch.bfloat16, 16),
    (70, 200, 4, 2, 16, torch.bfloat16, 32),
]


@pytest.mark.parametrize("N,K,k,J,M,dtype,group", DECODE_CASES)
def test_decode_matches_reference(N, K, k, J, M, dtype, group):
    _check(bitstack_linear_decode, bitstack_linear_decode_reference, N, K, k, J, M, dtype, group)


@pytest.mark.parametrize("N,K,k,J,M,dtype,group", PREFILL_CASES)
def test_prefill_matches_reference(N, K, k, J, M, dtype, group):
    _check(bitstack_linear_prefill, bitstack_linear_prefill_reference, N, K, k, J, M, dtype, group)


@pytest.mark.parametrize("N,K,k,J,M,dtype,group", [PREFILL_CASES[1], PREFILL_CASES[3]])
def test_prefill_chunked_matches_reference(N, K, k, J, M, dtype, group):
    from bitstack.kernels.avd.rebuild import bitstack_linear_prefill as chunked_prefill

    def chunked(x, packed, bias):  # a chunk of 64 rows: several chunks per weight
        return chunked_prefill(x, packed, bias, chunk_bytes=2 * K * 64)

    _check(chunked, bitstack_linear_prefill_reference, N, K, k, J, M, dtype, group)


@pytest.mark.parametrize("K,wide", [(300, False), (256, True), (256, False)])
def test_rebuild_rows_matches_dense_weight(K, wide):
    from bitstack.kernels.avd.rebuild import rebuild_rows
    from bitstack.kernels.avd.reference import dense_weight

    packed = _packed(70, K, 4, 3, 16, seed=5)
    out = torch.full((40, K), float("nan"), dtype=torch.float16)
    rebuild_rows(packed, 20, 33, out, block_n=16, wide=wide)
    ref = dense_weight(packed)[20:53]
    assert torch.isnan(out[33:]).all()  # rows past the request untouched
    err = ((out[:33].float() - ref).norm() / ref.norm()).item()
    assert err < 2e-3


def test_rebuild_weight_api():
    from bitstack.kernels import rebuild_weight
    from bitstack.kernels.avd.reference import dense_weight

    packed = _packed(33, 77, 4, 2, 16, seed=6)
    w = rebuild_weight(packed, torch.float16)
    ref = dense_weight(packed)
    assert w.shape == (33, 77) and w.dtype == torch.float16
    assert ((w.float() - ref).norm() / ref.norm()).item() < 2e-3


def test_decode_split_k_and_no_bias():
    from bitstack.kernels.avd.decode import DecodeConfig, decode_launch
    from bitstack.kernels.avd.reference import bitstack_linear_reference

    packed = _packed(40, 700, 4, 2, 16, seed=3)
    x = torch.randn(2, 700).half()
    ref = bitstack_linear_reference(x, packed)
    for splits in (1, 2, 6):  # 6 groups of 128 columns; every split count gives the same result
        for _ in range(2):  # the workspace and counters must be clean again after each call
            y = decode_launch(x, packed, None, DecodeConfig(block_n=16, splits=splits, zpre=splits != 2))
            err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            assert err < REL_TOL[torch.float16], (splits, err)


def test_decode_returns_the_compiled_kernel_on_request():
    from bitstack.kernels.avd.decode import DecodeConfig, decode_launch

    packed = _packed(24, 128, 4, 2, 16, seed=8)
    x = torch.randn(1, 128).half()
    y, compiled = decode_launch(x, packed, None, DecodeConfig(splits=1), return_compiled=True)
    assert torch.equal(y, decode_launch(x, packed, None, DecodeConfig(splits=1)))
    assert compiled is None  # the interpreter compiles nothing; on a GPU: registers and assembly


def test_leading_dims_and_dispatch():
    _check(bitstack_linear, bitstack_linear_decode_reference, 21, 50, 16, 2, None, torch.float16, lead=(1, 1))
    _check(bitstack_linear, bitstack_linear_prefill_reference, 21, 50, 16, 2, None, torch.float16, lead=(2, 9))
    assert decode_max_tokens(16) < 18


@pytest.mark.parametrize("kernel", [bitstack_linear_decode, bitstack_linear_prefill, bitstack_linear])
def test_bad_arguments_raise(kernel):
    packed = _packed(8, 20, 2, 1, 16, seed=0)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        kernel(torch.randn(1, 20), packed)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 20\)"):
        kernel(torch.randn(1, 19).half(), packed)
    with pytest.raises(ValueError, match="bias"):
        kernel(torch.randn(1, 20).half(), packed, torch.zeros(9))
    with pytest.raises(ValueError, match="PackedBitStack"):
        kernel(torch.randn(1, 20).half(), "not packed")
    broken = type(packed)(packed.signs, packed.u.float(), packed.v, 8, 20, 2, 16)
    with pytest.raises(ValueError, match="float16"):
        kernel(torch.randn(1, 20).half(), broken)


def test_decode_rejects_too_many_tokens():
    packed = _packed(8, 20, 16, 1, 16, seed=0)
    with pytest.raises(ValueError, match="prefill"):
        bitstack_linear_decode(torch.randn(32, 20).half(), packed)
