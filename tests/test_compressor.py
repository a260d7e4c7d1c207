"""Compressor-level rules that no single core function owns."""

import torch
from tiny_models import tiny_model, tiny_tokenizer

import bitstack
from bitstack.codecs.planes.settings import FEEDBACK_TOKENS_PER_INPUT
from bitstack.config import CompressConfig
from bitstack.runtime.linear import BitStackLinear


def _signs(path) -> dict[str, list[torch.Tensor]]:
    model = bitstack.load(path, device="cpu")
    return {name: [block.signs for block in module.blocks]
            for name, module in model.named_modules() if isinstance(module, BitStackLinear)}


def _compress(tmp_path, name: str, signs: str, nsamples: int, seqlen: int):
    torch.manual_seed(0)
    config = CompressConfig(calib="self", nsamples=nsamples, seqlen=seqlen, niter=4, group_size=16, batch_size=4,
                            signs=signs, dtype="float32")
    return bitstack.compress(tiny_model("llama"), tmp_path / name, config, tokenizer=tiny_tokenizer(), device="cpu",
                             progress=False)


def test_error_feedback_needs_enough_calibration_tokens(tmp_path):
    """The tiny Llama's linears read 48 (attention, gate/up) or 96 (down) input columns. With fewer
    than FEEDBACK_TOKENS_PER_INPUT tokens per column the joint signs are exactly the nearest ones;
    with enough tokens the feedback changes some of them."""
    few = FEEDBACK_TOKENS_PER_INPUT * 48 - 8  # 88 tokens: too few for every linear
    assert few == 11 * 8
    joint, nearest = (_signs(_compress(tmp_path, f"{s}-few.bstk", s, 11, 8)) for s in ("joint", "nearest"))
    assert joint.keys() == nearest.keys()
    for name in joint:
        assert all(torch.equal(a, b) for a, b in zip(joint[name], nearest[name])), name
    many = 8 * 32  # 256 tokens >= 2 x 96
    assert many >= FEEDBACK_TOKENS_PER_INPUT * 96
    joint, nearest = (_signs(_compress(tmp_path, f"{s}-many.bstk", s, 8, 32)) for s in ("joint", "nearest"))
    changed = [name for name in joint if not all(torch.equal(a, b) for a, b in zip(joint[name], nearest[name]))]
    assert "model.layers.0.mlp.down_proj" in changed and len(changed) == len(joint)
