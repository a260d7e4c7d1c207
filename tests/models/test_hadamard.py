import math

import pytest
import torch

from bitstack.errors import UnsupportedModelError
from bitstack.models.hadamard import hadamard_factor, hadamard_matrix, hadamard_orders, random_signs, rotate, rotation_matrix


@pytest.mark.parametrize("order", [1, 2, 4, 8, 12, 20, 24, 32, 44, 48, 128])
def test_factors_are_hadamard(order):
    a = hadamard_factor(order)
    assert set(a.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(a @ a.T, order * torch.eye(order, dtype=torch.float64))


@pytest.mark.parametrize("n", [576, 1536, 960, 64, 48, 96, 12, 2048])
def test_orders_of_decoder_widths(n):
    orders = hadamard_orders(n)
    assert math.prod(orders) == n
    assert all(o <= 64 for o in orders if o & (o - 1) == 0)  # powers of two split into cheap factors
    assert orders == tuple(sorted(o for o in orders if o & (o - 1))) + tuple(o for o in orders if o & (o - 1) == 0)
    h = hadamard_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_no_hadamard_is_an_error():
    with pytest.raises(UnsupportedModelError, match="no Hadamard matrix of order 36"):
        hadamard_orders(36)  # 36 exists, but not by the constructions here
    with pytest.raises(ValueError):
        hadamard_factor(16 + 2)


@pytest.mark.parametrize("n", [12, 48, 96, 576])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_rotate_matches_dense_matrix(n, dtype, tol):
    signs = random_signs(n, torch.Generator().manual_seed(n))
    q = rotation_matrix(signs)
    x = torch.randn(3, 5, n, dtype=torch.float64)
    for transpose, matrix in ((False, q), (True, q.T)):
        out = rotate(x.to(dtype), signs, transpose=transpose)
        assert out.dtype == dtype and out.shape == x.shape
        ref = x @ matrix
        assert float((out.double() - ref).norm() / ref.norm()) < tol
    back = rotate(rotate(x, signs), signs, transpose=True)
    assert torch.allclose(back, x, atol=1e-12)


def test_rotate_checks_signs_shape():
    with pytest.raises(ValueError, match="shape"):
        rotate(torch.randn(2, 12), torch.ones(8, dtype=torch.int8))


def test_random_signs_are_seeded_int8():
    a = random_signs(100, torch.Generator().manual_seed(1))
    b = random_signs(100, torch.Generator().manual_seed(1))
    assert a.dtype == torch.int8 and torch.equal(a, b) and set(a.tolist()) == {-1, 1}
