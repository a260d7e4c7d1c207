import pytest

from bitstack.serve.budget import (ModelShape, Request, admits, committed_bytes, forward_bytes, kv_reserve_bytes,
                                   weight_allotment, working_bytes)

SHAPE = ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, vocab=49152, itemsize=2, context=8192)


def test_kv_reserve_is_rows_times_longest_plus_one_layer():
    requests = [Request(10, 20), Request(100, 5), Request(1, 1)]
    rows_longest = 3 * 105 * 1000
    assert kv_reserve_bytes(requests, 1000, 30) == rows_longest + rows_longest // 30
    assert kv_reserve_bytes([], 1000, 30) == 0


def test_working_memory_is_the_larger_of_decode_and_prefill():
    requests = [Request(600, 100), Request(20, 20)]
    decode = forward_bytes(SHAPE, 2, 700, 2)
    prefill = forward_bytes(SHAPE, 256, 600, 1)
    assert working_bytes(SHAPE, requests, 256) == max(decode, prefill)
    assert working_bytes(SHAPE, [], 256) == 0
    assert forward_bytes(SHAPE, 1, 10, 1) > SHAPE.vocab * SHAPE.itemsize  # logits are counted


@pytest.mark.parametrize("target,committed,expected", [(1000, 100, 500), (1000, 700, 300), (1000, 900, 200),
                                                       (300, 50, 250)])
def test_weights_get_what_remains_between_floor_and_full(target, committed, expected):
    assert weight_allotment(target, committed, floor=200, full=500) == expected


def test_admission_counts_the_floor_and_every_request():
    shape = ModelShape(layers=2, hidden=8, intermediate=16, heads=2, vocab=10, itemsize=4, context=64)
    one = committed_bytes([Request(4, 4)], shape, 100, 16)
    two = committed_bytes([Request(4, 4), Request(4, 4)], shape, 100, 16)
    assert two > one
    assert admits(1000 + one, 1000, one) and not admits(1000 + one - 1, 1000, one)
    assert not admits(1000 + one, 1000, two)


def test_shape_from_config_reads_the_families():
    from tiny_models import tiny_config

    llama = ModelShape.from_config(tiny_config("llama"), 4)
    assert (llama.layers, llama.hidden, llama.intermediate, llama.vocab, llama.context) == (2, 48, 96, 64, 256)
    assert ModelShape.from_config(tiny_config("opt"), 4).intermediate == 96  # ffn_dim
