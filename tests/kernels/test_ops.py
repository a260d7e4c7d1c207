"""The kernels' custom operators (``bitstack::planes_linear``, ``bitstack::avd_linear``).

``torch.library.opcheck`` checks each operator's schema, fake implementation and registration
(real outputs against the fake ones, under ``torch.compile``'s ahead-of-time dispatch too); the
operators' outputs are compared with the pure-PyTorch references; a small module calling them
compiles with ``fullgraph=True`` and matches eager mode.  On the CPU the operators run the
reference (``TRITON_INTERPRET=0``) or the Triton kernels in the interpreter (``TRITON_INTERPRET=1``,
the root conftest's default); both are exercised.
"""

from __future__ import annotations

import pytest
import torch

from bitstack.core.packing import pack_signs
from bitstack.kernels import bitstack_linear_reference, pack_planes, planes_linear_reference, repack
from bitstack.kernels import ops
from bitstack.kernels._checks import interpret_mode

REL_TOL = {torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


def _planes(N, K, J, group, seed):
    g = torch.Generator().manual_seed(seed)
    G = (K + group - 1) // group
    signs = [pack_signs(torch.rand(N, K, generator=g) > 0.5) for _ in range(J)]
    offset = (torch.randn(N, G, generator=g) * 0.05).half()
    step = (torch.rand(N, G, generator=g) * 0.05 + 0.005).half()
    return pack_planes(signs, offset, step, group, in_features=K)


def _avd(N, K, k, J, group, seed):
    g = torch.Generator().manual_seed(seed)
    blocks = [(pack_signs(torch.rand(N, K, generator=g) > 0.5), (torch.randn(N, k, generator=g) * 0.3).half(),
               (torch.randn(k, K, generator=g) * 0.3).half()) for _ in range(J)]
    return repack(blocks, group=group)


def _planes_args(packed, x, bias):
    return (x, packed.signs, packed.offset, packed.step, bias, packed.in_features, packed.group_size)


def _avd_args(packed, x, bias):
    return (x, packed.signs, packed.u, packed.v, bias, packed.in_features, packed.group)


def _rel_err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.fixture(params=["reference", "interpreter"])
def path(request, monkeypatch):
    """The operators' CPU implementation: the pure-PyTorch reference or the Triton interpreter."""
    if request.param == "reference":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    elif not interpret_mode():
        pytest.skip("the interpreter path needs TRITON_INTERPRET=1 (the root conftest's default)")
    else:
        pytest.importorskip("triton")
    return request.param


# (N, K, group, J, tokens, dtype, bias): odd widths, 1, 2 and several tokens (one-token, few-token
# and prefill paths of the interpreter), both dtypes
PLANES_CASES = [
    (24, 96, 32, 3, (1,), torch.float16, True),
    (17, 80, 16, 2, (2, 3), torch.bfloat16, False),
    (9, 64, 8, 4, (1, 1), torch.float16, True),
    (20, 72, 8, 2, (20,), torch.float16, False),
]


@pytest.mark.parametrize("N,K,group,J,lead,dtype,bias", PLANES_CASES)
def test_planes_op_matches_reference_and_passes_opcheck(path, N, K, group, J, lead, dtype, bias):
    packed = _planes(N, K, J, group, seed=N)
    g = torch.Generator().manual_seed(J)
    x = torch.randn(*lead, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g) if bias else None
    y = torch.ops.bitstack.planes_linear(*_planes_args(packed, x, b))
    assert y.shape == (*lead, N) and y.dtype == dtype
    assert _rel_err(y, planes_linear_reference(x, packed, b)) < REL_TOL[dtype]
    torch.library.opcheck(torch.ops.bitstack.planes_linear.default, _planes_args(packed, x, b))


AVD_CASES = [
    (24, 100, 4, 2, (1,), torch.float16, True),
    (17, 64, 3, 3, (2, 2), torch.bfloat16, False),
    (12, 72, 2, 2, (40,), torch.float16, True),
]


@pytest.mark.parametrize("N,K,k,J,lead,dtype,bias", AVD_CASES)
def test_avd_op_matches_reference_and_passes_opcheck(path, N, K, k, J, lead, dtype, bias):
    packed = _avd(N, K, k, J, group=16, seed=N)
    g = torch.Generator().manual_seed(J)
    x = torch.randn(*lead, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g) if bias else None
    y = torch.ops.bitstack.avd_linear(*_avd_args(packed, x, b))
    assert y.shape == (*lead, N) and y.dtype == dtype
    assert _rel_err(y, bitstack_linear_reference(x, packed, b)) < REL_TOL[dtype]
    torch.library.opcheck(torch.ops.bitstack.avd_linear.default, _avd_args(packed, x, b))


def test_fake_implementations_give_shape_and_dtype_only():
    from torch._subclasses.fake_tensor import FakeTensorMode

    planes, avd = _planes(10, 48, 2, 16, seed=1), _avd(10, 48, 2, 2, group=16, seed=1)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(3, 5, 48, dtype=torch.bfloat16)
        for y in (torch.ops.bitstack.planes_linear(*_planes_args(planes, x, None)),
                  torch.ops.bitstack.avd_linear(*_avd_args(avd, x, None))):
            assert y.shape == (3, 5, 10) and y.dtype == torch.bfloat16


def test_ops_reject_a_wrong_width():
    packed = _planes(8, 32, 1, 16, seed=0)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        torch.ops.bitstack.planes_linear(*_planes_args(packed, torch.zeros(1, 31, dtype=torch.float16), None))


class _TwoLinears(torch.nn.Module):
    """x → planes op → SiLU → avd op, the call pattern of a BitStack MLP."""

    def __init__(self, planes, avd):
        super().__init__()
        self.planes, self.avd = planes, avd

    def forward(self, x):
        h = torch.nn.functional.silu(ops.planes_linear_call(x, self.planes, None))
        return ops.avd_linear_call(h, self.avd, None)


@pytest.mark.parametrize("tokens", [1, 3])
def test_compile_fullgraph_through_the_ops(path, tokens):
    torch._dynamo.reset()
    model = _TwoLinears(_planes(40, 64, 3, 16, seed=2), _avd(24, 40, 2, 2, group=16, seed=3))
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(4)).half()
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), eager)
    model.planes = _planes(40, 64, 4, 16, seed=5)  # new tensors, another block count: recompiled
    assert torch.equal(compiled(x), model(x))


def test_splitk_workspace_is_one_per_width_and_grows():
    pytest.importorskip("triton")
    from bitstack.kernels._splitk import reserve_workspace, splitk_workspace

    device = torch.device("cpu")
    ws, cnt = reserve_workspace(device, 37, 4)
    assert ws.numel() == 4 * 37 and cnt.numel() == 37 and not ws.any() and not cnt.any()
    assert splitk_workspace(device, 3, 37, 16)[0] is ws  # fewer tokens, any row tile: the same buffers
    bigger, _ = splitk_workspace(device, 9, 37, 2)
    assert bigger.numel() >= 9 * 37 and splitk_workspace(device, 1, 37, 64)[0] is bigger
    assert reserve_workspace(device, 37, 2)[0] is bigger
