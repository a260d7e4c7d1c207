import pytest
from tiny_models import tiny_model
from torch import nn

from bitstack.errors import UnsupportedModelError
from bitstack.models.architecture import find_decoder_layers, layer_linears, plan_folds

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "opt", "gpt_neox", "phi3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_finds_layers_and_linears(family):
    model = tiny_model(family)
    stack = find_decoder_layers(model)
    assert len(stack.layers) == model.config.num_hidden_layers
    linears = layer_linears(stack.layers[0])
    assert len(linears) >= 3 and all(isinstance(m, nn.Linear) for m in linears.values())


def test_llama_gqa_keeps_o_proj_at_run_time():
    model = tiny_model("llama")  # 4 heads, 2 kv heads
    layer = find_decoder_layers(model).layers[0]
    plan = plan_folds("llama", layer, layer_linears(layer), model.config)
    assert plan["self_attn.q_proj"].producer == "input_layernorm"
    assert plan["mlp.down_proj"].producer == "mlp.up_proj"
    assert "self_attn.o_proj" not in plan


def test_llama_mha_folds_o_proj_into_v_rows():
    model = tiny_model("llama", num_key_value_heads=4)
    layer = find_decoder_layers(model).layers[0]
    plan = plan_folds("llama", layer, layer_linears(layer), model.config)
    assert plan["self_attn.o_proj"].producer == "self_attn.v_proj"


def test_unknown_family_folds_nothing():
    model = tiny_model("gpt_neox")
    layer = find_decoder_layers(model).layers[0]
    assert plan_folds("gpt_neox", layer, layer_linears(layer), model.config) == {}


def test_model_without_decoder_layers_is_rejected():
    with pytest.raises(UnsupportedModelError, match="no list of decoder layers"):
        find_decoder_layers(nn.Sequential(nn.Embedding(4, 4), nn.ReLU()))


def test_gpt2_conv1d_is_rejected_with_what_was_seen():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(UnsupportedModelError, match="Conv1D"):
        find_decoder_layers(model)
