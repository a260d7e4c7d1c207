"""Counters, latency histograms and the time series of a serving engine, and their Prometheus
text rendering (exposition format 0.0.4).

The engine thread calls the recording methods; :meth:`Stats.sample` merges the engine's memory
state with the counters into one snapshot (read by ``/metrics``, ``/health`` and the
dashboard) and appends it to the time series every ``period`` seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OUTCOMES = ("stop", "length", "cancelled", "rejected", "error")


class Histogram:
    """Cumulative-bucket histogram of seconds (Prometheus ``histogram``)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(list(self.buckets) + [math.inf], self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{"+Inf" if bound == math.inf else bound}"}} {running}')
        return out + [f"{name}_sum {self.total:.6f}", f"{name}_count {self.count}"]


class Stats:
    """What the engine and the HTTP layer count (thread-safe)."""

    def __init__(self, *, window: float = 5.0, period: float = 0.5, history: int = 1200):
        self._lock = threading.Lock()
        self.window = window
        self.period = period
        self.outcomes: Counter = Counter()
        self.http: Counter = Counter()  # (endpoint, status) -> responses
        self.resizes: Counter = Counter()  # direction -> resizes that changed blocks
        self.resize_log: deque = deque(maxlen=200)
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.errors = 0
        self.latency = Histogram()
        self.first_token_latency = Histogram()
        self.queue_wait = Histogram()
        self._recent: deque = deque()  # (monotonic time, generated tokens)
        self.history: deque = deque(maxlen=history)
        self._last_point = 0.0
        self.started = time.time()

    # ---- recording -----------------------------------------------------------------------------
    def generated(self, tokens: int) -> None:
        with self._lock:
            self.generated_tokens += tokens
            self._recent.append((time.monotonic(), tokens))

    def prompt(self, tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += tokens

    def admitted(self, waited: float) -> None:
        with self._lock:
            self.queue_wait.observe(waited)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.first_token_latency.observe(seconds)

    def finished(self, outcome: str, tokens: int, seconds: float | None = None) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if seconds is not None:
                self.latency.observe(seconds)

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def resize(self, event) -> None:
        with self._lock:
            self.resizes[event.direction] += 1
            self.resize_log.append({"time": event.time, "old_bytes": event.old_bytes, "new_bytes": event.new_bytes,
                                    "seconds": round(event.seconds, 4)})

    def response(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.http[(endpoint, status)] += 1

    # ---- reading -------------------------------------------------------------------------------
    def tokens_per_second(self) -> float:
        """Generated tokens per second, averaged over the last ``window`` seconds."""
        now = time.monotonic()
        with self._lock:
            while self._recent and now - self._recent[0][0] > self.window:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / self.window

    def sample(self, state: dict) -> dict:
        """``state`` (the engine's memory state) merged with the counters; appended to the
        time series when ``period`` seconds have passed since the last point."""
        rate = self.tokens_per_second()
        with self._lock:
            merged = dict(state, tokens_per_second=rate, generated_tokens_total=self.generated_tokens,
                          prompt_tokens_total=self.prompt_tokens, resizes=dict(self.resizes),
                          outcomes=dict(self.outcomes), engine_errors=self.errors, uptime_s=time.time() - self.started)
            now = time.time()
            if now - self._last_point >= self.period:
                self._last_point = now
                self.history.append({"t": round(now, 3), **{k: merged[k] for k in SERIES}})
        return merged

    def series(self, since: float = 0.0) -> list[dict]:
        with self._lock:
            return [p for p in self.history if p["t"] > since]

    def prometheus(self, state: dict, model: str) -> str:
        """The Prometheus text exposition of ``state`` (a :meth:`sample` result) and the counters."""
        label = f'model="{_escape(model)}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP bitstack_{name} {help_text}")
            lines.append(f"# TYPE bitstack_{name} {kind}")
            for labels, value in samples:
                joined = ",".join(x for x in (label, labels) if x)
                lines.append(f"bitstack_{name}{{{joined}}} {_number(value)}")

        for name, key, help_text in GAUGES:
            metric(name, "gauge", help_text, [("", state[key])])
        with self._lock:
            metric("generated_tokens_total", "counter", "Tokens generated.", [("", self.generated_tokens)])
            metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", [("", self.prompt_tokens)])
            metric("resize_events_total", "counter", "Weight resizes that changed the resident blocks.",
                   [(f'direction="{d}"', self.resizes[d]) for d in ("grow", "shrink")])
            metric("sequences_total", "counter", "Requests that left the engine, by outcome.",
                   [(f'outcome="{o}"', self.outcomes[o]) for o in OUTCOMES])
            metric("requests_total", "counter", "HTTP responses, by endpoint and status code.",
                   [(f'endpoint="{_escape(e)}",status="{s}"', n) for (e, s), n in sorted(self.http.items())])
            metric("engine_errors_total", "counter", "Forward passes that raised (their requests failed).",
                   [("", self.errors)])
            for name, hist, help_text in (("request_latency_seconds", self.latency, "Arrival to last token."),
                                          ("time_to_first_token_seconds", self.first_token_latency, "Arrival to first token."),
                                          ("queue_wait_seconds", self.queue_wait, "Arrival to admission.")):
                lines.append(f"# HELP bitstack_{name} {help_text}")
                lines.append(f"# TYPE bitstack_{name} histogram")
                lines.extend(_labelled(f"bitstack_{name}", line, label) for line in hist.lines(f"bitstack_{name}"))
        return "\n".join(lines) + "\n"


SERIES = ("target_bytes", "weight_resident_bytes", "weight_allotment_bytes", "kv_bytes", "kv_reserved_bytes",
          "working_bytes", "bits_per_param", "tokens_per_second", "running", "queue_length")

GAUGES = (
    ("memory_target_bytes", "target_bytes", "Memory target for weights + KV cache + working memory."),
    ("weight_resident_bytes", "weight_resident_bytes", "Resident weight bytes."),
    ("weight_allotment_bytes", "weight_allotment_bytes", "Bytes the weights may hold (more than resident while growing)."),
    ("weight_floor_bytes", "weight_floor_bytes", "Smallest weights (the artifact's floor)."),
    ("weight_full_bytes", "weight_full_bytes", "Largest weights (the full stack)."),
    ("bits_per_param", "bits_per_param", "Bits per decomposed parameter of the resident weights."),
    ("kv_bytes", "kv_bytes", "KV cache bytes allocated now."),
    ("kv_reserved_bytes", "kv_reserved_bytes", "KV cache bytes reserved by admitted requests."),
    ("working_bytes", "working_bytes", "Working memory reserved for forward passes."),
    ("accounted_bytes", "accounted_bytes", "Weight allotment + KV reserve + working memory."),
    ("over_target_bytes", "over_target_bytes", "Bytes over the target (the floor plus requests in flight exceed it)."),
    ("kv_bytes_per_token", "kv_bytes_per_token", "KV cache bytes per token of one sequence."),
    ("queue_length", "queue_length", "Requests waiting for memory."),
    ("prefilling_sequences", "prefilling", "Admitted requests whose prompt is being read."),
    ("running_sequences", "running", "Sequences in the decode batch."),
    ("tokens_per_second", "tokens_per_second", "Generated tokens per second (last seconds)."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _labelled(name: str, line: str, label: str) -> str:
    """Insert ``label`` into a histogram line of ``name`` (``name_bucket{le=..} v`` or ``name_sum v``)."""
    head, value = line.rsplit(" ", 1)
    if "{" in head:
        return head.replace("{", "{" + label + ",", 1) + " " + value
    return f"{head}{{{label}}} {value}"
