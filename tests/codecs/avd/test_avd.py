import pytest
import torch
from conftest import sqnr_db

from bitstack.codecs import get_codec
from bitstack.codecs.avd.decompose import avd_decompose, reconstruct
from bitstack.codecs.base import WeightShape


@pytest.mark.parametrize("shape", [(32, 48), (50, 21), (7, 9)])
def test_blocks_rebuild_the_tracked_residual_exactly(shape):
    w = torch.randn(*shape)
    dec = avd_decompose(w, niter=5, rank=min(4, *shape))
    for j in range(1, 6):
        approx = reconstruct(dec.blocks[:j])
        # the residual energy is measured on the stored (float16) factors
        assert float((w - approx).square().sum()) == pytest.approx(dec.residual_sq[j], rel=1e-4)


def test_error_falls_with_every_block_and_sqnr_floor():
    torch.manual_seed(0)
    w = torch.randn(64, 96) * 0.02
    dec = avd_decompose(w, niter=16, rank=16)
    assert all(a > b for a, b in zip(dec.residual_sq, dec.residual_sq[1:]))
    assert sqnr_db(w, reconstruct(dec.blocks[:4])) > 10
    assert sqnr_db(w, reconstruct(dec.blocks)) > 35


def test_block_layout_and_size():
    dec = avd_decompose(torch.randn(10, 13), niter=2, rank=3)
    block = dec.blocks[0]
    assert block.signs.dtype == torch.uint8 and block.signs.shape == (10, 2)
    assert block.u.dtype == torch.float16 and block.u.shape == (10, 3)
    assert block.v.dtype == torch.float16 and block.v.shape == (3, 13)
    assert block.nbytes == get_codec("avd").block_nbytes(WeightShape(10, 13, {"rank": 3})) == 10 * 2 + 2 * 3 * 23


def test_zero_residual_sign_is_plus_one():
    w = torch.zeros(4, 4)
    w[0, 0] = 1.0
    block = avd_decompose(w, niter=1, rank=1).blocks[0]
    assert int(block.signs[1, 0]) == 0b1111  # zeros -> +1 bits


def test_deterministic_given_seed():
    w = torch.randn(40, 60)
    a = avd_decompose(w, niter=3, rank=4, seed=7)
    b = avd_decompose(w, niter=3, rank=4, seed=7)
    assert all(torch.equal(x.u, y.u) and torch.equal(x.signs, y.signs) for x, y in zip(a.blocks, b.blocks))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="float32"):
        avd_decompose(torch.randn(4, 4).half(), niter=1, rank=1)
    with pytest.raises(ValueError, match="NaN"):
        avd_decompose(torch.full((4, 4), float("nan")), niter=1, rank=1)
