"""Bit-plane layout and repack: exact inverses, exact byte sizes, same Ŵ as the stored blocks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bitstack.codecs.avd.decompose import reconstruct
from bitstack.codecs.base import Block
from bitstack.core.packing import pack_signs
from bitstack.kernels import PackedBitStack, packed_nbytes, repack
from bitstack.kernels.avd.layout import bitplane_from_standard, standard_from_bitplane, unpack_bitplane
from bitstack.kernels.avd.reference import bitstack_linear_reference, dense_weight


def _blocks(N, K, k, J, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Block(signs=pack_signs(torch.rand(N, K, generator=g) > 0.5),
                  u=(torch.randn(N, k, generator=g) * 0.3).half(),
                  v=(torch.randn(k, K, generator=g) * 0.3).half()) for _ in range(J)]


@pytest.mark.parametrize("K", [1, 7, 8, 9, 37, 128, 129, 300, 513, 1030])
@pytest.mark.parametrize("group", [16, 64])
def test_bitplane_roundtrip(K, group):
    g = torch.Generator().manual_seed(K)
    positive = torch.rand(6, K, generator=g) > 0.5
    stored = pack_signs(positive)
    bp = bitplane_from_standard(stored, K, group)
    assert bp.shape == stored.shape and bp.dtype == torch.uint8
    assert torch.equal(unpack_bitplane(bp, K, group).bool(), positive)
    assert torch.equal(standard_from_bitplane(bp, K, group), stored)


def test_bitplane_positions():
    # K = 8G + 20: one full group of G bytes, then a tail of ceil(20/8) = 3 bytes
    G, K = 16, 148
    positive = torch.zeros(1, K, dtype=torch.bool)
    positive[0, 5 * G + 3] = True  # full group: bit 5 of byte 3
    positive[0, 8 * G + 2 * 3 + 1] = True  # tail group (stride 3): bit 2 of byte 16 + 1
    bp = bitplane_from_standard(pack_signs(positive), K, G)
    expect = torch.zeros(1, (K + 7) // 8, dtype=torch.uint8)
    expect[0, 3] = 1 << 5
    expect[0, G + 1] = 1 << 2
    assert torch.equal(bp, expect)


@pytest.mark.parametrize("N,K,k,J", [(5, 37, 1, 1), (33, 300, 4, 3), (17, 1030, 16, 2)])
def test_repack_matches_stored_blocks(N, K, k, J):
    blocks = _blocks(N, K, k, J)
    packed = repack(blocks, group=16)
    assert isinstance(packed, PackedBitStack)
    assert packed.nbytes == packed_nbytes(N, K, k, J) == sum(b.nbytes for b in blocks)
    torch.testing.assert_close(dense_weight(packed), reconstruct(blocks), rtol=0, atol=0)
    # tuples work too, and the inputs are untouched
    before = [b.signs.clone() for b in blocks]
    packed2 = repack([(b.signs, b.u, b.v) for b in blocks], group=16)
    assert torch.equal(packed2.signs, packed.signs)
    assert all(torch.equal(a, b.signs) for a, b in zip(before, blocks))


def test_repack_folds_input_scale():
    N, K, k = 9, 45, 4
    blocks = _blocks(N, K, k, 2)
    scale = torch.rand(K) + 0.5
    packed = repack(blocks, input_scale=scale, group=16)
    x = torch.randn(3, K).half()
    ref = (x.float() * scale) @ reconstruct(blocks).t()
    y = bitstack_linear_reference(x, packed)
    assert ((y.float() - ref).norm() / ref.norm()) < 2e-3


def test_repack_rejects_bad_input():
    blocks = _blocks(8, 20, 2, 2)
    with pytest.raises(ValueError, match="at least one block"):
        repack([])
    with pytest.raises(ValueError, match="group"):
        repack(blocks, group=24)
    with pytest.raises(ValueError, match="float16"):
        repack([(blocks[0].signs, blocks[0].u.float(), blocks[0].v)])
    with pytest.raises(ValueError, match="shapes"):
        repack([blocks[0], _blocks(8, 21, 2, 1)[0]])
    with pytest.raises(ValueError, match="input_scale"):
        repack(blocks, input_scale=torch.ones(19))


def test_reference_rejects_bad_args():
    packed = repack(_blocks(8, 20, 2, 1), group=16)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        bitstack_linear_reference(torch.randn(2, 20), packed)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 20\)"):
        bitstack_linear_reference(torch.randn(2, 21).half(), packed)
    with pytest.raises(ValueError, match="bias"):
        bitstack_linear_reference(torch.randn(2, 20).half(), packed, torch.zeros(7))


def test_import_stays_light():
    code = ("import sys, bitstack, bitstack.kernels, torch; "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert not torch.cuda.is_initialized(), 'cuda initialised'")
    subprocess.run([sys.executable, "-c", code], check=True)
