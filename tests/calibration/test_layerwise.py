"""calibration/layerwise.py run_layer: each distinct linear input is measured once and shared by
the linears that read it; the statistics equal Σ x xᵀ and the channel norms of every input seen."""

import torch
from tiny_models import tiny_model

from bitstack.calibration.layerwise import capture_layer_inputs, run_layer
from bitstack.core.scaling import channel_norm_sum
from bitstack.models.architecture import find_decoder_layers, layer_linears


def _inputs_seen(layer, linears, inputs):
    seen = {name: [] for name in linears}
    handles = [linear.register_forward_pre_hook(lambda m, a, name=name: seen[name].append(a[0].clone()))
               for name, linear in linears.items()]
    for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
        layer(hidden, **kwargs)
    for handle in handles:
        handle.remove()
    return seen


@torch.no_grad()
def test_shared_inputs_are_measured_once_and_exactly():
    model = tiny_model("llama")
    layer = find_decoder_layers(model).layers[1]
    linears = layer_linears(layer)
    inputs = capture_layer_inputs(model, find_decoder_layers(model).layers[0], torch.randint(4, 64, (6, 12)), 2,
                                  torch.device("cpu"))
    inputs, _ = run_layer(find_decoder_layers(model).layers[0], inputs, {})  # what enters layer 1
    seen = _inputs_seen(layer, linears, inputs)
    outputs, stats = run_layer(layer, inputs, linears, hessians=True)
    assert stats["self_attn.k_proj"] is stats["self_attn.q_proj"] is stats["self_attn.v_proj"]
    assert stats["mlp.up_proj"] is stats["mlp.gate_proj"]
    assert len({id(s) for s in stats.values()}) == 4  # qkv, o, gate/up, down
    for name, xs in seen.items():
        hessian = torch.zeros(xs[0].shape[-1], xs[0].shape[-1])
        norms = torch.zeros(xs[0].shape[-1])
        for x in xs:
            flat = x.reshape(-1, x.shape[-1])
            hessian.addmm_(flat.T, flat)
            norms += channel_norm_sum(x)[0]
        assert torch.equal(stats[name].hessian, hessian), name
        assert torch.equal(stats[name].norm_sum, norms) and stats[name].count == 6, name
    assert len(outputs.hidden) == 3 and outputs.kwargs is inputs.kwargs
