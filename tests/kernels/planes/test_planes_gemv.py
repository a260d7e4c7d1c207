"""The one-token planes kernel (``planes_gemv``) against the float32 PyTorch reference.

Runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``, the root conftest's default) or on CUDA
(``TRITON_INTERPRET=0``).  Tolerance: relative output error per dtype, as in
``test_planes_kernels.py`` (both sides compute in float32 and round once to x's dtype).
"""

from __future__ import annotations

import pytest
import torch

from bitstack.kernels import PackedPlanes, planes_linear_reference
from test_planes_kernels import DEVICE, REL_TOL, _packed, _rel_err, needs_kernels

# (N, K, group, J, dtype, config): K a multiple of a program's columns (unmasked loads) or not
# (70 words, 1000 and 77 columns: masks, and K % 8 != 0 reads the signs byte by byte), N odd or
# not a multiple of the rows per step, J = 1..8 (4-bit codes up to 4 blocks, 8-bit above),
# one or several K splits, one or several row programs, prefetch on and off
CASES = [
    (64, 1024, 128, 3, torch.float16, dict(num_warps=1, rows=2)),
    (70, 1000, 64, 4, torch.bfloat16, dict(num_warps=1, rows=4)),
    (33, 2048, 32, 6, torch.float16, dict(num_warps=2, rows=2, prefetch=False)),
    (40, 4096, 128, 1, torch.float16, dict(num_warps=2, rows=8, programs_per_sm=1)),
    (9, 77, 32, 8, torch.float16, dict(num_warps=1, rows=1)),
    (36, 1024, 256, 2, torch.bfloat16, dict(num_warps=1, rows=4, programs_per_sm=16)),
    (13, 2240, 64, 5, torch.float16, dict(num_warps=2, rows=2)),
    (24, 512, 32, 7, torch.float16, None),
]


@needs_kernels
@pytest.mark.parametrize("N,K,group,J,dtype,cfg", CASES)
def test_gemv_matches_reference(N, K, group, J, dtype, cfg):
    from bitstack.kernels.planes.gemv import PlanesGemvConfig, planes_gemv

    packed = _packed(N, K, J, group, seed=J, device=DEVICE)
    g = torch.Generator().manual_seed(J + 1)
    x = torch.randn(1, K, generator=g).to(dtype).to(DEVICE)
    bias = torch.randn(N, generator=g).to(DEVICE)
    config = PlanesGemvConfig(**cfg) if cfg else None
    for b in (None, bias, bias):  # twice the same: the split-K workspace and counters are clean again
        ref = planes_linear_reference(x, packed, b)
        y = planes_gemv(x, packed, b, config)
        assert y.shape == (1, N) and y.dtype == dtype
        assert torch.isfinite(y).all()
        assert _rel_err(y, ref) < REL_TOL[dtype]


@needs_kernels
def test_gemv_writes_into_out_and_keeps_leading_dims():
    from bitstack.kernels.planes.gemv import planes_gemv

    packed = _packed(30, 256, 3, 64, seed=2, device=DEVICE)
    x = torch.randn(1, 1, 256, generator=torch.Generator().manual_seed(3)).half().to(DEVICE)
    out = torch.full((2, 30), float("nan"), dtype=torch.float16, device=DEVICE)
    y = planes_gemv(x, packed, out=out[1])
    assert y.shape == (1, 1, 30) and y.data_ptr() == out[1].data_ptr()
    assert torch.isnan(out[0]).all()
    assert _rel_err(out[1], planes_linear_reference(x, packed).reshape(30)) < REL_TOL[torch.float16]
    with pytest.raises(ValueError, match="out must be"):
        planes_gemv(x, packed, out=torch.empty(29, dtype=torch.float16, device=DEVICE))


@needs_kernels
def test_gemv_refuses_what_it_does_not_cover():
    from bitstack.kernels.planes.gemv import PlanesGemvConfig, planes_gemv, planes_gemv_supported

    packed = _packed(8, 64, 2, 32, device=DEVICE)
    x = torch.randn(1, 64).half().to(DEVICE)
    assert planes_gemv_supported(1, packed) and not planes_gemv_supported(2, packed)
    with pytest.raises(ValueError, match="1 token"):
        planes_gemv(torch.randn(2, 64).half().to(DEVICE), packed)
    narrow = _packed(8, 64, 2, 16, device=DEVICE)
    assert not planes_gemv_supported(1, narrow)
    with pytest.raises(ValueError, match="group_size >= 32"):
        planes_gemv(x, narrow)
    nine = PackedPlanes(packed.signs[:1].expand(9, -1, -1).contiguous(), packed.offset, packed.step, 8, 64, 32)
    assert not planes_gemv_supported(1, nine)
    with pytest.raises(ValueError, match="1..8 blocks"):
        planes_gemv(x, nine)
    with pytest.raises(ValueError, match="powers of two"):
        planes_gemv(x, packed, config=PlanesGemvConfig(rows=3))
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        planes_gemv(x.float(), packed)


def test_gemv_config_rule():
    """No idle threads where a program's words divide a row's; short rows get few warps."""
    from bitstack.kernels.planes.gemv import PlanesGemvConfig, gemv_config

    assert gemv_config(4096) == PlanesGemvConfig(num_warps=4, rows=2, programs_per_sm=4, prefetch=True)
    assert gemv_config(14336).num_warps == 2 and gemv_config(14336).programs_per_sm == 8
    assert gemv_config(576).num_warps == 1 and gemv_config(1536).num_warps == 2
    assert gemv_config(11008).num_warps == 1
    assert gemv_config(4096, PlanesGemvConfig(num_warps=1, rows=4)) == PlanesGemvConfig(1, 4, 16, True)
