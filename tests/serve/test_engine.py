"""The engine without HTTP: continuous batching is exact, and the memory rule holds at every step."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from serve.helpers import wait_for

import bitstack
from bitstack.serve.engine import Engine, EngineConfig, Sequence
from bitstack.serve.sampling import SamplingParams
from bitstack.serve.weights import Target

GREEDY = SamplingParams(temperature=0.0)


class Collector:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if event.kind in ("done", "rejected", "error"):
            self.done.set()

    @property
    def last(self):
        return self.events[-1]

    @property
    def text(self):
        return "".join(e.text for e in self.events if e.kind in ("delta", "done"))


class CheckedEngine(Engine):
    """Checks the memory rule after every iteration."""

    def _update_snapshot(self, target):
        super()._update_snapshot(target)
        s = self.snapshot
        self.checks = getattr(self, "checks", 0) + 1
        if s["over_target_bytes"] == 0:
            assert s["weight_resident_bytes"] + s["kv_reserved_bytes"] + s["working_bytes"] <= s["target_bytes"]
        assert s["kv_bytes"] <= s["kv_reserved_bytes"]
        assert s["weight_resident_bytes"] <= max(s["weight_allotment_bytes"], s["weight_floor_bytes"])


def make_engine(artifact, memory, *, engine_class=CheckedEngine, **config):
    model = bitstack.load(artifact, memory, device="cpu")
    tokenizer = bitstack.load_tokenizer(artifact)
    target = Target(memory or "1GB", reserve=0, device=torch.device("cpu"))
    engine = engine_class(model, tokenizer, target, EngineConfig(**{"prefill_chunk": 4, **config}))
    return engine.start(), model, tokenizer


def submit(engine, prompt, max_tokens, sampling=GREEDY, **kw):
    sink = Collector()
    seq = Sequence(prompt=list(prompt), max_tokens=max_tokens, sampling=sampling, emit=sink, **kw)
    engine.submit(seq)
    return seq, sink


PROMPTS = [[5, 9, 12, 7, 30], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52], [8], [20, 21, 22, 23, 24, 25, 26]]
LENGTHS = [12, 6, 15, 9]


def test_batched_greedy_equals_alone_and_generate(serve_artifact):
    engine, model, tokenizer = make_engine(serve_artifact, None, max_batch=8)
    try:
        alone = []
        for prompt, n in zip(PROMPTS, LENGTHS):
            seq, sink = submit(engine, prompt, n)
            assert sink.done.wait(30)
            alone.append((seq.text.tokens, sink.text))
        together = [submit(engine, p, n) for p, n in zip(PROMPTS, LENGTHS)]
        for seq, sink in together:
            assert sink.done.wait(30) and sink.last.kind == "done"
        assert [(seq.text.tokens, sink.text) for seq, sink in together] == alone
        for (tokens, _), prompt, n in zip(alone, PROMPTS, LENGTHS):
            out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                                 pad_token_id=3)
            assert tokens == out[0, len(prompt):].tolist()
        assert engine.stats.outcomes["length"] == 8 and engine.checks > 0
    finally:
        engine.stop()


def test_seeded_sampling_is_the_same_in_a_batch_and_alone(serve_artifact):
    engine, _, _ = make_engine(serve_artifact, None)
    sampling = SamplingParams(temperature=0.9, top_p=0.9, top_k=20, seed=123)
    try:
        seq, sink = submit(engine, PROMPTS[0], 10, sampling)
        assert sink.done.wait(30)
        others = [submit(engine, p, 8, SamplingParams(temperature=1.0)) for p in PROMPTS[1:]]
        again, sink2 = submit(engine, PROMPTS[0], 10, sampling)
        assert sink2.done.wait(30) and all(s.done.wait(30) for _, s in others)
        assert again.text.tokens == seq.text.tokens
    finally:
        engine.stop()


def test_weights_shed_blocks_to_admit_and_grow_back(serve_artifact):
    engine, _, _ = make_engine(serve_artifact, "1MB")
    try:
        floor, full = engine.weights.floor, engine.weights.full
        probe = engine._committed([Sequence(PROMPTS[1], 60, GREEDY, print).request])
        target = floor + probe + (full - floor) // 2  # the full stack plus this request does not fit; the floor does
        engine.target.set(target)
        assert wait_for(lambda: engine.snapshot["target_bytes"] == target)
        assert engine.weights.resident_bytes == full  # nothing admitted: the weights take it all
        seq, sink = submit(engine, PROMPTS[1], 60)
        assert wait_for(lambda: engine.snapshot["running"] + engine.snapshot["prefilling"] == 1 or sink.done.is_set())
        assert engine.weights.resident_bytes < full and engine.weights.resident_bytes >= floor
        assert sink.done.wait(30) and sink.last.kind == "done" and sink.last.completion_tokens <= 60
        assert wait_for(lambda: engine.weights.resident_bytes == full)  # grown back in the background
        assert engine.stats.resizes["shrink"] >= 1 and engine.stats.resizes["grow"] >= 1
    finally:
        engine.stop()


def test_a_request_that_cannot_fit_alone_gets_503_and_the_server_goes_on(serve_artifact):
    engine, _, _ = make_engine(serve_artifact, "1MB")
    try:
        small = engine._committed([Sequence([1, 2], 2, GREEDY, print).request])
        engine.target.set(engine.weights.floor + small)
        _, big = submit(engine, PROMPTS[1], 200)
        assert big.done.wait(10)
        assert big.last.kind == "rejected" and big.last.status == 503 and big.last.retry_after > 0
        assert "retry later" in big.last.message
        _, ok = submit(engine, [1, 2], 2)
        assert ok.done.wait(30) and ok.last.kind == "done"
        assert engine.weights.resident_bytes == engine.weights.floor
    finally:
        engine.stop()


def test_requests_queue_for_memory_and_all_finish(serve_artifact):
    engine, _, _ = make_engine(serve_artifact, "1MB", max_batch=16)
    try:
        one = engine._committed([Sequence(PROMPTS[1], 20, GREEDY, print).request])
        two = engine._committed([Sequence(PROMPTS[1], 20, GREEDY, print).request] * 2)
        engine.target.set(engine.weights.floor + (one + two) // 2)  # room for one such request at a time
        step = engine.batch.step

        def slow_step(tokens):  # a tiny model decodes 5 x 20 tokens before the first poll otherwise
            time.sleep(0.01)
            return step(tokens)

        engine.batch.step = slow_step
        runs = [submit(engine, PROMPTS[1], 20) for _ in range(5)]
        assert wait_for(lambda: engine.snapshot["queue_length"] >= 3)
        assert engine.snapshot["running"] + engine.snapshot["prefilling"] <= 1
        for _, sink in runs:
            assert sink.done.wait(60) and sink.last.kind == "done"
        assert len({sink.text for _, sink in runs}) == 1
    finally:
        engine.stop()


def test_in_flight_requests_finish_when_the_target_drops_under_them(serve_artifact):
    engine, _, _ = make_engine(serve_artifact, "1MB")
    try:
        seq, sink = submit(engine, PROMPTS[0], 80)
        assert wait_for(lambda: len(sink.events) >= 3)
        engine.target.set(engine.weights.floor)  # not even the floor plus the running request
        assert wait_for(lambda: engine.snapshot["over_target_bytes"] > 0 or sink.done.is_set())
        _, late = submit(engine, [1, 2, 3], 3)
        assert late.done.wait(10) and late.last.kind == "rejected"
        assert sink.done.wait(60) and sink.last.kind == "done" and sink.last.completion_tokens == 80
        assert engine.weights.resident_bytes == engine.weights.floor
    finally:
        engine.stop()


def test_cancel_frees_the_kv_at_the_next_step(serve_artifact):
    engine, _, _ = make_engine(serve_artifact, None)
    try:
        seq, sink = submit(engine, PROMPTS[1], 200)
        assert wait_for(lambda: engine.snapshot["kv_bytes"] > 0)
        engine.cancel(seq)
        assert wait_for(lambda: engine.snapshot["kv_bytes"] == 0 and engine.snapshot["running"] == 0, timeout=5)
        assert engine.stats.outcomes["cancelled"] == 1 and not sink.done.is_set()
    finally:
        engine.stop()


def test_a_failing_forward_fails_its_requests_only(serve_artifact):
    engine, _, _ = make_engine(serve_artifact, None)
    real = engine.runner.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated device failure")
        return real(*args, **kwargs)

    engine.runner.forward = flaky
    try:
        _, first = submit(engine, PROMPTS[0], 10)
        assert first.done.wait(30) and first.last.kind == "error" and "simulated" in first.last.message
        assert engine.snapshot["kv_bytes"] == 0 or wait_for(lambda: engine.snapshot["kv_bytes"] == 0)
        _, second = submit(engine, PROMPTS[0], 10)
        assert second.done.wait(30) and second.last.kind == "done"
        assert engine.stats.errors == 1 and engine.alive
    finally:
        engine.stop()


@pytest.mark.parametrize("eos", [True, False])
def test_eos_ends_a_sequence_unless_ignored(serve_artifact, eos):
    engine, _, _ = make_engine(serve_artifact, None)
    try:
        seq, sink = submit(engine, PROMPTS[0], 12)
        assert sink.done.wait(30)
        stop_token = seq.text.tokens[3]
        seq2, sink2 = submit(engine, PROMPTS[0], 12, eos=frozenset({stop_token}) if eos else frozenset())
        assert sink2.done.wait(30)
        if eos:
            assert sink2.last.finish_reason == "stop" and seq2.text.tokens == seq.text.tokens[:3]
            assert sink2.last.completion_tokens == 4
        else:
            assert sink2.last.finish_reason == "length" and sink2.last.completion_tokens == 12
    finally:
        engine.stop()
