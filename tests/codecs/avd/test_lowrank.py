import pytest
import torch

from bitstack.codecs.avd.lowrank import truncated_svd


def _optimal_error(a, k):
    s = torch.linalg.svdvals(a.double())
    return float(s[k:].square().sum().sqrt())


@pytest.mark.parametrize("shape", [(96, 64), (64, 200), (300, 120)])
def test_truncated_svd_close_to_full_svd_on_abs_residuals(shape):
    # |R| of a weight-like matrix: non-negative with one dominant singular value, like AVD's input.
    torch.manual_seed(1)
    w = torch.randn(*shape) * torch.rand(1, shape[1]) * 2
    a = w.abs()
    k = 8
    u, s, vh = truncated_svd(a, k, oversample=8, power_iters=4, generator=torch.Generator().manual_seed(0))
    err = float((a - u @ torch.diag(s) @ vh).double().norm())
    assert err <= 1.01 * _optimal_error(a, k)  # within 1 % of the optimum
    assert u.shape == (shape[0], k) and s.shape == (k,) and vh.shape == (k, shape[1])


def test_exact_when_width_covers_matrix():
    a = torch.rand(10, 6)
    u, s, vh = truncated_svd(a, 3, oversample=8)
    assert torch.allclose(s, torch.linalg.svdvals(a)[:3], rtol=1e-5)


def test_seeded_is_deterministic():
    a = torch.rand(80, 70)
    r1 = truncated_svd(a, 4, generator=torch.Generator().manual_seed(3))
    r2 = truncated_svd(a, 4, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(r1, r2))


def test_bad_rank_raises():
    with pytest.raises(ValueError, match="rank"):
        truncated_svd(torch.rand(4, 5), 5)
