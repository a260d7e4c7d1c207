"""``--memory auto`` on a running server: the target follows the memory the machine leaves free,
and the weights shrink and grow back live while a request streams to completion.

The probe is replaced by one that leaves the server a chosen total (free = total minus what the
server holds, as MemAvailable would report), so the test does not depend on this machine's RAM.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

from serve.helpers import running, wait_for

MODEL = "tiny-serve.bstk"


def metric(srv, name: str, labels: str = "") -> float:
    """The value of ``bitstack_NAME`` in /metrics (the sample whose labels contain ``labels``)."""
    status, _, text = srv.request("GET", "/metrics")
    assert status == 200
    for match in re.finditer(rf"^bitstack_{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE):
        if labels in (match.group(1) or ""):
            return float(match.group(2))
    raise AssertionError(f"bitstack_{name} with {labels!r} is not in /metrics")


def stream(base: str, out: dict) -> None:
    """One streamed completion of 120 tokens (EOS ignored); its chunks' text and last finish reason go to ``out``."""
    body = json.dumps({"model": MODEL, "prompt": "the cat", "max_tokens": 120, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    out["usage"] = chunk["usage"]
                for choice in chunk["choices"]:
                    out["reason"] = choice.get("finish_reason") or out.get("reason")
            elif line == "data: [DONE]":
                out["done"] = True


def test_auto_target_follows_free_memory_and_resizes_live(serve_artifact):
    with running(serve_artifact, memory="auto", reserve="10kB") as srv:
        engine = srv.server.engine
        weights, target = engine.weights, engine.target
        floor, full = weights.floor, weights.full
        total = {"bytes": 1 << 30}  # what the machine leaves this server (weights, KV, working memory)
        target.probe = lambda: total["bytes"] - (weights.resident_bytes + engine.kv_bytes)
        target.interval = 0.05
        assert target.auto and wait_for(lambda: metric(srv, "weight_resident_bytes") == full)

        step = engine.batch.step

        def slow_step(tokens):  # 120 steps take > 3 s: the request is in flight through both resizes
            time.sleep(0.03)
            return step(tokens)

        engine.batch.step = slow_step
        out: dict = {}
        client = threading.Thread(target=stream, args=(srv.base, out), daemon=True)
        client.start()
        assert wait_for(lambda: engine.snapshot["running"] == 1 or "done" in out)
        committed = engine._committed(engine._admitted())
        middle = floor + (full - floor) // 2
        total["bytes"] = middle + committed + target.reserve  # memory pressure: the weights shed blocks live
        assert wait_for(lambda: metric(srv, "weight_resident_bytes") <= middle)
        assert metric(srv, "memory_target_bytes") == middle + committed
        assert floor <= weights.resident_bytes < full and metric(srv, "bits_per_param") < 8
        total["bytes"] = floor  # not even the floor and the request: the floor, and the request still finishes
        assert wait_for(lambda: weights.resident_bytes == floor)
        assert "done" not in out and engine.snapshot["running"] == 1
        client.join(120)
        assert out.get("done") and out["reason"] == "length" and out["usage"]["completion_tokens"] == 120

        total["bytes"] = 1 << 30  # the memory frees: the weights grow back to the full stack
        assert wait_for(lambda: metric(srv, "weight_resident_bytes") == full, timeout=20)
        assert metric(srv, "resize_events_total", 'direction="shrink"') >= 2
        assert metric(srv, "resize_events_total", 'direction="grow"') >= 1
        status, _, health = srv.request("GET", "/health")
        assert status == 200 and health["weight_resident_bytes"] == full and health["target_bytes"] > full
