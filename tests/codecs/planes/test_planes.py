import pytest
import torch
from conftest import sqnr_db

from bitstack.core.packing import unpack_signs
from bitstack.codecs.planes.decompose import plane_decompose
from bitstack.codecs.planes.grid import expand_groups, num_groups, plane_block_contribution, plane_grid, planes_reconstruct

SHAPES = [(1, 1), (3, 7), (16, 16), (17, 33), (40, 130), (8, 257)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", [1, 4, 16, 128])
def test_grid_covers_each_group(shape, group):
    w = torch.randn(*shape)
    offset, step = plane_grid(w, group)
    assert offset.dtype == step.dtype == torch.float16
    assert offset.shape == step.shape == (shape[0], num_groups(shape[1], group))
    lo, hi = expand_groups(offset - 2 * step, shape[1], group), expand_groups(offset + 2 * step, shape[1], group)
    slack = 1e-2 * w.abs().max()  # the float16 rounding of the grid
    assert bool(((w >= lo - slack) & (w <= hi + slack)).all())
    assert bool((step > 0).all())


@pytest.mark.parametrize("shape", SHAPES)
def test_every_prefix_is_round_to_nearest_on_a_halving_grid(shape):
    """Nearest signs: after j blocks each weight is within half a bin (step·2^(1-j)) of the grid's reach."""
    w = torch.randn(*shape) * 0.02
    group = 8
    d = plane_decompose(w, 6, group)
    assert len(d.blocks) == 6 and len(d.residual_sq) == 7
    step = expand_groups(d.step, shape[1], group)
    for j in range(1, 7):
        approx = planes_reconstruct(d.blocks[:j], d.offset, d.step, group)
        # grid values inside [lo, hi] are bin centres: at most half a bin from any covered point
        err = (w - approx).abs()
        assert bool((err <= step * 2.0 ** (1 - j) + 1e-3 * w.abs().max()).all())
        assert d.residual_sq[j] == pytest.approx(float((w - approx).square().sum()), rel=1e-5, abs=1e-12)


def test_error_halves_per_block_and_sqnr():
    w = torch.randn(64, 256)
    d = plane_decompose(w, 8, 32)
    energies = d.residual_sq
    for j in range(1, 8):
        assert energies[j + 1] < 0.35 * energies[j]  # ~ a quarter per bit for a uniform grid
    approx = planes_reconstruct(d.blocks, d.offset, d.step, 32)
    assert sqnr_db(w, approx) > 45  # 8 bits over groups of 32


def test_blocks_are_sign_only_and_one_bit_per_weight():
    w = torch.randn(10, 21)
    d = plane_decompose(w, 3, 4)
    for block in d.blocks:
        assert block.u.shape == (10, 0) and block.v.shape == (0, 21)
        assert block.nbytes == 10 * 3  # ceil(21 / 8) bytes per row, nothing else
        assert unpack_signs(block.signs, 21).shape == (10, 21)


def test_contributions_sum_to_the_reconstruction_bitwise():
    w = torch.randn(12, 40)
    d = plane_decompose(w, 5, 8)
    total = plane_block_contribution(d.blocks[0], 0, d.offset, d.step, 8)
    for i in range(1, 5):
        total = total + plane_block_contribution(d.blocks[i], i, d.offset, d.step, 8)
    assert torch.equal(total, planes_reconstruct(d.blocks, d.offset, d.step, 8))


def test_hessian_weights_the_energies_and_feedback_helps_the_first_block():
    torch.manual_seed(1)
    w = torch.randn(48, 64)
    x = torch.randn(512, 64) @ (torch.eye(64) + 0.3 * torch.randn(64, 64)) * torch.linspace(0.1, 3, 64)  # correlated
    h = x.T @ x
    nearest = plane_decompose(w, 3, 16, hessian=h)
    rtn_output = float(((w - planes_reconstruct(nearest.blocks[:1], nearest.offset, nearest.step, 16)) @ x.T).square().sum())
    assert nearest.residual_sq[1] == pytest.approx(rtn_output, rel=1e-3)
    fed = plane_decompose(w, 3, 16, hessian=h, feedback=True)
    assert torch.equal(fed.offset, nearest.offset) and torch.equal(fed.step, nearest.step)
    assert fed.residual_sq[1] < 0.9 * nearest.residual_sq[1]  # GPTQ-style feedback on the coarsest grid


def _correlated_hessian(columns: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(columns) + 0.3 * torch.randn(columns, columns, generator=g)
    x = torch.randn(1024, columns, generator=g) @ mix * torch.linspace(0.1, 3, columns)
    return x.T @ x


@pytest.mark.parametrize("shape", [(48, 64), (17, 40), (5, 130)])
def test_joint_signs_lower_the_output_error_of_every_weighted_prefix(shape):
    """One GPTQ state per prefix, one sign code for all: with correlated inputs every prefix that has
    weight loses less output than round-to-nearest; the stored blocks rebuild the scored model."""
    torch.manual_seed(4)
    w = torch.randn(*shape)
    h = _correlated_hessian(shape[1], 5)
    nearest = plane_decompose(w, 6, 16, hessian=h)
    joint = plane_decompose(w, 6, 16, hessian=h, level_weights=(0.05, 1, 1, 1, 0.3, 0.1))
    assert torch.equal(joint.offset, nearest.offset) and torch.equal(joint.step, nearest.step)
    for level in (2, 3, 4):
        assert joint.residual_sq[level] < 0.9 * nearest.residual_sq[level], level
    for level in range(1, 7):  # the energies are those of the stored blocks
        rebuilt = planes_reconstruct(joint.blocks[:level], joint.offset, joint.step, 16)
        assert joint.residual_sq[level] == pytest.approx(float(((w - rebuilt) @ h * (w - rebuilt)).sum()), rel=1e-4)


def test_blocks_after_the_joint_ones_round_the_original_weight():
    """Past len(level_weights) blocks, each block is the nearest half-bin of W from the prefix (no
    feedback state), so where the joint blocks left a weight in its own bin the stack converges to it."""
    torch.manual_seed(7)
    w = torch.randn(20, 48)
    h = _correlated_hessian(48, 8)
    d = plane_decompose(w, 7, 16, hessian=h, level_weights=(0.1, 1, 1))
    current = planes_reconstruct(d.blocks[:3], d.offset, d.step, 16)
    for level in range(3, 7):
        assert torch.equal(unpack_signs(d.blocks[level].signs, 48), w >= current)
        current = planes_reconstruct(d.blocks[:level + 1], d.offset, d.step, 16)
    assert d.residual_sq[7] < d.residual_sq[3]


def test_joint_signs_without_correlation_are_nearest_at_the_weighted_level():
    """A diagonal Hessian spreads no error, so weighting one prefix length alone picks that grid's
    nearest value: the same first blocks as round-to-nearest, bit for bit; the finer blocks, chosen
    by their own states, are nearest too."""
    torch.manual_seed(6)
    w = torch.randn(33, 70)
    h = torch.diag(torch.rand(70) + 0.5)
    nearest = plane_decompose(w, 5, 16, hessian=h)
    joint = plane_decompose(w, 5, 16, hessian=h, level_weights=(0, 0, 1))
    for a, b in zip(joint.blocks, nearest.blocks):
        assert torch.equal(a.signs, b.signs)


def test_bad_input():
    with pytest.raises(ValueError, match="float32"):
        plane_decompose(torch.randn(4, 4, dtype=torch.float64), 2, 2)
    with pytest.raises(ValueError, match="feedback"):
        plane_decompose(torch.randn(4, 4), 2, 2, feedback=True)
    with pytest.raises(ValueError, match="hessian"):
        plane_decompose(torch.randn(4, 4), 2, 2, hessian=torch.eye(3))
    with pytest.raises(ValueError, match="hessian"):
        plane_decompose(torch.randn(4, 4), 2, 2, level_weights=(1.0,))
    for weights in ((), (0.0, 0.0), (1.0, -1.0), (float("inf"),)):
        with pytest.raises(ValueError, match="level_weights"):
            plane_decompose(torch.randn(4, 4), 2, 2, hessian=torch.eye(4), level_weights=weights)
    with pytest.raises(ValueError, match="no weight to the first 1 blocks"):
        plane_decompose(torch.randn(4, 4), 1, 2, hessian=torch.eye(4), level_weights=(0.0, 1.0))
    with pytest.raises(ValueError, match="one of"):
        plane_decompose(torch.randn(4, 4), 2, 2, hessian=torch.eye(4), feedback=True, level_weights=(1.0,))
    with pytest.raises(ValueError, match="NaN"):
        plane_decompose(torch.full((2, 2), float("nan")), 1, 2)


def test_scale_power_search():
    from bitstack.codecs.planes.decompose import nearest_energies, search_scale_power

    torch.manual_seed(2)
    w = torch.randn(64, 128)
    powers = (0.0, 0.5, 1.0)
    # isotropic inputs: every exponent gives the same grid, the first one wins the tie
    assert search_scale_power([w], [torch.eye(128) * 100], torch.ones(128), powers, 32) == 0.0
    # a few loud input channels: scaling them up buys them precision, and the search finds it
    loud = torch.ones(128)
    loud[::16] = 30.0
    x = torch.randn(2048, 128) * loud
    h = x.T @ x
    s = x.norm(dim=0) / x.norm(dim=0).mean()
    best = search_scale_power([w], [h], s, powers, 32)
    assert best > 0
    errors = {p: sum(nearest_energies(w * s ** p, 32, 4, h / s[:, None] ** p / s[None, :] ** p)[1:]) for p in powers}
    assert errors[best] == min(errors.values())


def test_clipping_search_trades_outliers_for_finer_bins():
    torch.manual_seed(3)
    w = torch.randn(32, 256)
    w[:, ::37] *= 8  # a few outliers per group stretch the ranges
    importance = torch.rand(256) + 0.5
    full = plane_grid(w, 64)
    assert torch.equal(torch.stack(full), torch.stack(plane_grid(w, 64, ratios=(1.0,), importance=importance)))
    clipped = plane_grid(w, 64, ratios=(1.0, 0.9, 0.8, 0.7), importance=importance)
    assert torch.equal(clipped[0], full[0])  # same centres
    assert bool((clipped[1] <= full[1]).all()) and bool((clipped[1] < full[1]).any())

    def weighted_error(grid, level):  # nearest signs on the given grid
        q = expand_groups(grid[0], 256, 64)
        base = expand_groups(grid[1], 256, 64)
        for i in range(level):
            m = base * 0.5 ** i
            q = q + torch.where(w >= q, m, -m)
        return float(((w - q).square() * importance).sum())

    for level in (2, 3):
        assert weighted_error(clipped, level) < weighted_error(full, level)
