import pytest
from tiny_models import tiny_model, tiny_tokenizer

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "opt", "gpt_neox", "phi3"]


@pytest.fixture(scope="session", params=FAMILIES)
def family_artifact(request, tmp_path_factory):
    """(family, artifact path) of a tiny random model of each tested family, codec planes."""
    import bitstack
    from bitstack.config import CompressConfig

    path = tmp_path_factory.mktemp("fam") / f"{request.param}.bstk"
    config = CompressConfig(nsamples=4, seqlen=16, niter=4, dtype="float32", batch_size=4, group_size=16)
    bitstack.compress(tiny_model(request.param), path, config, tokenizer=tiny_tokenizer(), device="cpu", progress=False)
    return request.param, path
