"""The dispatch table (:mod:`bitstack.kernels.dispatch`) and the entry points that read it
(:mod:`bitstack.kernels.api`): which path a call takes for a token count and a table.  The kernels
are replaced by recorders, so these tests need no Triton; their arguments are checked as the
kernels' are (CPU tensors need ``TRITON_INTERPRET=1``, the root conftest's default)."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from bitstack.kernels import api
from bitstack.kernels._checks import interpret_mode
from bitstack.kernels.dispatch import (
    AVD_DECODE_WIDTH_LIMIT,
    BATCH_MAX_TOKENS,
    DEFAULT_TABLE,
    KERNEL_MAX_BLOCKS,
    DispatchTable,
)

needs_cpu_kernels = pytest.mark.skipif(not interpret_mode(), reason="CPU tensors pass the kernels' checks only "
                                       "under TRITON_INTERPRET=1")


def _planes(N=8, K=64, J=2, group=32):
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 256, (J, N, K // 8), dtype=torch.uint8, generator=g)
    G = K // group
    return api.PackedPlanes(signs, torch.rand(N, G).half(), torch.rand(N, G).half(), N, K, group)


def _avd(N=8, K=64, rank=16, J=1):
    signs = torch.zeros(J, N, K // 8, dtype=torch.uint8)
    return api.PackedBitStack(signs, torch.zeros(J, N, rank).half(), torch.zeros(J, rank, K).half(), N, K, rank, 16)


def _recorder(calls, name, out_features):
    def run(x, packed, bias=None, *args, **kwargs):
        calls.append((name, x.numel() // x.shape[-1]))
        return x.new_zeros(*x.shape[:-1], out_features)

    return run


def test_default_table_is_within_the_kernels_limits():
    t = DEFAULT_TABLE
    assert 0 <= t.planes_gemv_max_tokens <= t.planes_decode_max_tokens <= BATCH_MAX_TOKENS
    assert t.planes_max_blocks == KERNEL_MAX_BLOCKS
    assert 1 <= t.avd_decode_max_width <= AVD_DECODE_WIDTH_LIMIT
    assert t.lut_max_tokens >= 0 and t.native_max_tokens >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.lut_max_tokens = 3  # a table never changes: pass another one


@pytest.mark.parametrize("field,value", [
    ("planes_decode_max_tokens", BATCH_MAX_TOKENS + 1), ("planes_gemv_max_tokens", -1),
    ("planes_max_blocks", KERNEL_MAX_BLOCKS + 1), ("avd_decode_max_width", 0),
    ("avd_decode_max_width", AVD_DECODE_WIDTH_LIMIT + 1), ("lut_max_tokens", 2.5), ("native_max_tokens", True),
])
def test_bad_tables_raise(field, value):
    with pytest.raises(ValueError, match=field):
        DispatchTable(**{field: value})


def test_avd_decode_max_tokens_follows_the_rank_and_the_width():
    assert [DEFAULT_TABLE.avd_decode_max_tokens(k) for k in (1, 4, 16, 17, 64, 128)] == [64, 16, 4, 2, 1, 1]
    assert DispatchTable(avd_decode_max_width=128).avd_decode_max_tokens(16) == 8
    assert api.decode_max_tokens(16) == 4 and api.decode_max_tokens(16, DispatchTable(avd_decode_max_width=32)) == 2


@needs_cpu_kernels
def test_bitstack_linear_picks_the_path_from_the_table(monkeypatch):
    calls = []
    monkeypatch.setattr(api, "bitstack_linear_decode", _recorder(calls, "decode", 8))
    monkeypatch.setattr(api, "bitstack_linear_prefill", _recorder(calls, "prefill", 8))
    packed = _avd(rank=16)
    narrow = DispatchTable(avd_decode_max_width=16)  # rank 16: one token
    for tokens in (1, 4, 5):
        api.bitstack_linear(torch.zeros(tokens, 64).half(), packed)
        api.bitstack_linear(torch.zeros(tokens, 64).half(), packed, table=narrow)
    assert calls == [("decode", 1), ("decode", 1), ("decode", 4), ("prefill", 4), ("prefill", 5), ("prefill", 5)]


@needs_cpu_kernels
def test_planes_linear_picks_the_path_from_the_table(monkeypatch):
    calls = []
    monkeypatch.setattr(api, "_planes_decode_checked", lambda x, p, b, table: _recorder(calls, "decode", 8)(x, p, b))
    monkeypatch.setattr(api, "planes_linear_prefill", _recorder(calls, "prefill", 8))
    packed = _planes()
    low = dataclasses.replace(DEFAULT_TABLE, planes_decode_max_tokens=4)
    for tokens in (1, 5, 16, 17):
        api.planes_linear(torch.zeros(tokens, 64).half(), packed)
        api.planes_linear(torch.zeros(tokens, 64).half(), packed, table=low)
    assert calls == [("decode", 1), ("decode", 1), ("decode", 5), ("prefill", 5), ("decode", 16), ("prefill", 16),
                     ("prefill", 17), ("prefill", 17)]


@needs_cpu_kernels
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the kernel modules import Triton")
def test_planes_decode_picks_the_kernel_from_the_table(monkeypatch):
    from bitstack.kernels.planes import batch, decode, gemv

    calls = []
    monkeypatch.setattr(gemv, "gemv_launch", _recorder(calls, "gemv", 8))
    monkeypatch.setattr(decode, "planes_decode_launch", _recorder(calls, "decode", 8))
    monkeypatch.setattr(batch, "batch_launch", _recorder(calls, "batch", 8))
    packed, narrow = _planes(group=32), _planes(group=16)  # the one-token kernel needs groups of >= 32 columns
    no_gemv = DispatchTable(planes_gemv_max_tokens=0)
    for tokens in (1, 2, 3):
        api.planes_linear_decode(torch.zeros(tokens, 64).half(), packed)
        api.planes_linear_decode(torch.zeros(tokens, 64).half(), packed, table=no_gemv)
        api.planes_linear_decode(torch.zeros(tokens, 64).half(), narrow)
    assert calls == [("gemv", 1), ("decode", 1), ("decode", 1),
                     ("gemv", 1), ("gemv", 1), ("batch", 2), ("batch", 2),
                     ("batch", 3), ("batch", 3), ("batch", 3)]
    with pytest.raises(ValueError, match="prefill"):
        api.planes_linear_decode(torch.zeros(BATCH_MAX_TOKENS + 1, 64).half(), packed)
