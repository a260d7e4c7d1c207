"""A short CPU version of the serving pressure benchmark (benchmarks/serving/pressure.py) on the
tiny model: 8 streaming clients while the target halves and doubles; no response fails or is
cut short, the memory rule holds at every sample, and the weights really shrink and grow."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks/

from benchmarks.serving.load import run_phase  # noqa: E402
from benchmarks.serving.pressure import committed_for, longest_prompt, round_up  # noqa: E402

import bitstack  # noqa: E402
from bitstack.errors import InputError  # noqa: E402
from bitstack.serve.options import ServeOptions  # noqa: E402
from bitstack.serve.server import build  # noqa: E402

CLIENTS, TOKENS, WORDS = 8, 24, 10
BASE = dict(device="cpu", max_batch=CLIENTS, max_queue=32, queue_timeout=600.0, port=0)


def test_pressure_waves_on_the_tiny_model(serve_artifact):
    server = build(serve_artifact, ServeOptions(memory="1GB", **BASE))
    engine = server.engine
    need = committed_for(engine, CLIENTS, longest_prompt(bitstack.load_tokenizer(serve_artifact), WORDS, CLIENTS), TOKENS)
    low = round_up(engine.weights.floor + need)
    high = 2 * low
    assert engine.weights.floor < low - need + 1000 and high - need > engine.weights.full  # floor at low, full at high
    phase = run_phase(server, clients=CLIENTS, duration=12, max_tokens=TOKENS, prompt_words=WORDS, waves=(high, low),
                      wave_period=3.0, interval=0.05)
    s = phase["summary"]
    assert s["failed"] == 0 and s["truncated"] == 0 and s["refused_503"] == 0, s
    assert s["completed"] >= CLIENTS and s["max_running"] >= 2, s
    assert s["samples_weights_over_target"] == 0 and s["samples_weights_kv_over_target"] == 0, s
    assert s["samples_accounted_over_target"] == 0, s
    assert (s["target_min_bytes"], s["target_max_bytes"]) == (low, high)
    assert s["resizes"].get("shrink", 0) >= 1 and s["resizes"].get("grow", 0) >= 1, s
    assert s["weights_min_bytes"] < s["weights_max_bytes"] == engine.weights.full and s["bits_min"] < s["bits_max"]
    assert s["tokens_per_second"] > 0 and s["latency_p99_s"] >= s["latency_p50_s"] > 0


def test_the_float_model_serves_at_a_budget_that_fits_it_and_refuses_below(serve_artifact):
    from tiny_models import tiny_model

    model = tiny_model("llama", num_hidden_layers=2)
    tokenizer = bitstack.load_tokenizer(serve_artifact)
    weights = bitstack.memory_bytes(model)
    with pytest.raises(InputError, match="cannot hold the weights' floor"):
        build(serve_artifact, ServeOptions(memory=str(weights), **BASE), model=model, tokenizer=tokenizer)
    server = build(serve_artifact, ServeOptions(memory=str(weights + 200_000), model_name="float", **BASE), model=model,
                   tokenizer=tokenizer)
    assert server.engine.weights.floor == server.engine.weights.full == weights
    phase = run_phase(server, clients=4, duration=4, max_tokens=TOKENS, prompt_words=WORDS, waves=None, wave_period=3.0)
    s = phase["summary"]
    assert s["failed"] == 0 and s["truncated"] == 0 and s["completed"] >= 4, s
    assert s["samples_accounted_over_target"] == 0 and s["bits_min"] == s["bits_max"] == 32.0, s
