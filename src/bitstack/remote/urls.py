"""What a remote artifact location is: ``https://…/ART``, ``http://…/ART`` or ``hf://ORG/REPO[@REV][/SUBDIR]``.

An artifact is a folder; its URL names the folder, and each of its files (``manifest.json``,
``base.safetensors``, the shards, the tokenizer files) is fetched from ``URL/NAME``.  ``hf://``
locations are turned into the Hub's download URLs (``{endpoint}/{repo}/resolve/{rev}/{file}``)
by ``huggingface_hub``, with the user's token; ``HF_ENDPOINT`` is honoured, read at call time.

This module imports nothing heavy: :func:`is_remote` is what the artifact factory calls for every
path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, urlsplit

from bitstack.errors import InputError
from bitstack.memory import parse_memory

SCHEMES = ("https://", "http://", "hf://")
DEFAULT_CACHE_LIMIT = "50GB"


def is_remote(path: object) -> bool:
    """Whether ``path`` is a remote artifact location (a str starting with https://, http:// or hf://)."""
    return isinstance(path, str) and path[:8].lower().startswith(SCHEMES)


def default_cache_dir() -> Path:
    """``$BITSTACK_CACHE``, else ``$XDG_CACHE_HOME/bitstack``, else ``~/.cache/bitstack`` (read at call time)."""
    explicit = os.environ.get("BITSTACK_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "bitstack"


@dataclass(frozen=True)
class RemoteOptions:
    """How remote artifacts are fetched and cached.

    cache_dir: the cache folder (default: :func:`default_cache_dir`).
    cache_limit: bytes the cache may hold on disk (``"20GB"``, an int; default
        ``$BITSTACK_CACHE_LIMIT`` or 50GB); see :mod:`bitstack.remote.evict` for the rule.
    connections: parallel HTTP connections for block ranges.
    request_bytes: at most this many bytes of back-to-back blocks per range request (one block
        larger than it is one request).
    timeout: seconds a connect or a read may wait before the attempt counts as failed.
    retries: attempts after the first one for a request that fails without progress (dropped
        connection, timeout, HTTP 5xx/429), waiting ``backoff`` × 2^k seconds before attempt k+1.
    offline: use the cached manifest of the URL and cached files only; never touch the network.
    token: Hugging Face token for ``hf://`` (default: ``huggingface_hub``'s, e.g. ``HF_TOKEN``).
    """

    cache_dir: str | Path | None = None
    cache_limit: int | str | None = None
    connections: int = 4
    request_bytes: int = 4 * 1000 * 1000
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.5
    offline: bool = False
    token: str | None = field(default=None, repr=False)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir is not None else default_cache_dir()

    def resolved_cache_limit(self) -> int:
        limit = self.cache_limit if self.cache_limit is not None else os.environ.get("BITSTACK_CACHE_LIMIT", DEFAULT_CACHE_LIMIT)
        return parse_memory(limit)

    def check(self) -> "RemoteOptions":
        """Raise :class:`InputError` for an option out of range; return self."""
        for name in ("connections", "request_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"remote option {name} must be a positive integer, got {value!r}")
        for name in ("timeout", "backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise InputError(f"remote option {name} must be a finite number of seconds >= 0, got {value!r}")
        if self.timeout == 0:
            raise InputError("remote option timeout must be more than 0 seconds")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InputError(f"remote option retries must be an integer >= 0, got {self.retries!r}")
        try:
            self.resolved_cache_limit()
        except InputError as err:
            raise InputError(f"remote option cache_limit: {err}") from err
        return self


class RemoteURL(str):
    """A remote location that carries the :class:`RemoteOptions` to open it with (what the command
    line's artifact argument becomes, :mod:`bitstack.remote.cli_options`); otherwise the str."""

    options: RemoteOptions

    def __new__(cls, url: str, options: RemoteOptions) -> "RemoteURL":
        self = super().__new__(cls, url)
        self.options = options
        return self


def options_for(url: str, options: RemoteOptions | None) -> RemoteOptions:
    """The options to open ``url`` with: ``options`` if given, else those a :class:`RemoteURL`
    carries, else the defaults."""
    if options is None:
        options = getattr(url, "options", None)
    return options if options is not None else RemoteOptions()


def with_cache_dir(options: RemoteOptions | None, cache_dir: str | Path | None) -> RemoteOptions | None:
    """``options`` (default ones if None) with ``cache_dir`` when it is given; else ``options`` as is."""
    if cache_dir is None:
        return options
    return replace(options if options is not None else RemoteOptions(), cache_dir=cache_dir)


@dataclass(frozen=True)
class Location:
    """A remote artifact folder.

    url: what the user wrote; base: the folder's URL, ending in ``/``; headers: sent to the host
    of ``base`` only (a redirect to another host drops them); hint: what a 401/403 error adds.
    """

    url: str
    base: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    hint: str = ""

    def file_url(self, name: str) -> str:
        return self.base + quote(name)


def resolve(url: str, options: RemoteOptions) -> Location:
    """The :class:`Location` of ``url``; :class:`InputError` for a malformed one."""
    if not is_remote(url):
        raise InputError(f"{url!r} is not a remote artifact location (https://, http:// or hf://)")
    if url[:5].lower() == "hf://":
        return _resolve_hf(url, options)
    parts = urlsplit(url)
    if not parts.hostname:
        raise InputError(f"artifact URL {url!r} has no host")
    if parts.username or parts.password:
        raise InputError(f"artifact URL {url!r} carries credentials: remove user:password@ from it")
    if parts.query or parts.fragment:
        raise InputError(f"artifact URL {url!r} must name the artifact folder, without ?query or #fragment")
    path = parts.path
    if path.endswith("/manifest.json"):
        path = path[: -len("manifest.json")]
    if not path.endswith("/"):
        path += "/"
    base = f"{parts.scheme.lower()}://{parts.netloc}{path}"
    return Location(url=url, base=base, hint="")


def _resolve_hf(url: str, options: RemoteOptions) -> Location:
    """``hf://[datasets/]ORG/REPO[@REV][/SUBDIR]`` through ``huggingface_hub`` (token, ``HF_ENDPOINT``)."""
    rest = url[5:].strip("/")
    parts = [p for p in rest.split("/") if p]
    repo_type = None
    if parts and parts[0] in ("datasets", "models"):
        repo_type = "dataset" if parts[0] == "datasets" else None
        parts = parts[1:]
    if len(parts) < 2:
        raise InputError(f"{url!r} must look like hf://ORG/REPO[@REVISION][/SUBFOLDER]")
    name, _, revision = parts[1].partition("@")
    if not name or (_ and not revision):
        raise InputError(f"{url!r} must look like hf://ORG/REPO[@REVISION][/SUBFOLDER]")
    repo_id = f"{parts[0]}/{name}"
    subfolder = "/".join(parts[2:]) or None
    if subfolder and ".." in subfolder.split("/"):
        raise InputError(f"{url!r}: the subfolder must not contain '..'")
    try:
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers
    except ImportError as err:  # pragma: no cover - a dependency of transformers
        raise InputError("hf:// locations need the huggingface_hub package: pip install huggingface_hub") from err
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    manifest_url = hf_hub_url(repo_id, "manifest.json", subfolder=subfolder, repo_type=repo_type,
                              revision=revision or None, endpoint=endpoint)
    base = manifest_url[: -len("manifest.json")]
    headers = {} if options.offline else dict(build_hf_headers(token=options.token, library_name="bitstack"))
    hint = ": log in with `hf auth login` or set HF_TOKEN, and check that the repository exists and you can read it"
    return Location(url=url, base=base, headers=headers, hint=hint)

