"""Load, pressure and sampling for the serving benchmark (used by ``pressure.py`` and the CI test).

:func:`run_phase` serves a built server on 127.0.0.1, runs ``clients`` streaming clients for
``duration`` seconds while a waver moves the memory target between two sizes (``POST
/admin/memory``, as an operator would) and, optionally, a co-tenant process allocates and frees
memory on the same device; a sampler reads the engine's state every ``interval`` seconds.
Returns every request's record, every sample and a summary.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import threading
import time
from dataclasses import asdict, dataclass

WORDS = ("the a one two three of in on at to from with for and or but not is was are were be been has have had "
         "it he she they we you i this that these those there here when where why how what which who will would "
         "can could should may might must do does did make made take took go went come came see saw know knew "
         "time year day way man woman child world life hand part place case week company system program question "
         "work government number night point home water room mother area money story fact month lot right study").split()


def prompts(count: int, words: int, seed: int = 0) -> list[str]:
    """``count`` prompts of ``words`` words each from a fixed vocabulary (seeded)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]


@dataclass
class Record:
    client: int
    start: float
    status: int = 0  # HTTP status (0: no response)
    latency: float = math.nan  # seconds to the end of the stream
    ttft: float = math.nan  # seconds to the first text chunk
    tokens: int = 0  # completion_tokens of the final usage chunk
    finish: str | None = None
    done: bool = False  # the stream ended with data: [DONE]
    error: str = ""


def one_request(port: int, model: str, prompt: str, max_tokens: int, client: int, temperature: float) -> Record:
    """One streaming completion (ignore_eos, include_usage), read to its end."""
    record = Record(client, time.monotonic())
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        record.status = response.status
        if response.status != 200:
            record.error = response.read().decode(errors="replace")[:300]
            return record
        while True:
            line = response.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                record.done = True
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                record.error = chunk["error"]["message"]
                continue
            if chunk.get("usage"):
                record.tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice.get("text") and math.isnan(record.ttft):
                    record.ttft = time.monotonic() - record.start
                if choice.get("finish_reason"):
                    record.finish = choice["finish_reason"]
        record.latency = time.monotonic() - record.start
    except (OSError, http.client.HTTPException, ValueError) as err:
        record.error = f"{type(err).__name__}: {err}"
    finally:
        connection.close()
    return record


def _admin(port: int, key: str, memory, reserve=None) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"memory": memory} if reserve is None else {"memory": memory, "reserve": reserve}
    try:
        connection.request("POST", "/admin/memory", body=json.dumps(body),
                           headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"/admin/memory answered {response.status}")
    finally:
        connection.close()


def cotenant(device: str, size: int, period: float, stop) -> None:
    """Another process's memory: allocate ``size`` bytes on ``device`` for half a period, free them
    for the other half, until ``stop`` (a multiprocessing Event) is set."""
    import torch

    while not stop.is_set():
        try:
            block = torch.ones(size, dtype=torch.uint8, device=device)
        except RuntimeError:  # out of memory: the co-tenant waits for the next wave
            block = None
        stop.wait(period / 2)
        del block
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        stop.wait(period / 2)


