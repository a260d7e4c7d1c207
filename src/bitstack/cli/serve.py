"""``bitstack serve``: the command line of the OpenAI-compatible server (:mod:`bitstack.serve`).

:func:`register` adds the subcommand; its function is :func:`run`.  FastAPI and uvicorn are
imported only when the command runs, so a missing ``serve`` extra is a one-line error.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from bitstack.errors import InputError
from bitstack.remote.cli_options import add_artifact_argument
from bitstack.serve.options import ServeOptions

_D = ServeOptions()


def register(sub) -> argparse.ArgumentParser:
    """Add ``serve`` to ``sub`` (an argparse sub-parsers action); returns its parser."""
    p = sub.add_parser(
        "serve", help="OpenAI-compatible server that lives within a memory target",
        description="Serve an artifact over the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models) with "
                    "continuous batching. One memory target covers weights, KV cache and working memory: the weights "
                    "shed blocks before a request is refused, and grow back when memory frees. Also /health, "
                    "/metrics (Prometheus), /dashboard and POST /admin/memory (needs the admin key).")
    add_artifact_argument(p)  # a folder or a URL (https://, hf://)
    p.add_argument("--memory", default=_D.memory, help="memory target: a size (300MB, 1.5GiB) or 'auto' = free device "
                   "memory (available RAM on CPU) minus --reserve, followed live (default: auto)")
    p.add_argument("--reserve", default=_D.reserve, help=f"with --memory auto: memory left to others (default: {_D.reserve})")
    p.add_argument("--host", default=_D.host, help=f"address to listen on (default: {_D.host}; any other needs --api-key)")
    p.add_argument("--port", type=int, default=_D.port, help=f"port (default: {_D.port}; 0 picks a free one)")
    p.add_argument("--api-key", default=None, help="key clients send as 'Authorization: Bearer KEY' (also the admin "
                   "key); without it /v1 is open and a random admin key is printed at start")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")
    p.add_argument("--max-batch", type=int, default=_D.max_batch, help=f"sequences decoded together (default: {_D.max_batch})")
    p.add_argument("--max-queue", type=int, default=_D.max_queue, help=f"requests waiting for memory before 503s (default: {_D.max_queue})")
    p.add_argument("--queue-timeout", type=float, default=_D.queue_timeout,
                   help=f"seconds a request waits for memory before a 503 (default: {_D.queue_timeout:g})")
    p.add_argument("--prefill-chunk", type=int, default=_D.prefill_chunk, help=f"prompt tokens per prefill pass (default: {_D.prefill_chunk})")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted (default: the model's context)")
    p.add_argument("--max-tokens-limit", type=int, default=_D.max_tokens_limit,
                   help=f"largest max_tokens accepted, and the default of chat requests (default: {_D.max_tokens_limit})")
    p.add_argument("--max-body", default=_D.max_body, help=f"largest request body (default: {_D.max_body})")
    p.add_argument("--model-name", default=None, help="model id clients send (default: the artifact folder's name)")
    p.add_argument("--curve", default=None, help="memory-quality curve JSON for the dashboard (default: ARTIFACT-curve.json "
                   "when it exists, as written by 'bitstack curve')")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: warning)")
    p.set_defaults(func=run)
    return p


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(memory=args.memory, reserve=args.reserve, host=args.host, port=args.port, api_key=args.api_key,
                        device=args.device, dtype=args.dtype, max_batch=args.max_batch, max_queue=args.max_queue,
                        queue_timeout=args.queue_timeout, prefill_chunk=args.prefill_chunk,
                        max_prompt_tokens=args.max_prompt_tokens, max_tokens_limit=args.max_tokens_limit,
                        max_body=args.max_body, model_name=args.model_name, curve=args.curve)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise InputError(f"bitstack serve needs the 'serve' extra ({err.name} is missing): pip install 'bitstack[serve]'") from err
    from bitstack.serve.server import build, serve_forever

    options = options_from_args(args)
    server = build(args.artifact, options)
    admin = "" if options.api_key else f"; admin key {server.admin_key}"

    def ready(port: int) -> None:
        print(server.startup_line(options.host, port) + admin, flush=True)

    previous = _exit_on_sigterm()
    try:
        serve_forever(server, options.host, options.port, log_level=args.log_level, on_ready=ready)
    except SystemExit:  # SIGTERM, after uvicorn's graceful stop: a clean exit with the signal's code
        server.close()
        print("bitstack serve: stopped", file=sys.stderr)
        raise
    except BaseException:
        server.close()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print("bitstack serve: stopped", file=sys.stderr)
    return 0


def _exit_on_sigterm():
    """Make SIGTERM exit with code 143 through ``SystemExit`` (uvicorn stops gracefully on it, then
    raises it again on the way out); returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, terminate)
