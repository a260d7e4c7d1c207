"""The native joint-sign block (``bitstack::joint_signs_block``) against its pure-PyTorch
reference (codecs/planes/signs.py ``joint_block_reference``): equal bit for bit on odd shapes,
1 … 8 levels, several weights per call; and whole joint-sign searches through either."""

import pytest
import torch

from bitstack.codecs.planes.signs import _code_table, inverse_hessian_factor, joint_block_reference, joint_signs_batched
from bitstack.native.build import NativeBuildError, find_compiler
from bitstack.native.planes import native_isa
from bitstack.native.signs import joint_signs_block


@pytest.fixture(scope="module", autouse=True)
def _native():
    try:
        find_compiler()
    except NativeBuildError:
        pytest.skip("no C++ compiler: the native kernels cannot be built here")
    if native_isa() is None:
        pytest.fail("a C++ compiler is present but the native kernels did not build")


def _block(rows, owners, columns, levels, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, levels, columns, generator=gen)
    centre = torch.randn(rows, columns, generator=gen) * 0.1
    step = torch.rand(rows, columns, generator=gen) + 0.05
    step[0, 0] = 0.0  # a dead group: every code ties, the lowest wins
    u = torch.linalg.cholesky(torch.eye(columns) * columns + (lambda a: a @ a.T)(torch.randn(columns, columns, generator=gen)),
                              upper=True)[None].repeat(owners, 1, 1) * (1 + torch.arange(owners))[:, None, None]
    owner = torch.randint(0, owners, (rows,), generator=gen)
    lam = torch.rand(levels, generator=gen) * torch.tensor([4.0 ** (j + 1) for j in range(levels)])
    return w, centre, step, u, owner, lam, _code_table(levels, torch.device("cpu"))[1]


@pytest.mark.parametrize("rows,owners,columns,levels", [(1, 1, 1, 1), (5, 2, 7, 2), (33, 3, 40, 4), (70, 1, 128, 6),
                                                        (17, 4, 19, 8), (200, 6, 64, 6)])
def test_native_block_is_the_reference_bit_for_bit(rows, owners, columns, levels):
    args = _block(rows, owners, columns, levels, seed=rows + columns)
    before = args[0].clone()
    errors, best = joint_signs_block(*args, native=True)
    want_errors, want_best = joint_block_reference(*args)
    assert torch.equal(best, want_best) and torch.equal(errors, want_errors)
    assert torch.equal(args[0], before)  # the states are read, not changed
    assert best.dtype == torch.int64 and int(best[0, 0]) == 0  # the tie of a zero step goes to code 0


def test_native_block_takes_strided_states():
    w, *rest = _block(9, 2, 24, 3, seed=5)
    wide = torch.randn(9, 3, 50)
    wide[:, :, 10:34] = w
    got = joint_signs_block(wide[:, :, 10:34], *rest, native=True)
    want = joint_block_reference(w, *rest)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_native_block_refuses_bad_shapes():
    w, centre, step, u, owner, lam, coefficient = _block(4, 1, 8, 3, seed=0)
    with pytest.raises(RuntimeError, match="centre and step"):
        joint_signs_block(w, centre[:, :7], step, u, owner, lam, coefficient, native=True)
    with pytest.raises(RuntimeError, match="owner out of range"):
        joint_signs_block(w, centre, step, u, owner + 1, lam, coefficient, native=True)


def test_a_whole_search_is_the_same_natively_and_in_pytorch():
    gen = torch.Generator().manual_seed(3)
    n = 300  # three blocks of columns, the last one partial
    x = torch.randn(4 * n, n, generator=gen)
    factors = [inverse_hessian_factor(x.T @ x, 0.01), inverse_hessian_factor(x.T @ x + torch.eye(n), 0.01)]
    targets = [torch.randn(24, n, generator=gen), torch.randn(7, n, generator=gen)]
    centres = [t.mean(1, keepdim=True).expand_as(t).contiguous() for t in targets]
    steps = [t.abs().amax(1, keepdim=True).expand_as(t).contiguous() / 2 for t in targets]
    lw = (0.05, 5.0, 1.0, 1.0, 0.3, 0.1)
    native = joint_signs_batched(targets, centres, steps, factors, lw, block=joint_signs_block)
    pytorch = joint_signs_batched(targets, centres, steps, factors, lw)
    assert all(torch.equal(a, b) for a, b in zip(native, pytorch))


def test_other_devices_and_the_switch_use_the_reference(monkeypatch):
    args = _block(6, 2, 10, 3, seed=1)
    called = []
    monkeypatch.setattr("bitstack.native.signs.joint_block_reference", lambda *a: called.append(1) or joint_block_reference(*a))
    joint_signs_block(*args, native=False)
    monkeypatch.setenv("BITSTACK_NATIVE", "0")
    joint_signs_block(*args)
    assert called == [1, 1]
