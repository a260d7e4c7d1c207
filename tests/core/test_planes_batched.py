import pytest
import torch

from bitstack.core.planes import CLIP_RATIOS, plane_decompose
from bitstack.core.planes_batched import joint_signs_for


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
        fast = plane_decompose(w, 6, 16, joint_signs=joint[name], **kwargs)
        assert joint[name].shape == (4, w.shape[0], w.shape[1])
        assert all(torch.equal(a.signs, b.signs) for a, b in zip(ref.blocks, fast.blocks))
        assert ref.residual_sq == fast.residual_sq


def test_batched_joint_signs_respect_niter():
    w = {"a": torch.randn(8, 32)}
    joint = joint_signs_for(w, {"a": _hessian(32, 0)}, 2, 16, (0.05, 5.0, 1.0, 1.0))
    assert joint["a"].shape == (2, 8, 32)
