"""The serving engine: one thread owns the model and runs continuous batching within the target.

Each loop iteration, between two forward passes:

1. new requests join the queue (or are refused when it is full), cancelled ones leave and free
   their KV at once, requests that waited too long are refused;
2. the target is read (fixed, or ``auto``), queued requests are admitted in order while the
   memory rule (:mod:`bitstack.serve.budget`) admits them, and one that cannot fit even alone
   is refused (503 with Retry-After);
3. the weights get what remains: shrunk at once, or grown in the background
   (:class:`~bitstack.serve.weights.Weights`);
4. one prefill chunk of the oldest admitted request runs (its first token then joins the
   decode batch), then one decode step of every running row.

Results go to each request's ``emit`` callback as :class:`Event` objects, from this thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from bitstack.serve import budget
from bitstack.serve.kvbatch import DecodeBatch, ModelRunner, cache_bytes
from bitstack.serve.sampling import SamplingParams, make_generator, next_tokens
from bitstack.serve.stats import Stats
from bitstack.serve.text import TextStream
from bitstack.serve.weights import Target, Weights


@dataclass
class Event:
    """What the engine tells a request: ``admitted``, ``delta`` (text), ``done`` (text,
    finish_reason, usage), ``rejected`` (status, message, retry_after) or ``error``."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 0
    message: str = ""
    retry_after: int = 0


@dataclass(eq=False)
class Sequence:
    """One request in the engine.  ``emit`` must be safe to call from the engine thread."""

    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams
    emit: Callable[[Event], None]
    stops: tuple[str, ...] = ()
    eos: frozenset[int] = frozenset()
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancelled: bool = False
    arrived: float = field(default_factory=time.monotonic)
    generated: int = 0
    prefilled: int = 0
    last_token: int = 0
    cache: object = None
    text: TextStream | None = None
    generator: torch.Generator | None = None

    @property
    def request(self) -> budget.Request:
        return budget.Request(len(self.prompt), self.max_tokens)


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 16  # sequences admitted at once (prefilling + decoding)
    max_queue: int = 256  # requests waiting for memory; more are refused
    queue_timeout: float = 120.0  # seconds a request may wait for memory before a 503
    prefill_chunk: int = 256  # prompt tokens per prefill forward pass
    retry_after: int = 2  # seconds, sent with every 503
    interval: float = 0.5  # seconds between samples (and auto-target probes) when idle


