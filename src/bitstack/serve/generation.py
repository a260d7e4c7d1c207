"""The two OpenAI generation endpoints: a validated request becomes an engine
:class:`~bitstack.serve.engine.Sequence`; its events become one JSON body or a server-sent
event stream (``data: {...}`` chunks, then ``data: [DONE]``).

A request waits for admission before anything is sent, so a refusal is still a plain 503 with
Retry-After, streaming or not.  A client that goes away (even while its request waits or
streams) cancels it; the engine frees its KV cache at the next step boundary.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from bitstack.serve import protocol
from bitstack.serve.engine import Engine, Event, Sequence
from bitstack.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest
from bitstack.serve.sampling import SamplingParams


@dataclass(frozen=True)
class Limits:
    """Request limits: prompt tokens, ``max_tokens``, request body bytes, model context."""

    max_prompt_tokens: int
    max_tokens: int
    max_body_bytes: int
    context: int


class Generator:
    """Turns OpenAI requests into engine sequences (one per request, n = 1)."""

    def __init__(self, engine: Engine, tokenizer, model_name: str, limits: Limits):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.limits = limits
        eos = getattr(getattr(engine.model, "generation_config", None), "eos_token_id", None)
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos = frozenset(eos)
        self.vocab = engine.shape.vocab

    # ---- prompts -----------------------------------------------------------------------------
    def completion_prompt(self, req: CompletionRequest) -> list[int]:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, "one prompt per request: send the prompts as separate requests", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
        else:
            ids = list(prompt)
            bad = next((t for t in ids if not 0 <= t < self.vocab), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary (0..{self.vocab - 1})", param="prompt")
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        return ids

    def chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, f"model {self.model_name!r} has no chat template: use /v1/completions", param="messages")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # the template's own checks (roles, order) raise many types
            raise APIError(400, f"the chat template refused these messages: {' '.join(str(err).split())[:200]}",
                           param="messages") from err
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ---- checks ------------------------------------------------------------------------------
    def sequence(self, req, prompt: list[int], max_tokens: int | None, emit) -> Sequence:
        if req.model != self.model_name:
            raise APIError(404, f"the model {req.model!r} does not exist: this server serves {self.model_name!r}",
                           param="model", code="model_not_found")
        unsupported = req.unsupported()
        if unsupported:
            raise APIError(400, f"'{unsupported[0]}' is not supported by this server (leave it unset)", param=unsupported[0])
        limits = self.limits
        if len(prompt) > limits.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(prompt)} tokens; this server accepts at most {limits.max_prompt_tokens}",
                           param="prompt" if isinstance(req, CompletionRequest) else "messages", code="context_length_exceeded")
        room = limits.context - len(prompt)
        if max_tokens is None:  # chat without max_tokens: as many as the limits allow
            max_tokens = min(limits.max_tokens, room)
            if max_tokens < 1:
                raise APIError(400, f"the prompt ({len(prompt)} tokens) fills the model's context of {limits.context}",
                               param="messages", code="context_length_exceeded")
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
                           param="max_tokens")
        if max_tokens > room:
            raise APIError(400, f"this model's context is {limits.context} tokens: the prompt ({len(prompt)}) plus "
                                f"max_tokens ({max_tokens}) exceed it", param="max_tokens", code="context_length_exceeded")
        temperature = 1.0 if req.temperature is None else req.temperature
        sampling = SamplingParams(temperature=temperature, top_p=1.0 if req.top_p is None else req.top_p,
                                  top_k=max(req.top_k or 0, 0), seed=req.seed)
        return Sequence(prompt=prompt, max_tokens=max_tokens, sampling=sampling, emit=emit, stops=req.stop_strings(),
                        eos=frozenset() if req.ignore_eos else self.eos)

    # ---- endpoints ---------------------------------------------------------------------------
    async def complete(self, request: Request, req: CompletionRequest):
        prompt = self.completion_prompt(req)
        return await self._run(request, req, prompt, req.max_tokens, chat=False)

    async def chat(self, request: Request, req: ChatCompletionRequest):
        prompt = self.chat_prompt(req)
        return await self._run(request, req, prompt, req.requested_max_tokens(), chat=True)

    async def _run(self, request: Request, req, prompt: list[int], max_tokens: int | None, *, chat: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        seq = self.sequence(req, prompt, max_tokens, emit)
        if not self.engine.alive:
            raise APIError(503, "the engine is not running", code="engine_stopped", headers={"Retry-After": "5"})
        watcher = asyncio.ensure_future(_watch_disconnect(request, self.engine, seq, events))
        self.engine.submit(seq)
        try:
            first = await events.get()
        except BaseException:
            self.engine.cancel(seq)
            watcher.cancel()
            raise
        if first.kind != "admitted":
            watcher.cancel()
            _raise_for(first)
        rid = protocol.new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = self._stream(events, seq, watcher, rid, chat, include_usage)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            pieces = []
            while True:
                event = await events.get()
                if event.kind == "delta":
                    pieces.append(event.text)
                elif event.kind == "done":
                    pieces.append(event.text)
                    break
                else:
                    _raise_for(event)
        finally:
            watcher.cancel()
        text, use = "".join(pieces), protocol.usage(event.prompt_tokens, event.completion_tokens)
        if chat:
            return JSONResponse(protocol.chat_body(rid, self.model_name, text, event.finish_reason, use))
        return JSONResponse(protocol.completion_body(rid, self.model_name, text, event.finish_reason, use))

    async def _stream(self, events: asyncio.Queue, seq: Sequence, watcher, rid: str, chat: bool, include_usage: bool):
        model, finished = self.model_name, False

        def piece(text: str, finish_reason: str | None = None) -> str:
            if chat:
                delta = {"content": text} if text or finish_reason is None else {}
                body = protocol.chat_chunk(rid, model, delta, finish_reason)
            else:
                body = protocol.completion_body(rid, model, text, finish_reason, None, chunk=True)
            return _sse(body)

        try:
            if chat:
                yield _sse(protocol.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None))
            while True:
                event = await events.get()
                if event.kind == "delta":
                    yield piece(event.text)
                elif event.kind == "done":
                    finished = True
                    if event.text:
                        yield piece(event.text)
                    yield piece("", event.finish_reason)
                    if include_usage:
                        obj = "chat.completion.chunk" if chat else "text_completion"
                        use = protocol.usage(event.prompt_tokens, event.completion_tokens)
                        yield _sse(protocol.usage_chunk(rid, model, obj, use))
                    yield "data: [DONE]\n\n"
                    return
                elif event.kind == "cancelled":
                    return
                else:
                    finished = True
                    error = APIError(event.status or 500, event.message or "generation failed")
                    yield _sse(error.body())
                    yield "data: [DONE]\n\n"
                    return
        finally:
            watcher.cancel()
            if not finished:
                self.engine.cancel(seq)


def _sse(body: dict) -> str:
    return "data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def _raise_for(event: Event) -> None:
    if event.kind == "cancelled":
        raise APIError(499, "the client closed the request", code="client_closed")
    headers = {"Retry-After": str(event.retry_after)} if event.retry_after else None
    code = "insufficient_memory" if event.status == 503 else None
    raise APIError(event.status or 500, event.message or "generation failed", code=code, headers=headers)


async def _watch_disconnect(request: Request, engine: Engine, seq: Sequence, events: asyncio.Queue) -> None:
    """Cancel ``seq`` as soon as the client disconnects (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            engine.cancel(seq)
            events.put_nowait(Event("cancelled"))
            return