def run_phase(server, *, clients: int, duration: float, max_tokens: int, prompt_words: int, waves: tuple | None,
              wave_period: float, interval: float = 0.1, temperature: float = 0.0, cotenant_bytes: int = 0,
              auto_reserve: str | None = None, seed: int = 0) -> dict:
    """Serve ``server`` (from :func:`bitstack.serve.server.build`) under load; see the module docstring.

    ``waves``: (high, low) targets in bytes: high first, then low and high in turn every
    ``wave_period / 2`` seconds; None for the server's own target.  ``auto_reserve``: switch the
    server to ``auto`` with this reserve first (with a co-tenant).  ``cotenant_bytes``: run :func:`cotenant` on the server's device.
    """
    import multiprocessing

    import torch

    from bitstack.serve.server import serve_forever

    ready, port = threading.Event(), []
    thread = threading.Thread(target=serve_forever, args=(server, "127.0.0.1", 0),
                              kwargs={"on_ready": lambda p: (port.append(p), ready.set())}, daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the server did not start")
    port = port[0]
    engine = server.engine
    device = engine.device
    records: list[Record] = []
    samples: list[dict] = []
    lock = threading.Lock()
    stop = threading.Event()
    texts = prompts(max(clients * 4, 16), prompt_words, seed)
    started = time.monotonic()

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() - started < duration:
            rec = one_request(port, server.model_name, rng.choice(texts), max_tokens, i, temperature)
            with lock:
                records.append(rec)
            if rec.status == 503:
                stop.wait(0.2)

    def waver() -> None:
        level = 1
        while not stop.wait(wave_period / 2):
            _admin(port, server.admin_key, waves[level])
            level = 1 - level

    def sampler() -> None:
        while not stop.is_set():
            s = dict(engine.snapshot)
            s["t"] = time.monotonic() - started
            if device.type == "cuda":
                s["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(device))
            samples.append(s)
            stop.wait(interval)

    helpers = [threading.Thread(target=sampler, daemon=True)]
    if auto_reserve is not None:
        _admin(port, server.admin_key, "auto", auto_reserve)
    if waves is not None:
        _admin(port, server.admin_key, waves[0])
        helpers.append(threading.Thread(target=waver, daemon=True))
    tenant = None
    if cotenant_bytes:
        context = multiprocessing.get_context("spawn")
        tenant_stop = context.Event()
        tenant = context.Process(target=cotenant, args=(str(device), cotenant_bytes, wave_period, tenant_stop), daemon=True)
        tenant.start()
    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in helpers + workers:
        t.start()
    for t in workers:
        t.join()
    elapsed = time.monotonic() - started
    stop.set()
    for t in helpers:
        t.join()
    if tenant is not None:
        tenant_stop.set()
        tenant.join(30)
    server.request_exit()
    thread.join(30)
    return {"records": [asdict(r) for r in records], "samples": samples,
            "summary": summarize(records, samples, elapsed, max_tokens)}


def _percentile(values: list[float], q: float) -> float:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def summarize(records: list[Record], samples: list[dict], elapsed: float, max_tokens: int) -> dict:
    """Counts, latencies and memory checks of one phase."""
    ok = [r for r in records if r.status == 200 and not r.error]
    complete = [r for r in ok if r.done and r.finish == "length" and r.tokens == max_tokens]
    refused = [r for r in records if r.status == 503]
    failed = [r for r in records if r.status not in (200, 503) or (r.status == 200 and r.error)]
    over = lambda key: sum(1 for s in samples if key(s) > s["target_bytes"])  # noqa: E731
    summary = {
        "requests": len(records), "completed": len(complete), "refused_503": len(refused), "failed": len(failed),
        "truncated": len(ok) - len(complete), "seconds": round(elapsed, 2),
        "tokens_per_second": round(sum(r.tokens for r in complete) / elapsed, 2),
        "latency_p50_s": round(_percentile([r.latency for r in complete], 0.5), 3),
        "latency_p99_s": round(_percentile([r.latency for r in complete], 0.99), 3),
        "ttft_p50_s": round(_percentile([r.ttft for r in complete], 0.5), 3),
        "ttft_p99_s": round(_percentile([r.ttft for r in complete], 0.99), 3),
        "samples": len(samples),
        "samples_weights_over_target": over(lambda s: s["weight_resident_bytes"]),
        "samples_weights_kv_over_target": over(lambda s: s["weight_resident_bytes"] + s["kv_bytes"]),
        "samples_accounted_over_target": over(lambda s: s["weight_resident_bytes"] + s["kv_reserved_bytes"] + s["working_bytes"]),
        "weights_min_bytes": min((s["weight_resident_bytes"] for s in samples), default=0),
        "weights_max_bytes": max((s["weight_resident_bytes"] for s in samples), default=0),
        "bits_min": round(min((s["bits_per_param"] for s in samples), default=0), 3),
        "bits_max": round(max((s["bits_per_param"] for s in samples), default=0), 3),
        "target_min_bytes": min((s["target_bytes"] for s in samples), default=0),
        "target_max_bytes": max((s["target_bytes"] for s in samples), default=0),
        "max_running": max((s["running"] for s in samples), default=0),
        "max_queue": max((s["queue_length"] for s in samples), default=0),
        "engine_errors": max((s["engine_errors"] for s in samples), default=0),
        "resizes": samples[-1]["resizes"] if samples else {},
        "errors": sorted({r.error[:120] for r in failed})[:5],
    }
    if samples and "cuda_allocated_bytes" in samples[0]:
        summary["samples_cuda_allocated_over_target"] = over(lambda s: s["cuda_allocated_bytes"])
    return summary
