"""The options of ``bitstack serve`` and their defaults (light: no torch, no FastAPI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``bitstack serve`` takes (the CLI's defaults)."""

    memory: str = "auto"
    reserve: str = "512MB"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_batch: int = 16
    max_queue: int = 256
    queue_timeout: float = 120.0
    prefill_chunk: int = 256
    max_prompt_tokens: int | None = None  # default: the model's context
    max_tokens_limit: int = 1024
    max_body: str = "1MB"
    model_name: str | None = None  # default: the artifact folder's name
    curve: str | None = None  # default: ARTIFACT-curve.json next to the artifact, when it exists
