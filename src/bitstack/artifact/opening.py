"""Opening an artifact wherever it is: :func:`open_artifact`, the one function the library opens
every artifact with (a local folder or a URL)."""

from __future__ import annotations

from pathlib import Path

from bitstack.artifact.reader import ArtifactReader
from bitstack.remote.urls import is_remote


def open_artifact(path: str | Path, *, verify: bool = True, remote=None) -> ArtifactReader:
    """The reader of the artifact at ``path``: what the library opens every artifact with.

    ``path``: a local folder (an :class:`ArtifactReader`), or an ``https://``, ``http://`` or
    ``hf://`` location (a :class:`~bitstack.remote.reader.RemoteReader`, which fetches what each
    read needs into the local cache; ``remote``: its :class:`~bitstack.remote.urls.RemoteOptions`,
    default: :func:`~bitstack.remote.urls.options_for`).
    verify: check every block read against its xxh3-128 and the base and tokenizer files against
    their sha256 (off: only sizes and headers are checked).
    """
    if is_remote(path):
        from bitstack.remote.reader import RemoteReader  # only remote artifacts need it

        return RemoteReader(path, verify=verify, options=remote)
    return ArtifactReader(path, verify=verify)
