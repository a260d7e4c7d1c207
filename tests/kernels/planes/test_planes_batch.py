"""The few-token planes kernel (``planes_batch``) against the float32 PyTorch reference.

Runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``, the root conftest's default) or on CUDA
(``TRITON_INTERPRET=0``).  Tolerance: relative output error per dtype, as for the prefill in
``test_planes_kernels.py`` (Ŵ's tiles are rounded to x's dtype before the product).
"""

from __future__ import annotations

import pytest
import torch
from test_planes_kernels import DEVICE, REL_TOL, _packed, _rel_err, needs_kernels

from bitstack.kernels import planes_linear, planes_linear_reference

# (N, K, group, J, tokens, dtype, config): K not a multiple of 8 (77) or of the tile (1000, 300),
# N not a multiple of the row tile, J = 1..16, groups of 8 to 256, 1 to 16 tokens, one or
# several K splits
CASES = [
    (64, 256, 128, 3, 4, torch.float16, dict(block_n=32, block_k=64)),
    (70, 1000, 64, 4, 16, torch.bfloat16, dict(block_n=16, block_k=128, splits=3)),
    (33, 77, 16, 9, 5, torch.float16, dict(block_n=16, block_k=16)),
    (40, 512, 8, 1, 2, torch.float16, None),
    (20, 300, 256, 16, 1, torch.float16, dict(block_n=16, block_k=32, splits=2)),
]


@needs_kernels
@pytest.mark.parametrize("N,K,group,J,M,dtype,cfg", CASES)
def test_batch_matches_reference(N, K, group, J, M, dtype, cfg):
    from bitstack.kernels.planes.batch import PlanesBatchConfig, planes_batch

    packed = _packed(N, K, J, group, seed=J, device=DEVICE)
    g = torch.Generator().manual_seed(J + 2)
    x = torch.randn(M, K, generator=g).to(dtype).to(DEVICE)
    bias = torch.randn(N, generator=g).to(DEVICE)
    config = PlanesBatchConfig(**cfg) if cfg else None
    for b in (None, bias, bias):  # twice the same: the split-K workspace and counters are clean again
        y = planes_batch(x, packed, b, config)
        assert y.shape == (M, N) and y.dtype == dtype
        assert torch.isfinite(y).all()
        assert _rel_err(y, planes_linear_reference(x, packed, b)) < REL_TOL[dtype]


@needs_kernels
def test_dispatch_uses_the_few_token_kernel_up_to_16_tokens():
    """planes_linear with 3 and 16 tokens (the few-token kernel) and 17 (the prefill) in leading dims."""
    packed = _packed(24, 96, 3, 32, seed=4, device=DEVICE)
    g = torch.Generator().manual_seed(5)
    for lead in ((3,), (2, 8), (17,)):
        x = torch.randn(*lead, 96, generator=g).half().to(DEVICE)
        y = planes_linear(x, packed)
        assert y.shape == (*lead, 24)
        assert _rel_err(y, planes_linear_reference(x, packed)) < REL_TOL[torch.float16]


@needs_kernels
def test_batch_refuses_bad_calls():
    from bitstack.kernels import PackedPlanes
    from bitstack.kernels.planes.batch import PlanesBatchConfig, planes_batch

    packed = _packed(8, 64, 2, 32, device=DEVICE)
    with pytest.raises(ValueError, match="1 to 16 tokens"):
        planes_batch(torch.randn(17, 64).half().to(DEVICE), packed)
    with pytest.raises(ValueError, match="block_n must be a power of two"):
        planes_batch(torch.randn(2, 64).half().to(DEVICE), packed, config=PlanesBatchConfig(block_n=24))
    odd = PackedPlanes(packed.signs, packed.offset, packed.step, 8, 64, 48)  # 2 groups of 48 columns
    with pytest.raises(ValueError, match="power-of-two group_size"):
        planes_batch(torch.randn(2, 64).half().to(DEVICE), odd)
