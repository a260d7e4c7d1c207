"""The codec-``planes`` kernels against their float32 PyTorch reference, and their layout.

The Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, the default of the
root conftest), or on CUDA when the interpreter is off (``TRITON_INTERPRET=0 python -m pytest
tests/kernels/test_planes_kernels.py`` on a GPU machine).  The layout and reference tests need
no Triton.  Tolerances are relative errors of the output (‖y - ref‖ / ‖ref‖): both compute in
float32 and round once to x's dtype, so they differ by that rounding (the interpreter rounds to
bf16 by truncation, hence the looser bf16 bound) and, for the prefill, by Ŵ's rounding to x's
dtype before cuBLAS.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bitstack.codecs.base import Block
from bitstack.core.packing import pack_signs
from bitstack.codecs.planes.grid import planes_reconstruct
from bitstack.kernels import (
    PackedPlanes,
    pack_planes,
    planes_group_supported,
    planes_linear,
    planes_linear_decode,
    planes_linear_naive,
    planes_linear_prefill,
    planes_linear_reference,
    planes_nbytes,
    planes_rebuild_weight,
)
from bitstack.kernels._checks import interpret_mode


def _kernel_device() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    if interpret_mode():
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


DEVICE = _kernel_device()
needs_kernels = pytest.mark.skipif(DEVICE is None, reason="needs Triton with CUDA, or TRITON_INTERPRET=1")
REL_TOL = {torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


def _signs(N, K, J, g):
    return [pack_signs(torch.rand(N, K, generator=g) > 0.5) for _ in range(J)]


def _packed(N, K, J, group, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    G = (K + group - 1) // group
    offset = (torch.randn(N, G, generator=g) * 0.05).half()
    step = (torch.rand(N, G, generator=g) * 0.05 + 0.005).half()
    return pack_planes([s.to(device) for s in _signs(N, K, J, g)], offset.to(device), step.to(device), group,
                       in_features=K)


def _rel_err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def _check(kernel, N, K, J, group, M, dtype, bias=True, seed=0, lead=None):
    packed = _packed(N, K, J, group, seed, DEVICE)
    g = torch.Generator().manual_seed(seed + 1)
    shape = (M, K) if lead is None else (*lead, K)
    x = torch.randn(*shape, generator=g).to(dtype).to(DEVICE)
    b = torch.randn(N, generator=g).to(DEVICE) if bias else None
    y = kernel(x, packed, b)
    ref = planes_linear_reference(x, packed, b)
    assert y.shape == ref.shape == (*shape[:-1], N) and y.dtype == dtype and y.device == x.device
    assert torch.isfinite(y).all()
    err = _rel_err(y, ref)
    assert err < REL_TOL[dtype], f"relative error {err:.2e}"


# (N, K, group, J, tokens, dtype): K not a multiple of 8 (70, 577) or of the group (300, 1030),
# N odd, groups of 16 to 128, J = 1..4, 1 and 3 tokens
DECODE_CASES = [
    (37, 70, 16, 1, 1, torch.float16),
    (33, 300, 128, 3, 1, torch.bfloat16),
    (20, 1030, 64, 2, 3, torch.float16),
    (51, 577, 32, 4, 1, torch.float16),
    (9, 256, 128, 2, 3, torch.bfloat16),
    (64, 512, 32, 3, 1, torch.float16),  # every tile full: the unmasked loads
]


@needs_kernels
@pytest.mark.parametrize("N,K,group,J,M,dtype", DECODE_CASES)
def test_decode_matches_reference(N, K, group, J, M, dtype):
    _check(planes_linear_decode, N, K, J, group, M, dtype)


@needs_kernels
@pytest.mark.parametrize("N,K,group,J,M,dtype", [
    (37, 70, 16, 2, 17, torch.float16),
    (33, 300, 128, 4, 17, torch.bfloat16),
    (50, 1030, 64, 1, 3, torch.float16),
])
def test_prefill_matches_reference(N, K, group, J, M, dtype):
    _check(planes_linear_prefill, N, K, J, group, M, dtype)


@needs_kernels
def test_prefill_in_several_chunks():
    from bitstack.kernels.planes.rebuild import planes_linear_prefill as chunked

    def small_chunks(x, packed, bias):  # 32 rows per chunk: several chunks per weight
        return chunked(x, packed, bias, chunk_bytes=2 * packed.in_features * 32)

    _check(small_chunks, 77, 130, 3, 32, 9, torch.float16)


@needs_kernels
def test_decode_split_k_and_configs():
    """Every split count and tile shape gives the same result; the split-K workspace is clean
    again after each call (two calls per setting)."""
    from bitstack.kernels.planes.decode import PlanesDecodeConfig, planes_decode_launch

    packed = _packed(40, 1000, 3, 64, seed=3, device=DEVICE)
    x = torch.randn(2, 1000, generator=torch.Generator().manual_seed(4)).half().to(DEVICE)
    ref = planes_linear_reference(x, packed)
    for cfg in (dict(splits=1), dict(splits=2), dict(splits=8), dict(block_n=16, block_k=64),
                dict(block_n=32, block_k=512)):
        for _ in range(2):
            y = planes_decode_launch(x, packed, None, PlanesDecodeConfig(**cfg))
            assert _rel_err(y, ref) < REL_TOL[torch.float16], cfg


@needs_kernels
@pytest.mark.parametrize("K,group", [(300, 16), (256, 128)])
def test_rebuild_rows_matches_the_reference_weight(K, group):
    from bitstack.kernels.planes.rebuild import rebuild_planes_rows
    from bitstack.kernels.planes.reference import planes_dense_weight

    packed = _packed(70, K, 3, group, seed=5, device=DEVICE)
    out = torch.full((40, K), float("nan"), dtype=torch.float16, device=DEVICE)
    rebuild_planes_rows(packed, 20, 33, out, block_n=16)
    ref = planes_dense_weight(packed)[20:53]
    assert torch.isnan(out[33:]).all()  # rows past the request untouched
    assert torch.allclose(out[:33].float(), ref, rtol=1e-3, atol=1e-4)
    w = planes_rebuild_weight(packed, torch.float32)  # float32: the same sums as the reference
    assert torch.allclose(w, planes_dense_weight(packed), rtol=1e-6, atol=1e-6)


@needs_kernels
def test_dispatch_leading_dims_and_no_tokens():
    _check(planes_linear, 21, 50, 2, 16, None, torch.float16, lead=(1, 1))  # decode kernel
    _check(planes_linear, 21, 50, 2, 16, None, torch.float16, lead=(3, 6))  # 18 tokens: prefill
    packed = _packed(21, 50, 2, 16, device=DEVICE)
    y = planes_linear(torch.zeros(0, 50, dtype=torch.float16, device=DEVICE), packed)
    assert y.shape == (0, 21) and y.dtype == torch.float16


@needs_kernels
@pytest.mark.parametrize("kernel", [planes_linear_decode, planes_linear_prefill, planes_linear])
def test_bad_arguments_raise(kernel):
    packed = _packed(8, 20, 2, 16, device=DEVICE)
    x = torch.randn(1, 20).half().to(DEVICE)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        kernel(x.float(), packed)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 20\)"):
        kernel(torch.randn(1, 19).half().to(DEVICE), packed)
    with pytest.raises(ValueError, match="bias"):
        kernel(x, packed, torch.zeros(9, device=DEVICE))
    with pytest.raises(ValueError, match="PackedPlanes"):
        kernel(x, "not packed")
    broken = PackedPlanes(packed.signs, packed.offset.float(), packed.step, 8, 20, 16)
    with pytest.raises(ValueError, match="offset must be torch.float16"):
        kernel(x, broken)
    odd_group = PackedPlanes(packed.signs, packed.offset[:, :1].contiguous(), packed.step[:, :1].contiguous(), 8, 20, 24)
    with pytest.raises(ValueError, match="power-of-two group_size"):
        kernel(x, odd_group)
    many = PackedPlanes(packed.signs[:1].expand(17, -1, -1).contiguous(), packed.offset, packed.step, 8, 20, 16)
    with pytest.raises(ValueError, match="at most 16 blocks"):
        kernel(x, many)


@needs_kernels
def test_launchers_return_the_compiled_kernel_on_request():
    """``return_compiled=True`` gives (result, Triton's compiled kernel) with the same result
    (None for the kernel in the interpreter; registers and assembly on a GPU)."""
    from bitstack.kernels.planes.batch import planes_batch
    from bitstack.kernels.planes.decode import PlanesDecodeConfig, planes_decode_launch
    from bitstack.kernels.planes.gemv import planes_gemv
    from bitstack.kernels.planes.rebuild import rebuild_planes_rows

    packed = _packed(24, 256, 2, 64, seed=11, device=DEVICE)
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(12)).half().to(DEVICE)
    out = torch.empty(24, 256, dtype=torch.float16, device=DEVICE)
    calls = [lambda **kw: planes_gemv(x, packed, **kw), lambda **kw: planes_batch(x, packed, **kw),
             lambda **kw: planes_decode_launch(x, packed, None, PlanesDecodeConfig(splits=1), **kw),
             lambda **kw: rebuild_planes_rows(packed, 0, 24, out, **kw)]
    for call in calls:
        plain = call().clone()
        y, compiled = call(return_compiled=True)
        assert torch.equal(y, plain)
        assert (compiled is None) if interpret_mode() else hasattr(compiled, "n_regs")


@needs_kernels
def test_decode_rejects_too_many_tokens():
    from bitstack.kernels.planes.decode import DECODE_MAX_M, PlanesDecodeConfig, planes_decode_launch
    from bitstack.kernels.dispatch import BATCH_MAX_TOKENS

    packed = _packed(8, 20, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="prefill"):
        planes_linear_decode(torch.randn(BATCH_MAX_TOKENS + 1, 20).half().to(DEVICE), packed)
    with pytest.raises(ValueError, match="prefill"):
        planes_decode_launch(torch.randn(DECODE_MAX_M + 1, 20).half().to(DEVICE), packed, None, PlanesDecodeConfig())


# ---- layout and reference (pure PyTorch) -------------------------------------------------------
def test_pack_planes_round_trip_and_bytes():
    g = torch.Generator().manual_seed(7)
    N, K, J, group = 13, 77, 3, 32
    signs = _signs(N, K, J, g)
    copies = [s.clone() for s in signs]
    offset = torch.randn(N, 3, generator=g).half()
    step = torch.rand(N, 3, generator=g).half()
    packed = pack_planes(signs, offset, step, group, in_features=K)
    assert packed.signs.shape == (J, N, 10) and packed.signs.dtype == torch.uint8 and packed.signs.is_contiguous()
    assert packed.nbytes == planes_nbytes(N, K, J) == J * N * ((K + 7) // 8) == sum(s.numel() for s in signs)
    for i in range(J):
        assert torch.equal(packed.signs[i], copies[i])  # the stored layout, bit for bit
        assert packed.signs[i].data_ptr() != signs[i].data_ptr()  # a fresh tensor; the inputs are untouched
        assert torch.equal(signs[i], copies[i])
    assert packed.offset is offset and packed.step is step  # the grids are referenced, not copied
    assert (packed.out_features, packed.in_features, packed.group_size, packed.num_blocks) == (N, K, group, J)
    assert planes_nbytes(N, K, 0) == 0
    # in_features defaults to the signs' width when that gives the grids' group count
    assert pack_planes(signs, offset, step, group).in_features == 80
    with pytest.raises(ValueError, match="in_features"):
        pack_planes(signs, offset, step, group, in_features=70)
    with pytest.raises(ValueError, match="at least one block"):
        pack_planes([], offset, step, group)
    with pytest.raises(ValueError, match="block 1"):
        pack_planes([signs[0], signs[1][:, :5]], offset, step, group, in_features=K)
    with pytest.raises(ValueError, match="positive int"):
        planes_nbytes(0, K, 1)


def test_group_sizes_the_kernels_take():
    assert [gs for gs in range(1, 300) if planes_group_supported(gs)] == [8, 16, 32, 64, 128, 256]


def test_reference_is_planes_reconstruct():
    """The reference's Ŵ is codecs.planes.grid's reconstruction of the same sign blocks, and its output
    that of F.linear in float32; the naive baseline rounds Ŵ to x's dtype first."""
    g = torch.Generator().manual_seed(9)
    N, K, group = 11, 45, 16
    packed = _packed(N, K, 3, group, seed=9)
    empty_u, empty_v = torch.zeros(N, 0).half(), torch.zeros(0, K).half()
    blocks = [Block(signs=packed.signs[i].clone(), u=empty_u, v=empty_v) for i in range(3)]
    w = planes_reconstruct(blocks, packed.offset, packed.step, group)
    x = torch.randn(2, 4, K, generator=g).half()
    b = torch.randn(N, generator=g)
    expected = (x.float() @ w.t() + b).half()
    assert torch.equal(planes_linear_reference(x, packed, b), expected)
    naive = planes_linear_naive(x, packed, b)
    assert naive.dtype == torch.float16 and _rel_err(naive, expected) < 3e-3
