"""The ASGI application of ``bitstack serve`` (FastAPI).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text), ``GET /dashboard`` (+ ``/dashboard/data``),
``GET|POST /admin/memory``.

Security: with an API key, ``/v1/*`` needs ``Authorization: Bearer KEY``; ``/admin/*`` always
needs the admin key (the API key, or one generated at start and printed when there is none).
``/health``, ``/metrics`` and the dashboard are read-only and open.  Bodies over
``max_body_bytes`` get a 413 before they are read; every error is an OpenAI-shaped JSON body,
never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bitstack.errors import BitstackError
from bitstack.serve.engine import Engine
from bitstack.serve.generation import Generator, Limits
from bitstack.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, MemoryRequest, validation_message

log = logging.getLogger("bitstack.serve")


class Edge:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (413, declared or streamed)
    and count every response by endpoint and status (``stats.response``)."""

    def __init__(self, app, limit: int, stats):
        self.app, self.limit, self.stats = app, limit, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_PATHS else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.stats.response(endpoint, message["status"])
            await send(message)

        too_large = APIError(413, f"the request body is larger than this server's limit of {self.limit} bytes",
                             code="request_too_large")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await JSONResponse(too_large.body(), status_code=413)(scope, receive, counted)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        return await self.app(scope, limited, counted)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _parse(request: Request, model: type[BaseModel]):
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        message, param = validation_message(err.errors())
        raise APIError(400, message, param=param) from err


def create_app(engine: Engine, tokenizer, *, model_name: str, limits: Limits, api_key: str | None, admin_key: str,
               curve: dict | None = None, info: dict | None = None) -> FastAPI:
    """The application around a started :class:`Engine` (the caller starts and stops it)."""
    app = FastAPI(title="bitstack serve", docs_url=None, redoc_url=None, openapi_url=None)
    generator = Generator(engine, tokenizer, model_name, limits)
    created = int(time.time())
    stats = engine.stats
    app.add_middleware(Edge, limit=limits.max_body_bytes, stats=stats)
    dashboard_html = resources.files("bitstack.serve").joinpath("static/dashboard.html").read_text(encoding="utf-8")

    def check_key(request: Request, key: str | None, what: str) -> None:
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, f"{what} needs 'Authorization: Bearer KEY' with this server's key", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        message, param = validation_message(list(error.errors()))
        return _error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(error.status_code, str(error.detail))
        return _error_response(APIError(error.status_code, message))

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error_response(APIError(500, f"internal server error ({type(error).__name__})"))

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request, api_key, "/v1")
        return {"object": "list", "data": [_model_card(model_name, created, limits.context)]}

    @app.get("/v1/models/{name:path}")
    async def model(request: Request, name: str):
        check_key(request, api_key, "/v1")
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
        return _model_card(model_name, created, limits.context)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(request, api_key, "/v1")
        return await generator.complete(request, await _parse(request, CompletionRequest))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_key(request, api_key, "/v1")
        return await generator.chat(request, await _parse(request, ChatCompletionRequest))

    @app.get("/health")
    async def health():
        state = engine.snapshot
        ok = engine.alive
        body = {"status": "ok" if ok else "failed", "model": model_name,
                **{k: state[k] for k in ("target_bytes", "weight_resident_bytes", "bits_per_param", "kv_bytes",
                                         "running", "queue_length")}}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(stats.prometheus(engine.snapshot, model_name),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/dashboard")
    async def dashboard():
        return HTMLResponse(dashboard_html)

    @app.get("/dashboard/data")
    async def dashboard_data(since: float = 0.0):
        state = engine.snapshot
        return {"model": model_name, "state": state, "series": stats.series(since), "curve": curve, "info": info or {},
                "resizes": list(stats.resize_log)[-50:], "target": engine.target.describe()}

    @app.get("/")
    async def root():
        return {"model": model_name, "endpoints": sorted(KNOWN_PATHS)}

    @app.get("/admin/memory")
    async def memory_state(request: Request):
        check_key(request, admin_key, "/admin")
        return {"target": engine.target.describe(), **engine.snapshot}

    @app.post("/admin/memory")
    async def set_memory(request: Request):
        check_key(request, admin_key, "/admin")
        body = await _parse(request, MemoryRequest)
        try:
            engine.target.set(body.memory, body.reserve)
        except BitstackError as err:
            raise APIError(400, str(err), param="memory") from err
        applied = await _applied(engine)
        return {"target": engine.target.describe(), "applied": applied, **engine.snapshot}

    return app


async def _applied(engine: Engine, timeout: float = 5.0) -> bool:
    """Wait until the engine has run an iteration after a target change (its shrinks are done)."""
    before = engine.snapshot.get("iteration", 0)
    engine.wake()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.snapshot.get("iteration", 0) > before + 1:
            return True
        await asyncio.sleep(0.01)
    return False


def _model_card(name: str, created: int, context: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "bitstack", "max_model_len": context}


KNOWN_PATHS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics", "/dashboard",
                         "/dashboard/data", "/admin/memory", "/"})
