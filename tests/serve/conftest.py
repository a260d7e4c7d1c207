"""Fixtures of the serve tests: a tiny compressed model with a chat template (helpers for
running a server are in helpers.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve tests need the 'serve' extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="the serve tests need the 'serve' extra (fastapi, uvicorn)")


@pytest.fixture(scope="session")
def serve_artifact(tmp_path_factory):
    """A compressed tiny Llama (2 layers, codec planes, float32) whose tokenizer has a chat
    template; calibrated on a word file and sorted by the proxy order (no sampling: fast)."""
    import random

    from serve.helpers import CHAT_TEMPLATE
    from tiny_models import WORDS, tiny_model, tiny_tokenizer

    import bitstack
    from bitstack.config import CompressConfig

    folder = tmp_path_factory.mktemp("serve")
    calib = folder / "calib.txt"
    rng = random.Random(0)
    calib.write_text(" ".join(rng.choice(WORDS) for _ in range(2000)))
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    path = folder / "tiny-serve.bstk"
    config = CompressConfig(nsamples=4, seqlen=32, niter=4, dtype="float32", batch_size=2, group_size=16, shard_mb=0.01,
                            sort="proxy", calib=str(calib))
    bitstack.compress(tiny_model("llama", num_hidden_layers=2), path, config, tokenizer=tokenizer, device="cpu",
                      progress=False)
    return path
