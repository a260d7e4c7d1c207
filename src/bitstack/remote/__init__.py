"""Remote artifacts: load a budget by fetching only its prefix of the stack over HTTP.

``bitstack.load("https://host/path/model.bstk", memory="120MB")`` (or ``hf://org/repo``) fetches
the manifest, the base weights and the tokenizer whole, then only the byte ranges of the blocks
in the budget's prefix, verifies every block, and keeps them in a local cache
(:mod:`bitstack.remote.cache`).  Growing fetches only the missing ranges; ``progressive=True``
starts at the floor and attaches blocks as they arrive (:mod:`bitstack.remote.progressive`).
See ``docs/remote.md``.

Modules: :mod:`~bitstack.remote.urls` (what a location is), :mod:`~bitstack.remote.http` (ranged
GETs with retries), :mod:`~bitstack.remote.cache` (the cache directory and its index),
:mod:`~bitstack.remote.evict` (the size limit), :mod:`~bitstack.remote.fetch` (parallel block
fetches and whole-file downloads), :mod:`~bitstack.remote.reader` (``RemoteReader``),
:mod:`~bitstack.remote.progressive`, :mod:`~bitstack.remote.testing` (a local server for tests
and benchmarks).
"""
