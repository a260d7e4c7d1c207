"""Batched joint signs (codecs/planes/signs.py joint_signs_batched, decompose.py joint_signs_for):
identical to the one-weight choice, and PlanesCodec.decompose_many equals decompose one by one."""

import pytest
import torch

from bitstack.codecs import get_codec
from bitstack.codecs.planes.decompose import joint_signs_for, plane_decompose
from bitstack.codecs.planes.grid import CLIP_RATIOS
from bitstack.config import CompressConfig


def _hessian(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, n, generator=g) @ (torch.randn(n, n, generator=g) * 0.2 + torch.eye(n))
    return x.T @ x


@pytest.mark.parametrize("act_order", [True, False])
def test_batched_joint_signs_are_plane_decompose_s(act_order):
    """Weights of the same width (one loop) and of another width: the same signs and blocks."""
    g = torch.Generator().manual_seed(0)
    weights = {"q": torch.randn(24, 40, generator=g), "k": torch.randn(8, 40, generator=g) * 3,
               "o": torch.randn(40, 40, generator=g), "down": torch.randn(40, 72, generator=g)}
    hessians = {"q": _hessian(40, 1), "k": _hessian(40, 1), "o": _hessian(40, 2), "down": _hessian(72, 3)}
    lw = (0.05, 5.0, 1.0, 1.0)
    joint = joint_signs_for(weights, hessians, 6, 16, lw, act_order=act_order, clip_ratios=CLIP_RATIOS)
    for name, w in weights.items():
        kwargs = dict(hessian=hessians[name], level_weights=lw, act_order=act_order, clip_ratios=CLIP_RATIOS)
        ref = plane_decompose(w, 6, 16, **kwargs)
        fast = plane_decompose(w, 6, 16, joint=joint[name], **kwargs)
        assert joint[name].shape == (4, w.shape[0], w.shape[1])
        assert all(torch.equal(a.signs, b.signs) for a, b in zip(ref.blocks, fast.blocks))
        assert ref.residual_sq == fast.residual_sq


def test_batched_joint_signs_respect_niter():
    w = {"a": torch.randn(8, 32)}
    joint = joint_signs_for(w, {"a": _hessian(32, 0)}, 2, 16, (0.05, 5.0, 1.0, 1.0))
    assert joint["a"].shape == (2, 8, 32)


def test_joint_signs_of_the_wrong_shape_are_refused():
    w = torch.randn(8, 32)
    with pytest.raises(ValueError, match="do not fit"):
        plane_decompose(w, 6, 16, hessian=_hessian(32, 0), level_weights=(0.05, 5.0, 1.0),
                        joint=torch.zeros(2, 8, 32, dtype=torch.bool))


@pytest.mark.parametrize("codec,overrides", [("planes", {"signs": "joint"}), ("planes", {"signs": "nearest"}),
                                             ("avd", {"rank": 4})])
def test_decompose_many_is_decompose_one_by_one(codec, overrides):
    """A linear with too few calibration tokens per input (w: 72 columns) rounds to nearest in both."""
    settings = CompressConfig(codec=codec, group_size=16, **overrides).codec_settings()
    g = torch.Generator().manual_seed(1)
    weights = {"q": torch.randn(24, 40, generator=g), "k": torch.randn(8, 40, generator=g), "w": torch.randn(16, 72, generator=g)}
    hessians = {"q": _hessian(40, 1), "k": _hessian(40, 2), "w": _hessian(72, 3)}
    seeds = {"q": 3, "k": 4, "w": 5}
    many = get_codec(codec).decompose_many(weights, settings, niter=5, hessians=hessians, calib_tokens=100, seeds=seeds)
    for name, w in weights.items():
        one = get_codec(codec).decompose(w, settings, niter=5, hessian=hessians[name], calib_tokens=100, seed=seeds[name])
        assert one.params == many[name].params and one.residual_sq == many[name].residual_sq
        assert all(torch.equal(a, b) for x, y in zip(one.blocks, many[name].blocks) for a, b in zip(x.tensors, y.tensors))
        assert all(torch.equal(one.base[k], many[name].base[k]) for k in one.base)


@pytest.mark.parametrize("levels", [1, 2, 4, 6, 8])
def test_the_code_tree_scores_as_the_full_table(levels):
    """signs._best_codes on a CPU sums each code's terms over the code tree: the argmin of the
    full (J, R, 2^J) table of terms added in level order, code for code (ties included: a zero
    step).  The other devices' torch.sum of the table picks a code of the same cost within a
    rounding."""
    from bitstack.codecs.planes.signs import _best_codes, _code_table, _node_coefficients, _table_codes

    g = torch.Generator().manual_seed(levels)
    rows = 300
    w = torch.randn(rows, levels, generator=g)
    centre, step = torch.randn(rows, 1, generator=g) * 0.1, torch.rand(rows, 1, generator=g)
    step[:5] = 0.0
    lam = torch.rand(levels, generator=g) * torch.tensor([4.0 ** (j + 1) for j in range(levels)])
    _, coefficient = _code_table(levels, torch.device("cpu"))
    values = centre[None] + step[None] * coefficient[:, None, :]  # (J, R, 2^J)
    terms = lam[:, None, None] * (w.T[:, :, None] - values).square()
    in_order = terms[0]
    for term in terms[1:]:
        in_order = in_order + term
    tree = _best_codes(w, centre, step, coefficient, _node_coefficients(coefficient), lam)
    assert torch.equal(tree, in_order.argmin(1))
    assert (tree[:5] == 0).all()
    table = _table_codes(w, centre, step, coefficient, lam)
    chosen = in_order.gather(1, table[:, None])[:, 0]
    assert torch.allclose(chosen, in_order.min(1).values, rtol=1e-6, atol=0)
