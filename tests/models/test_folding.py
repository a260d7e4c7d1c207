import pytest
import torch
from tiny_models import tiny_model

from bitstack.core.scaling import activation_scale
from bitstack.models.architecture import find_decoder_layers, layer_linears, plan_folds
from bitstack.models.folding import fold_into_norm, fold_into_rows


@pytest.mark.parametrize("family,kv", [("llama", 2), ("llama", 4), ("qwen2", 2), ("qwen3", 2), ("mistral", 2), ("opt", None)])
def test_folding_then_rescaling_is_exact(family, kv):
    """Fold 1/s into producers, multiply consumer columns by s: the float model is unchanged."""
    extra = {"num_key_value_heads": kv} if kv else {}
    model = tiny_model(family, **extra).double()
    ids = torch.randint(4, 64, (2, 16))
    before = model(ids).logits
    with torch.no_grad():
        for layer in find_decoder_layers(model).layers:
            linears = layer_linears(layer)
            plan = plan_folds(family, layer, linears, model.config)
            assert plan, "the family table should fold something"
            for rule in {id(r): r for r in plan.values()}.values():
                s = activation_scale(torch.rand(linears[rule.consumers[0]].in_features) + 0.1, 1).double()
                fold = fold_into_norm if rule.kind == "norm" else fold_into_rows
                fold(layer.get_submodule(rule.producer), 1 / s)
                for consumer in rule.consumers:
                    linears[consumer].weight.mul_(s[None, :])
    after = model(ids).logits
    assert torch.allclose(before, after, rtol=1e-9, atol=1e-9)
