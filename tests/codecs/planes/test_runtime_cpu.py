"""The planes layer on the CPU: the dispatch of :func:`bitstack.codecs.planes.runtime.cpu_path`, the
native paths through ``BitStackLinear.forward``, and the fallback (native kernel disabled) giving the
pure-PyTorch reference's outputs."""

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from tiny_models import planes_layer

from bitstack.codecs.planes import runtime
from bitstack.kernels.dispatch import DEFAULT_TABLE, DispatchTable
from bitstack.native.build import NativeBuildError, find_compiler
from bitstack.native.planes import native_isa
from bitstack.runtime.linear import LUT_MAX_TOKENS, BitStackLinear

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _layer(out_features=40, in_features=200, group_size=32, blocks=4) -> BitStackLinear:
    return planes_layer(out_features, in_features, group_size, blocks, seed=5)


def _relative_error(got, want):
    return float((got.float() - want.float()).norm() / want.float().norm())


def test_cpu_path_follows_the_table():
    table = DispatchTable(native_max_tokens=4, lut_max_tokens=8)
    assert runtime.cpu_path(4, 16, 32, True, True, table) == "native_lut"
    assert runtime.cpu_path(5, 16, 32, True, True, table) == "native_dense"
    assert runtime.cpu_path(4, 0, 32, True, True, table) == "native_dense"  # the module's cap: always rebuild
    assert runtime.cpu_path(1, 16, 6, True, False, table) == "native_dense"  # a group the kernel cannot take
    assert runtime.cpu_path(8, 16, 32, False, True, table) == "lut"
    assert runtime.cpu_path(9, 16, 32, False, True, table) is None
    assert runtime.cpu_path(1, 16, 32, False, False, table) is None
    assert runtime.cpu_path(DEFAULT_TABLE.native_max_tokens, LUT_MAX_TOKENS, 32, True, True) == "native_lut"  # the module default caps nothing


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fallback_gives_the_references_outputs(monkeypatch, dtype):
    """BITSTACK_NATIVE=0: the PyTorch lookup tables for few tokens, the PyTorch rebuild for more,
    each equal to the reference product (Ŵ rebuilt, F.linear)."""
    monkeypatch.setenv("BITSTACK_NATIVE", "0")
    layer = _layer().to(dtype)
    paths = []
    real = runtime.cpu_path
    with mock.patch.object(runtime, "cpu_path", lambda *a, **k: paths.append(real(*a, **k)) or paths[-1]), \
            torch.no_grad():
        for tokens in (1, 3, DEFAULT_TABLE.lut_max_tokens, 40):
            x = torch.randn(2, tokens, 200).to(dtype)
            want = F.linear(x.float(), layer.dense_weight(torch.float32), layer.bias.float())
            got = layer(x)
            assert got.dtype == dtype and got.shape == (2, tokens, 40)
            assert _relative_error(got, want) < TOLERANCE[dtype], tokens
    assert paths == ["lut", "lut", None, None]  # 2 × 16 = 32 rows > 16: rebuild


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_paths_match_the_fallback(monkeypatch, dtype):
    """The native kernel (few tokens) and the native rebuild (more) against the same layer with
    the native kernel disabled."""
    try:
        find_compiler()
    except NativeBuildError:
        pytest.skip("no C++ compiler: the native kernels cannot be built here")
    assert native_isa() is not None, "a C++ compiler is present but the native kernels did not build"
    layer = _layer(out_features=37, in_features=300, group_size=64, blocks=5).to(dtype)
    gen = torch.Generator().manual_seed(2)
    for tokens in (1, 7, DEFAULT_TABLE.native_max_tokens, DEFAULT_TABLE.native_max_tokens + 1, 70):
        x = (torch.randn(tokens, 300, generator=gen)).to(dtype)
        with torch.no_grad():
            monkeypatch.setenv("BITSTACK_NATIVE", "1")
            assert runtime.cpu_path(tokens, layer.lut_max_tokens, 64, True, True) == (
                "native_lut" if tokens <= DEFAULT_TABLE.native_max_tokens else "native_dense")
            calls = []
            spies = {name: (lambda real, name: lambda *a, **k: calls.append(name) or real(*a, **k))(
                getattr(runtime, name), name) for name in ("planes_lut_linear", "planes_dense")}
            with mock.patch.multiple(runtime, **spies):
                native = layer(x)
            assert calls == ["planes_lut_linear" if tokens <= DEFAULT_TABLE.native_max_tokens else "planes_dense"]
            monkeypatch.setenv("BITSTACK_NATIVE", "0")
            fallback = layer(x)
        if tokens > DEFAULT_TABLE.native_max_tokens:  # both rebuild Ŵ bit for bit, then one F.linear
            assert torch.equal(native, fallback), tokens
        else:
            assert _relative_error(native, fallback) < TOLERANCE[dtype], tokens
