import time

import pytest
import torch
from serve.helpers import wait_for

import bitstack
from bitstack.errors import InputError
from bitstack.serve.weights import Target, Weights

CPU = torch.device("cpu")


def test_fixed_and_auto_targets():
    target = Target("300MB", reserve="1MB", device=CPU)
    assert not target.auto and target.value(held=123) == 300_000_000 and target.describe() == "300.00 MB"
    free = {"bytes": 50_000_000}
    auto = Target("auto", reserve="10MB", device=CPU, interval=0.05, probe=lambda: free["bytes"])
    assert auto.auto and auto.value(held=20_000_000) == 60_000_000  # free + held - reserve
    free["bytes"] = 5_000_000
    assert auto.value(held=20_000_000) == 60_000_000  # not re-probed within the interval
    time.sleep(0.06)
    assert auto.value(held=20_000_000) == 15_000_000
    free["bytes"] = 0
    time.sleep(0.06)
    assert auto.value(held=0) == 0  # never negative
    auto.set("2MB")
    assert not auto.auto and auto.value(0) == 2_000_000
    with pytest.raises(InputError):
        auto.set("lots")
    assert auto.describe() == "2.00 MB"


def test_shrink_at_once_grow_in_the_background_past_the_hysteresis(serve_artifact):
    model = bitstack.load(serve_artifact, None, device="cpu")
    events = []
    weights = Weights(model, on_resize=events.append, grow_delay=0.3).start()
    try:
        floor, full = weights.floor, weights.full
        assert weights.resizable and weights.resident_bytes == full == weights.allotment
        middle = (floor + full) // 2
        weights.allot(middle)
        assert weights.resident_bytes <= middle and weights.allotment == middle  # synchronous
        assert events and events[-1].direction == "shrink" and events[-1].new_bytes == weights.resident_bytes
        resident = weights.resident_bytes
        for _ in range(8):  # within the hysteresis: stays, however long
            weights.allot(middle + weights.hysteresis - 1)
            time.sleep(0.1)
        assert weights.resident_bytes == resident
        weights.allot(full)  # room, but not for grow_delay yet
        time.sleep(0.4)
        assert weights.resident_bytes == resident
        assert wait_for(lambda: weights.allot(full) or weights.resident_bytes == full)  # the room lasts: grows
        assert events[-1].direction == "grow"
        weights.allot(0)  # below the floor: the floor
        assert weights.resident_bytes == floor
        assert 0 < weights.bits_per_param < 8
    finally:
        weights.stop()


def test_a_float_model_is_fixed():
    from tiny_models import tiny_model

    model = tiny_model("llama")
    weights = Weights(model)
    assert not weights.resizable and weights.floor == weights.full == bitstack.memory_bytes(model)
    weights.allot(1)
    assert weights.resident_bytes == weights.full and weights.bits_per_param == 32.0