class Engine:
    """Continuous batching over ``model`` within ``target`` (see the module docstring)."""

    def __init__(self, model, tokenizer, target: Target, config: EngineConfig = EngineConfig(), *,
                 weights: Weights | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.target = target
        self.config = config
        self.stats = Stats()
        self.weights = weights or Weights(model, on_resize=self.stats.resize)
        if self.weights.on_resize is None:
            self.weights.on_resize = self.stats.resize
        self.device = target.device
        self.runner = ModelRunner(model, self.device)
        itemsize = next(p for p in model.parameters() if p.is_floating_point()).element_size()
        stack = self.weights.stack
        linears = stack.manifest.weights if stack is not None else []
        self.shape = budget.ModelShape.from_config(model.config, itemsize,
                                                   max((w.out_features * w.in_features for w in linears), default=0),
                                                   max((w.in_features for w in linears), default=0))
        self.batch = DecodeBatch(self.runner)
        self.waiting: deque[Sequence] = deque()
        self.prefilling: deque[Sequence] = deque()
        self._inbox: list[Sequence] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        self.snapshot: dict = {}
        self.iterations = 0
        self._update_snapshot(self.target.value(self.weights.resident_bytes))

    # ---- called from other threads -------------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        seq.text = TextStream(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), seq.stops)
        seq.generator = make_generator(seq.sampling)
        with self._cond:
            self._inbox.append(seq)
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """Free ``seq`` at the next step boundary (a client went away)."""
        seq.cancelled = True
        self.wake()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def start(self) -> "Engine":
        self.weights.start()
        self._thread = threading.Thread(target=self._run, name="bitstack-serve-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        self.weights.stop()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.no_grad():
                while True:
                    with self._cond:
                        if self._stop:
                            break
                        if not (self._inbox or self.waiting or self.prefilling or len(self.batch)):
                            self._cond.wait(self.config.interval)
                        inbox, self._inbox = self._inbox, []
                    self._iteration(inbox)
        except BaseException as err:  # a bug: refuse everything from now on, visibly
            self.failure = err
            raise
        finally:
            self._abort_all("the server is shutting down" if self.failure is None else f"engine failed: {self.failure}")

    def _iteration(self, inbox: list[Sequence]) -> None:
        for seq in inbox:
            if len(self.waiting) >= self.config.max_queue:
                self._reject(seq, f"the queue is full ({self.config.max_queue} requests waiting)")
            else:
                self.waiting.append(seq)
        self._drop_cancelled()
        target = self.target.value(self.weights.resident_bytes + self.kv_bytes)
        self._admit(target)
        committed = self._committed(self._admitted())
        slack = self.weights.hysteresis // 2 if self.target.auto else 0
        self.weights.allot(budget.weight_allotment(target, committed, self.weights.floor, self.weights.full), slack)
        if self.prefilling:
            self._guarded(self._prefill_chunk, [self.prefilling[0]])
        if len(self.batch):
            self._guarded(self._decode_step, list(self.batch.rows))
        self._update_snapshot(target)

    def _admitted(self) -> list[budget.Request]:
        return [s.request for s in self.prefilling] + [s.request for s in self.batch.rows]

    def _committed(self, requests: list[budget.Request]) -> int:
        return budget.committed_bytes(requests, self.shape, self.runner.kv_per_token, self.config.prefill_chunk)

    def _admit(self, target: int) -> None:
        admitted = self._admitted()
        now = time.monotonic()
        while self.waiting:
            head = self.waiting[0]
            alone = self._committed([head.request])
            if not budget.admits(target, self.weights.floor, alone):
                self.waiting.popleft()
                self._reject(head, f"the memory target ({target} bytes) cannot hold the weights' floor "
                                   f"({self.weights.floor} bytes) plus this request's KV cache and working memory "
                                   f"({alone} bytes): retry later, or ask for fewer tokens")
                continue
            if len(admitted) < self.config.max_batch and budget.admits(target, self.weights.floor,
                                                                       self._committed(admitted + [head.request])):
                self.waiting.popleft()
                self.prefilling.append(head)
                admitted.append(head.request)
                self.stats.admitted(now - head.arrived)
                self._emit(head, Event("admitted"))
                continue
            break
        while self.waiting and now - self.waiting[0].arrived > self.config.queue_timeout:
            self._reject(self.waiting.popleft(), f"no memory freed up for this request within {self.config.queue_timeout:g} s")

    def _drop_cancelled(self) -> None:
        for queue in (self.waiting, self.prefilling):
            for seq in [s for s in queue if s.cancelled]:
                queue.remove(seq)
                seq.cache = None
                self.stats.finished("cancelled", seq.generated)
        rows = [i for i, s in enumerate(self.batch.rows) if s.cancelled]
        for i in rows:
            self.stats.finished("cancelled", self.batch.rows[i].generated)
        self.batch.remove(rows)

    def _guarded(self, step: Callable[[], None], affected: list[Sequence]) -> None:
        """Run one forward step; if it raises, fail the requests it served and free them."""
        try:
            step()
        except Exception as err:  # e.g. out of device memory: those requests fail, the server stays up
            self.stats.error()
            message = " ".join(str(err).split())[:300] or type(err).__name__
            for seq in affected:
                seq.cache = None
                self._emit(seq, Event("error", status=500, message=f"generation failed: {message}"))
                self.stats.finished("error", seq.generated)
            self.prefilling = deque(s for s in self.prefilling if s not in affected)
            self.batch.remove([i for i, s in enumerate(self.batch.rows) if s in affected])
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _prefill_chunk(self) -> None:
        seq = self.prefilling[0]
        start = seq.prefilled
        chunk = torch.tensor(seq.prompt[start:start + self.config.prefill_chunk], device=self.device)
        seq.cache, logits = self.runner.prefill(chunk, seq.cache)
        seq.prefilled += chunk.numel()
        self.stats.prompt(chunk.numel())
        if seq.prefilled < len(seq.prompt):
            return
        self.prefilling.popleft()
        token = next_tokens(logits, [seq.sampling], [seq.generator])[0]
        self.stats.first_token(time.monotonic() - seq.arrived)
        if self._accept(seq, token):
            seq.cache = None
        else:
            self.batch.insert(seq, seq.cache, len(seq.prompt))
            seq.cache = None

    def _decode_step(self) -> None:
        rows = self.batch.rows
        logits = self.batch.step([s.last_token for s in rows])
        tokens = next_tokens(logits, [s.sampling for s in rows], [s.generator for s in rows])
        self.batch.remove([i for i, (seq, token) in enumerate(zip(list(rows), tokens)) if self._accept(seq, token)])

    def _accept(self, seq: Sequence, token: int) -> bool:
        """Record one generated token; emit text; True when the sequence is finished."""
        seq.generated += 1
        seq.last_token = token
        self.stats.generated(1)
        stop = token in seq.eos or seq.text.add(token)
        reason = "stop" if stop else ("length" if seq.generated >= seq.max_tokens else None)
        piece = seq.text.release(final=reason is not None)
        if reason is not None:
            self._emit(seq, Event("done", text=piece, finish_reason=reason, prompt_tokens=len(seq.prompt),
                                  completion_tokens=seq.generated))
            self.stats.finished(reason, seq.generated, time.monotonic() - seq.arrived)
            return True
        if piece:
            self._emit(seq, Event("delta", text=piece))
        return False

    def _reject(self, seq: Sequence, message: str) -> None:
        self.stats.finished("rejected", 0)
        self._emit(seq, Event("rejected", status=503, message=message, retry_after=self.config.retry_after))

    def _emit(self, seq: Sequence, event: Event) -> None:
        try:
            seq.emit(event)
        except Exception:  # the client's event loop is gone: treat it as a cancellation
            seq.cancelled = True

    def _abort_all(self, message: str) -> None:
        with self._cond:
            inbox, self._inbox = self._inbox, []
        for seq in list(inbox) + list(self.waiting) + list(self.prefilling) + list(self.batch.rows):
            self._emit(seq, Event("rejected", status=503, message=message, retry_after=self.config.retry_after))
        self.waiting.clear()
        self.prefilling.clear()
        self.batch.remove(list(range(len(self.batch))))

    # ---- state -----------------------------------------------------------------------------
    @property
    def kv_bytes(self) -> int:
        """KV bytes allocated now: the decode batch and the prefills under way."""
        return self.batch.kv_bytes + sum(cache_bytes(s.cache) for s in self.prefilling if s.cache is not None)

    def _update_snapshot(self, target: int) -> None:
        self.iterations += 1
        admitted = self._admitted()
        kv_reserved = budget.kv_reserve_bytes(admitted, self.runner.kv_per_token, self.runner.layers)
        working = budget.working_bytes(self.shape, admitted, self.config.prefill_chunk)
        w = self.weights
        resident, allotment = w.resident_bytes, w.allotment
        snapshot = {
            "target_bytes": target, "target_auto": self.target.auto, "reserve_bytes": self.target.reserve,
            "weight_resident_bytes": resident, "weight_allotment_bytes": allotment,
            "weight_floor_bytes": w.floor, "weight_full_bytes": w.full, "bits_per_param": w.bits_per_param,
            "kv_bytes": self.kv_bytes, "kv_reserved_bytes": kv_reserved, "working_bytes": working,
            "accounted_bytes": allotment + kv_reserved + working,
            "over_target_bytes": max(0, resident + kv_reserved + working - target),
            "kv_bytes_per_token": self.runner.kv_per_token,
            "queue_length": len(self.waiting) + len(self._inbox), "prefilling": len(self.prefilling),
            "running": len(self.batch), "resize_errors": w.errors, "iteration": self.iterations,
        }
        self.snapshot = self.stats.sample(snapshot)
