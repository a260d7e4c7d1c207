"""On the CPU, a planes layer computes few tokens with the lookup-table product, many by rebuilding Ŵ;
both give the rebuilt weight's product."""

from unittest import mock

import torch
import torch.nn.functional as F
from tiny_models import planes_layer

from bitstack.codecs.planes import lut as planes_lut
from bitstack.kernels.dispatch import DEFAULT_TABLE
from bitstack.runtime.linear import BitStackLinear


def _planes_layer(out_features=24, in_features=100, group_size=16, blocks=3) -> BitStackLinear:
    return planes_layer(out_features, in_features, group_size, blocks, seed=3)


def test_few_tokens_take_the_lookup_tables_many_the_rebuild(monkeypatch):
    monkeypatch.setenv("BITSTACK_NATIVE", "0")  # the PyTorch lookup tables (tests/native: the native kernel)
    layer = _planes_layer()
    calls = []
    real = planes_lut.planes_linear_lut

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    with mock.patch("bitstack.codecs.planes.runtime.planes_linear_lut", spy), torch.no_grad():
        for tokens in (1, DEFAULT_TABLE.lut_max_tokens, DEFAULT_TABLE.lut_max_tokens + 1):
            x = torch.randn(1, tokens, 100)
            want = F.linear(x, layer.dense_weight(), layer.bias)
            got = layer(x)
            assert float((got - want).abs().max() / want.abs().max()) < 2e-6
        layer.lut_max_tokens = 0  # the rebuild path for every call (what benchmarks/cpu_decode.py compares)
        layer(torch.randn(1, 1, 100))
    assert calls == [(1, 1, 100), (1, DEFAULT_TABLE.lut_max_tokens, 100)]


def test_gradients_take_the_rebuild():
    layer = _planes_layer()
    x = torch.randn(2, 100, requires_grad=True)
    with mock.patch("bitstack.codecs.planes.runtime.planes_linear_lut", side_effect=AssertionError("lut with grad")):
        layer(x).sum().backward()
    assert x.grad is not None
