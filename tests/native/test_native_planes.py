"""The native planes kernels against their pure-PyTorch references, on odd shapes, J = 1 … 16,
float32 and bfloat16, 1 … 16 tokens, with and without bias; the fallback path; torch.compile."""

import pytest
import torch
import torch.nn.functional as F

from bitstack.codecs.planes.grid import planes_reconstruct, sign_only_blocks
from bitstack.codecs.planes.lut import planes_linear_lut
from bitstack.native.build import NativeBuildError, find_compiler
from bitstack.native.planes import (native_isa, planes_dense, planes_lut_linear, planes_lut_linear_reference)

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _weight(out_features, in_features, group_size, planes, seed=0):
    """Random sign planes (padding bits random too: they must not matter) and float16 grids."""
    gen = torch.Generator().manual_seed(seed)
    groups = -(-in_features // group_size)
    signs = torch.randint(0, 256, (planes, out_features, -(-in_features // 8)), dtype=torch.uint8, generator=gen)
    offset = (torch.randn(out_features, groups, generator=gen) * 0.1).half()
    step = (torch.rand(out_features, groups, generator=gen) * 0.05 + 1e-3).half()
    return signs, offset, step


def _relative_error(got, want):
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))


@pytest.fixture(scope="module", autouse=True)
def _native():
    try:
        find_compiler()
    except NativeBuildError:
        pytest.skip("no C++ compiler: the native kernels cannot be built here (test_build covers the fallback)")
    if native_isa() is None:
        pytest.fail("a C++ compiler is present but the native kernels did not build")


@pytest.mark.parametrize("out_features,in_features,group_size", [
    (1, 8, 8), (5, 13, 8), (17, 100, 32), (37, 200, 64), (33, 576, 128), (100, 1000, 64), (16, 520, 128), (50, 96, 32),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lut_linear_matches_the_reference_on_odd_shapes(out_features, in_features, group_size, dtype):
    signs, offset, step = _weight(out_features, in_features, group_size, 3)
    gen = torch.Generator().manual_seed(1)
    bias = torch.randn(out_features, generator=gen).to(dtype)
    for tokens in (1, 2, 5, 16):
        x = torch.randn(tokens, in_features, generator=gen).to(dtype)
        for b in (None, bias):
            want = planes_lut_linear_reference(x, signs, offset, step, group_size, b)
            got = planes_lut_linear(x, signs, offset, step, group_size, b, native=True)
            assert got.dtype == dtype and got.shape == (tokens, out_features)
            assert _relative_error(got, want) < TOLERANCE[dtype], (tokens, b is not None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lut_linear_every_block_count(dtype):
    signs, offset, step = _weight(45, 300, 32, 16, seed=2)
    gen = torch.Generator().manual_seed(3)
    for planes in range(1, 17):
        for tokens in (1, 3, 7):
            x = torch.randn(2, tokens, 300, generator=gen).to(dtype)  # leading dims kept
            want = planes_lut_linear_reference(x, signs[:planes], offset, step, 32)
            got = planes_lut_linear(x, list(signs[:planes]), offset, step, 32, native=True)
            assert got.shape == (2, tokens, 45)
            assert _relative_error(got, want) < TOLERANCE[dtype], (planes, tokens)


def test_lut_linear_float16_and_wide_rows():
    signs, offset, step = _weight(70, 2100, 128, 4, seed=4)  # several 512-column chunks and a tail
    x = torch.randn(3, 2100)
    want = planes_lut_linear_reference(x, signs, offset, step, 128)
    assert _relative_error(planes_lut_linear(x, signs, offset, step, 128, native=True), want) < 1e-5
    got16 = planes_lut_linear(x.half(), signs, offset, step, 128, native=True)
    assert got16.dtype == torch.float16 and _relative_error(got16, want) < 2e-3


def test_lut_linear_without_native_is_todays_path():
    signs, offset, step = _weight(24, 100, 16, 3, seed=5)
    x = torch.randn(4, 100).to(torch.bfloat16)
    bias = torch.randn(24)
    got = planes_lut_linear(x, signs, offset, step, 16, bias, native=False)
    assert torch.equal(got, planes_linear_lut(x, list(signs), offset, step, 16, bias))
    want = planes_lut_linear_reference(x, signs, offset, step, 16, bias)
    assert _relative_error(got, want) < TOLERANCE[torch.bfloat16]


def test_env_disables_the_native_path(monkeypatch):
    monkeypatch.setenv("BITSTACK_NATIVE", "0")
    assert native_isa() is None
    signs, offset, step = _weight(8, 64, 32, 2)
    x = torch.randn(1, 64)
    assert torch.equal(planes_lut_linear(x, signs, offset, step, 32), planes_linear_lut(x, list(signs), offset, step, 32))


@pytest.mark.parametrize("out_features,in_features,group_size", [(5, 13, 8), (37, 200, 64), (33, 576, 128), (7, 100, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dense_is_planes_reconstruct_bit_for_bit(out_features, in_features, group_size, dtype):
    signs, offset, step = _weight(out_features, in_features, group_size, 5, seed=6)
    for planes in (1, 2, 5):
        blocks = list(sign_only_blocks(list(signs[:planes]), in_features))
        want = planes_reconstruct(blocks, offset, step, group_size, dtype)
        got = planes_dense(signs[:planes], offset, step, in_features, group_size, dtype, native=True)
        assert got.dtype == dtype and torch.equal(got, want)


def test_bad_arguments_name_the_problem():
    signs, offset, step = _weight(8, 64, 32, 2)
    with pytest.raises(RuntimeError, match="does not fit"):
        torch.ops.bitstack.planes_lut_linear(torch.randn(1, 72), list(signs), offset, step, 32, None)
    with pytest.raises(RuntimeError, match="multiple of 4"):
        torch.ops.bitstack.planes_lut_linear(torch.randn(1, 64), list(signs), offset, step, 30, None)
    with pytest.raises(NativeBuildError):
        from bitstack.native.build import compile_command

        compile_command("c++", "avx9000", None, None)


def test_opcheck():
    signs, offset, step = _weight(19, 100, 32, 3)
    x = torch.randn(2, 100)
    torch.library.opcheck(torch.ops.bitstack.planes_lut_linear.default, (x, list(signs), offset, step, 32, torch.randn(19)))
    torch.library.opcheck(torch.ops.bitstack.planes_dense.default, (list(signs), offset, step, 100, 32, torch.bfloat16))


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.signs, self.offset, self.step = _weight(24, 96, 32, 3)

    def forward(self, x):
        h = torch.ops.bitstack.planes_lut_linear(F.silu(x), list(self.signs), self.offset, self.step, 32, None)
        return h * 2 + 1


def test_torch_compile_traces_the_op():
    torch._dynamo.reset()
    module = _Tiny()
    x = torch.randn(3, 96)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), module(x))
    y = torch.randn(5, 96)  # another token count: a dynamic shape through the fake implementation
    assert torch.allclose(compiled(y), module(y))
