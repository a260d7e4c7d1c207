import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import triton_interpreter  # noqa: E402

triton_interpreter.setup()  # before any test module imports bitstack.kernels (and so Triton)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def _compress_tiny(tmp_path_factory, name: str, **settings):
    from tiny_models import tiny_model, tiny_tokenizer

    import bitstack
    from bitstack.config import CompressConfig

    model = tiny_model("llama", num_hidden_layers=3)
    reference = tiny_model("llama", num_hidden_layers=3)  # identical weights, never modified
    tokenizer = tiny_tokenizer()
    path = tmp_path_factory.mktemp("art") / name
    config = CompressConfig(nsamples=4, seqlen=32, niter=6, dtype="float32", batch_size=2, **settings)
    bitstack.compress(model, path, config, tokenizer=tokenizer, device="cpu", progress=False)
    return path, reference, tokenizer


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """A compressed tiny Llama (GQA, so o_proj keeps a run-time scale) with its float model:
    the default codec (planes), groups of 16 so that every weight has several groups."""
    return _compress_tiny(tmp_path_factory, "tiny.bstk", group_size=16, shard_mb=0.01)


@pytest.fixture(scope="session")
def tiny_avd_artifact(tmp_path_factory):
    """The same tiny Llama compressed with the paper's codec (avd, rank 4): the Triton kernels' input."""
    return _compress_tiny(tmp_path_factory, "tiny-avd.bstk", codec="avd", rank=4, shard_mb=0.05)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama saved as a Hugging Face model folder, with its tokenizer."""
    from tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
