"""Building and running a server: load the artifact at the size the target allows, start the
engine, serve the app with uvicorn.

:func:`build` is the one place that wires model, tokenizer, target, engine and app together;
the CLI (:mod:`bitstack.cli.serve`), the tests and the pressure benchmark all use it.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bitstack.artifact.opening import open_artifact
from bitstack.errors import InputError
from bitstack.memory import format_bytes, parse_memory
from bitstack.remote.urls import is_remote
from bitstack.serve import budget
from bitstack.serve.engine import Engine, EngineConfig
from bitstack.serve.generation import Limits
from bitstack.serve.options import ServeOptions
from bitstack.serve.weights import Target


@dataclass
class Server:
    """A built server: ``app`` (ASGI) around a started ``engine``."""

    app: object
    engine: Engine
    model_name: str
    admin_key: str
    api_key: str | None
    options: ServeOptions
    info: dict = field(default_factory=dict)
    runner: object = None  # the uvicorn.Server while :func:`serve_forever` runs

    def startup_line(self, host: str, port: int) -> str:
        s = self.engine.snapshot
        return (f"bitstack serve: {self.model_name} on http://{_url_host(host)}:{port}/v1 "
                f"(weights {format_bytes(s['weight_resident_bytes'])} = {s['bits_per_param']:.2f} bits/param, "
                f"floor {format_bytes(s['weight_floor_bytes'])}, full {format_bytes(s['weight_full_bytes'])}; "
                f"memory target {self.engine.target.describe()}; KV {format_bytes(s['kv_bytes_per_token'])}/token; "
                f"device {self.engine.device}; dashboard http://{_url_host(host)}:{port}/dashboard)")

    def request_exit(self) -> None:
        """Ask :func:`serve_forever` to return (what Ctrl-C does), from any thread."""
        if self.runner is not None:
            self.runner.should_exit = True

    def close(self) -> None:
        self.engine.stop()


def check_host(host: str, api_key: str | None) -> None:
    """A host other than loopback needs an API key."""
    if not host:
        raise InputError("--host is empty: give 127.0.0.1 (default) or an address to listen on")
    if not _is_loopback(host) and not api_key:
        raise InputError(f"--host {host} listens beyond this machine: give --api-key KEY (or bind 127.0.0.1)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_options(options: ServeOptions) -> None:
    for name in ("max_batch", "max_queue", "prefill_chunk", "max_tokens_limit"):
        if getattr(options, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}")
    if options.max_prompt_tokens is not None and options.max_prompt_tokens < 1:
        raise InputError(f"--max-prompt-tokens must be at least 1, got {options.max_prompt_tokens}")
    if not options.queue_timeout > 0:
        raise InputError(f"--queue-timeout must be positive, got {options.queue_timeout}")
    if not 0 <= options.port <= 65535:
        raise InputError(f"--port must be 0..65535, got {options.port}")
    if parse_memory(options.max_body) < 1024:
        raise InputError(f"--max-body must be at least 1kB, got {options.max_body}")
    parse_memory(options.reserve)
    if options.memory.strip().lower() != "auto":
        parse_memory(options.memory)


def load_curve(path: Path) -> dict | None:
    """The main series of a ``bitstack curve`` JSON file, as the dashboard draws it; None when absent."""
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        label, points = next(iter(body["series"].items()))
        keep = [{k: p.get(k) for k in ("bits_per_param", "memory_bytes", "ppl")} for p in points]
    except (OSError, ValueError, KeyError, StopIteration, AttributeError) as err:
        raise InputError(f"curve file {path} is not a 'bitstack curve' JSON file ({err})") from err
    return {"label": label, "points": keep, "source": str(path)}


def build(artifact: str | Path, options: ServeOptions = ServeOptions(), *, model=None, tokenizer=None) -> Server:
    """Load ``artifact`` (or take ``model`` and ``tokenizer``: e.g. a float baseline) and build
    the server; the engine is started.  Raises :class:`~bitstack.errors.BitstackError` for bad
    options or a target that cannot hold the floor and one token."""
    import bitstack
    from bitstack.serve.app import create_app

    _check_options(options)
    check_host(options.host, options.api_key)
    remote = is_remote(artifact)
    # a local folder as a Path; a URL as given (it may carry the command line's remote options)
    location = artifact if remote else Path(artifact)
    name_part = _last_part(str(artifact)) if remote else location.name
    if model is None:
        target = Target(options.memory, reserve=options.reserve, device=_device(options.device))
        floor, full = _floor_and_full(location, options.dtype)
        size = min(full, target.value(0) if not target.auto else max(floor, target.value(0)))
        model = bitstack.load(location, size, device=options.device, dtype=options.dtype)  # BudgetError below the floor
        tokenizer = bitstack.load_tokenizer(location)
        target.device = model.bitstack.device
    else:
        target = Target(options.memory, reserve=options.reserve, device=next(model.parameters()).device)
    config = EngineConfig(max_batch=options.max_batch, max_queue=options.max_queue, queue_timeout=options.queue_timeout,
                          prefill_chunk=options.prefill_chunk)
    engine = Engine(model, _engine_tokenizer(tokenizer), target, config)
    context = engine.shape.context
    smallest = budget.committed_bytes([budget.Request(1, 1)], engine.shape, engine.runner.kv_per_token, config.prefill_chunk)
    if not target.auto and engine.weights.floor + smallest > target.value(0):
        raise InputError(f"--memory {options.memory} cannot hold the weights' floor ({format_bytes(engine.weights.floor)}) "
                         f"plus one token of KV cache and working memory ({format_bytes(smallest)})")
    limits = Limits(max_prompt_tokens=min(options.max_prompt_tokens or context, context),
                    max_tokens=options.max_tokens_limit, max_body_bytes=parse_memory(options.max_body), context=context)
    name = options.model_name or name_part or "model"
    default_curve = None if remote else location.with_name(location.name + "-curve.json")
    curve = load_curve(Path(options.curve)) if options.curve else (load_curve(default_curve) if default_curve else None)
    info = _info(engine, location, curve)
    admin_key = options.api_key or secrets.token_urlsafe(24)
    engine.start()
    app = create_app(engine, tokenizer, model_name=name, limits=limits, api_key=options.api_key, admin_key=admin_key,
                     curve=curve, info=info)
    return Server(app=app, engine=engine, model_name=name, admin_key=admin_key, api_key=options.api_key,
                  options=options, info=info)


def _device(name: str | None) -> torch.device:
    """The device an auto target probes (``bitstack.load`` checks it in full)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"cannot parse device {name!r}: use cpu, cuda or cuda:N") from err


