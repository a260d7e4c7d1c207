import pytest
import torch

from bitstack.core.scaling import activation_scale, channel_norm_sum


def test_channel_norm_sum_matches_definition():
    x = torch.randn(3, 10, 5)
    sums, count = channel_norm_sum(x)
    expected = sum(x[i].norm(dim=0) for i in range(3))
    assert count == 3 and torch.allclose(sums, expected)


def test_online_accumulation_equals_one_shot():
    x = torch.randn(6, 8, 4)
    a, n = channel_norm_sum(x)
    b1, n1 = channel_norm_sum(x[:2])
    b2, n2 = channel_norm_sum(x[2:])
    assert torch.allclose(activation_scale(a, n), activation_scale(b1 + b2, n1 + n2))


def test_scale_is_mean_one_and_floored():
    s = activation_scale(torch.tensor([0.0, 1.0, 2.0, 5.0]), 1, floor=1e-3)
    assert s.min() > 0
    assert float(s[1:].sum() / 4 + s[0] * 0) == pytest.approx(1.0, rel=1e-2)


def test_nan_statistics_raise():
    with pytest.raises(ValueError, match="NaN"):
        activation_scale(torch.tensor([float("nan"), 1.0]), 1)
