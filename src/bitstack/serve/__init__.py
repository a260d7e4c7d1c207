"""``bitstack serve``: an OpenAI-compatible server that lives within the memory it is given.

Modules: :mod:`~bitstack.serve.budget` (the memory rule), :mod:`~bitstack.serve.weights`
(weights and target), :mod:`~bitstack.serve.kvbatch` (the left-padded decode batch),
:mod:`~bitstack.serve.engine` (continuous batching), :mod:`~bitstack.serve.app` and
:mod:`~bitstack.serve.generation` (HTTP), :mod:`~bitstack.serve.server` (wiring),
:mod:`~bitstack.cli.serve`.  docs/serve.md describes the server.  Importing this package is
light; FastAPI and uvicorn (the ``serve`` extra) are needed only to run it.
"""