_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def _last_part(url: str) -> str:
    """The model id a URL gives by default: its last path part (``https://h/m/smol.bstk`` ->
    ``smol.bstk``; ``hf://org/repo@v1`` -> ``repo``)."""
    return url.rstrip("/").removesuffix("/manifest.json").rsplit("/", 1)[-1].split("@", 1)[0]


def _floor_and_full(location, dtype: str | None) -> tuple[int, int]:
    """Upper bounds of an artifact's floor and full resident bytes at ``dtype``, from its
    manifest (the stored sizes, with every non-decomposed byte widened when ``dtype`` is wider
    than the stored one); the loaded model then knows the exact ones.  ``location``: a folder or
    a URL (read through :func:`~bitstack.artifact.opening.open_artifact`)."""
    with open_artifact(location, verify=False) as reader:  # ArtifactError (a BitstackError) when unreadable
        m = reader.manifest
    return widened(m.floor_bytes, m.full_bytes, m.base_bytes, m.compression.get("dtype", "bfloat16"), dtype)


def widened(floor: int, full: int, base: int, stored: str, dtype: str | None) -> tuple[int, int]:
    """(floor, full) resident bytes when the ``base`` non-decomposed bytes, stored at ``stored``,
    are computed at ``dtype`` (None: as stored): every base byte widens when ``dtype`` is wider."""
    size = _ITEMSIZE.get(stored, 2)
    widen = base * max(0, _ITEMSIZE.get(dtype or "", size) // size - 1)
    return floor + widen, full + widen


def _engine_tokenizer(tokenizer):
    """The engine decodes on its own thread: give it its own copy of a fast tokenizer."""
    import copy

    try:
        return copy.deepcopy(tokenizer)
    except Exception:  # a tokenizer that cannot be copied is shared (decode does not mutate it)
        return tokenizer


def _info(engine: Engine, path: Path, curve: dict | None) -> dict:
    w = engine.weights
    stack = w.stack
    if stack is not None:
        m = stack.manifest
        params = m.decomposed_params()
        floor_bits = 8.0 * (m.prefix_bytes[m.floor_blocks] - m.base_bytes) / params
        full_bits = 8.0 * (m.prefix_bytes[-1] - m.base_bytes) / params
    else:
        floor_bits = full_bits = w.bits_per_param
    return {"artifact": str(path), "device": str(engine.device), "dtype": str(engine.shape.itemsize * 8) + "-bit",
            "floor_bytes": w.floor, "full_bytes": w.full, "floor_bits": floor_bits, "full_bits": full_bits,
            "kv_bytes_per_token": engine.runner.kv_per_token, "curve_measured": curve is not None}


def serve_forever(server: Server, host: str, port: int, *, log_level: str = "warning", on_ready=None) -> None:
    """Run uvicorn on ``host:port`` (port 0: any free port) until interrupted; ``on_ready(port)``
    is called once it listens.  The engine is stopped on the way out."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    bound = sock.getsockname()[1]
    config = uvicorn.Config(server.app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    runner = uvicorn.Server(config)
    server.runner = runner
    if on_ready is not None:
        def announce() -> None:
            while not runner.started and not runner.should_exit:
                threading.Event().wait(0.02)
            if runner.started:
                on_ready(bound)
        threading.Thread(target=announce, daemon=True).start()
    try:
        runner.run(sockets=[sock])
    finally:
        sock.close()
        server.close()
