"""The lookup-table product of a planes weight equals rebuilding Ŵ and multiplying."""

import pytest
import torch
import torch.nn.functional as F

from bitstack.codecs.planes.decompose import plane_decompose
from bitstack.codecs.planes.grid import planes_reconstruct
from bitstack.codecs.planes.lut import planes_linear_lut, supports_lut


@pytest.mark.parametrize("out_features,in_features,group_size,blocks", [
    (7, 20, 8, 1),      # K not a multiple of 8 nor of the group
    (13, 100, 16, 3),
    (33, 576, 128, 4),  # SmolLM2's width, the default group
    (17, 1000, 64, 5),  # a short last group
    (5, 9, 8, 2),       # one column past a byte
])
@pytest.mark.parametrize("tokens", [1, 5])
def test_matches_rebuild_then_linear(out_features, in_features, group_size, blocks, tokens):
    gen = torch.Generator().manual_seed(out_features * 1000 + in_features)
    weight = torch.randn(out_features, in_features, generator=gen)
    dec = plane_decompose(weight, blocks, group_size)
    x = torch.randn(2, tokens, in_features, generator=gen)
    bias = torch.randn(out_features, generator=gen)
    for j in range(1, blocks + 1):
        want = F.linear(x, planes_reconstruct(dec.blocks[:j], dec.offset, dec.step, group_size), bias)
        got = planes_linear_lut(x, [b.signs for b in dec.blocks[:j]], dec.offset, dec.step, group_size, bias)
        assert got.shape == want.shape and got.dtype == x.dtype
        assert float((got - want).abs().max() / want.abs().max()) < 2e-6


def test_bfloat16_input_keeps_its_dtype():
    weight = torch.randn(24, 64)
    dec = plane_decompose(weight, 3, 32)
    x = torch.randn(1, 64).to(torch.bfloat16)
    want = F.linear(x.float(), planes_reconstruct(dec.blocks, dec.offset, dec.step, 32))
    got = planes_linear_lut(x, [b.signs for b in dec.blocks], dec.offset, dec.step, 32)
    assert got.dtype == torch.bfloat16
    assert float((got.float() - want).abs().max() / want.abs().max()) < 1e-2  # bf16 rounding of the result


def test_bad_input_raises():
    dec = plane_decompose(torch.randn(4, 16), 2, 8)
    signs = [b.signs for b in dec.blocks]
    x = torch.randn(1, 16)
    assert not supports_lut(16, 12) and supports_lut(16, 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        planes_linear_lut(x, signs, dec.offset, dec.step, 12)
    with pytest.raises(ValueError, match="at least one block"):
        planes_linear_lut(x, [], dec.offset, dec.step, 8)
    with pytest.raises(ValueError, match="do not fit"):
        planes_linear_lut(torch.randn(1, 24), signs, dec.offset, dec.step, 8)
