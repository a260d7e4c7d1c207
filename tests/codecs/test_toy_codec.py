"""A third codec is one module and one registration: compress -> load -> resize work with it."""

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer
from toy_codec import ToyCodec

import bitstack
import bitstack.codecs as codecs
from bitstack.artifact.opening import open_artifact
from bitstack.config import CompressConfig
from bitstack.errors import InputError
from bitstack.runtime.linear import BitStackLinear


@pytest.fixture()
def toy(monkeypatch):
    monkeypatch.setattr(codecs, "_REGISTRY", dict(codecs._REGISTRY))  # registered for this test only
    return codecs.register_codec(ToyCodec())


def test_registry(toy):
    assert codecs.get_codec("toy") is toy and codecs.codec_names()[-1] == "toy"
    with pytest.raises(InputError, match="already registered"):
        codecs.register_codec(ToyCodec())
    with pytest.raises(InputError, match="unknown codec 'nope'.*planes, avd, toy"):
        codecs.get_codec("nope")


def test_compress_load_resize(toy, tmp_path):
    model, reference = tiny_model("llama"), tiny_model("llama")
    config = CompressConfig(codec="toy", nsamples=4, seqlen=16, niter=5, dtype="float32", batch_size=2,
                            shard_mb=0.01)  # sort: the default, measured with the toy blocks too
    path = bitstack.compress(model, tmp_path / "toy.bstk", config, tokenizer=tiny_tokenizer(), device="cpu",
                             progress=False)
    with open_artifact(path) as reader:
        m = reader.manifest
    assert m.codecs == ("toy",) and all(w.params == {} for w in m.weights)
    assert m.codec_summary() == "codec toy, one magnitude per block"
    assert all(w.block_bytes == 2 + w.out_features * ((w.in_features + 7) // 8) for w in m.weights)
    ids = torch.randint(4, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    loaded = bitstack.load(path, m.floor_bytes, device="cpu")
    assert loaded.bitstack.loaded == m.floor_blocks and bitstack.memory_bytes(loaded) == m.floor_bytes
    errors = []
    with torch.no_grad():
        target = reference(ids).logits
        for budget in (m.floor_bytes, m.prefix_bytes[(m.floor_blocks + len(m.stack)) // 2], None):
            report = bitstack.resize(loaded, budget)
            assert bitstack.memory_bytes(loaded) == report.new_bytes == m.prefix_bytes[loaded.bitstack.loaded]
            fresh = bitstack.load(path, budget, device="cpu")  # a resize holds what a load holds
            for name, module in loaded.bitstack.modules.items():
                assert torch.equal(module.dense_weight(), fresh.bitstack.modules[name].dense_weight())
            logits = loaded(ids).logits
            assert torch.equal(logits, fresh(ids).logits)
            errors.append(float((logits - target).norm() / target.norm()))
    assert errors[2] < errors[1] < errors[0]  # more blocks, closer to the float model
    module = next(m for m in loaded.modules() if isinstance(m, BitStackLinear))
    assert module.codec is toy and module.packed is None  # no packed form: the pure path
