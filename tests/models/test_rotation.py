import pytest
import torch
from tiny_models import tiny_model

from bitstack.errors import UnsupportedModelError
from bitstack.models.architecture import find_decoder_layers
from bitstack.models.rotation import INPUT_ROTATION, NORM_ROTATION, has_input_rotation, rotate_model

CASES = [("llama", {}), ("llama", {"num_key_value_heads": 4}), ("llama", {"tie_word_embeddings": True}),
         ("llama", {"attention_bias": True, "mlp_bias": True}), ("qwen2", {}), ("qwen2", {"tie_word_embeddings": True}),
         ("qwen3", {}), ("mistral", {})]


@pytest.mark.parametrize("family,extra", CASES)
def test_rotated_model_computes_the_same_logits(family, extra):
    model = tiny_model(family, **extra).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()  # non-zero biases, so that their rotation is exercised
    ids = torch.randint(4, 64, (2, 16))
    with torch.no_grad():
        before = model(ids).logits
        weights = {n: p.clone() for n, p in model.named_parameters()}
        rotate_model(model, seed=3)
        after = model(ids).logits
    # float64 model, but transformers' RMSNorm computes in float32: agreement to float32 rounding
    assert float((after - before).abs().max() / before.abs().max()) < 1e-6
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, weights[n])]
    assert any("embed" in n for n in changed) and any("down_proj" in n for n in changed)
    if extra.get("tie_word_embeddings"):
        assert model.lm_head.weight is model.get_input_embeddings().weight  # the tie is kept
    for layer in find_decoder_layers(model).layers:
        assert torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
        assert has_input_rotation(layer.mlp.down_proj) and not has_input_rotation(layer.mlp.up_proj)
    assert getattr(model.base_model.norm, NORM_ROTATION).dtype == torch.int8


def test_rotation_spreads_an_outlier_column():
    model = tiny_model("llama").double()
    layer = find_decoder_layers(model).layers[0]
    with torch.no_grad():
        layer.self_attn.q_proj.weight[:, 5] *= 50  # one loud input channel
        before = layer.self_attn.q_proj.weight.abs().amax(0)
        rotate_model(model, seed=0)
        after = layer.self_attn.q_proj.weight.abs().amax(0)
    assert float(before.max() / before.median()) > 10
    assert float(after.max() / after.median()) < 3


def test_seeds_draw_different_rotations():
    a, b = tiny_model("llama"), tiny_model("llama")
    rotate_model(a, seed=0)
    rotate_model(b, seed=1)
    down_a = getattr(find_decoder_layers(a).layers[0].mlp.down_proj, INPUT_ROTATION)
    down_b = getattr(find_decoder_layers(b).layers[0].mlp.down_proj, INPUT_ROTATION)
    assert not torch.equal(down_a, down_b)


def test_unsupported_models_are_refused():
    with pytest.raises(UnsupportedModelError, match="rotations support"):
        rotate_model(tiny_model("opt"), seed=0)
    with pytest.raises(UnsupportedModelError, match="no Hadamard matrix of order 36"):
        rotate_model(tiny_model("llama", hidden_size=36, num_attention_heads=2, num_key_value_heads=2), seed=0)
