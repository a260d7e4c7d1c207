"""Compressor-level rules that no single core function owns."""

import torch
from tiny_models import tiny_model, tiny_tokenizer

import bitstack
from bitstack.calibration.layerwise import capture_layer_inputs, run_layer
from bitstack.codecs.planes.settings import FEEDBACK_TOKENS_PER_INPUT
from bitstack.decomposition import decompose_linears, layer_folds, layer_scales
from bitstack.config import CompressConfig
from bitstack.models.architecture import find_decoder_layers, layer_linears
from bitstack.models.rotation import rotate_model
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


def test_layer_folds_skip_rows_across_a_run_time_rotation():
    """down_proj's scale folds into up_proj's rows, unless down_proj's input rotates at run time;
    layer_scales then gives gate/up one shared scale and decompose_linears every linear's blocks."""
    config = CompressConfig(nsamples=2, seqlen=16, niter=3, group_size=16, batch_size=2)
    for rotate in (False, True):
        model = tiny_model("llama", num_hidden_layers=1)
        if rotate:
            rotate_model(model, 0)
        layer = find_decoder_layers(model).layers[0]
        linears = layer_linears(layer)
        folds = layer_folds(model, layer, linears)
        assert ("mlp.down_proj" in folds) is not rotate and "mlp.up_proj" in folds
        samples = torch.randint(4, 64, (2, 16))
        inputs = capture_layer_inputs(model, layer, samples, 2, torch.device("cpu"))
        _, stats = run_layer(layer, inputs, linears, hessians=True)
        scales = layer_scales(linears, stats, folds, config)
        assert scales["mlp.gate_proj"] is scales["mlp.up_proj"]
        results = decompose_linears(linears, scales, stats, config, "layer", 0)
        assert set(results) == set(linears) and all(len(r.blocks) == 3 for r in results.values())
def test_a_fallback_is_said_and_recorded(tmp_path, capsys):
    """Too few calibration tokens for signs 'joint': the run says how many weights round to nearest
    and the manifest records it (``bitstack info`` shows it); with enough tokens nothing is said."""
    import json

    capsys.readouterr()
    few = _compress(tmp_path, "few.bstk", "joint", 11, 8)
    err = capsys.readouterr().err
    manifest = json.loads((few / "manifest.json").read_text())
    assert manifest["compression"]["fallbacks"] == {"signs": {"nearest": len(manifest["weights"])}}
    assert f"{len(manifest['weights'])} weights use signs 'nearest' instead of 'joint'" in err and "--nsamples" in err
    many = _compress(tmp_path, "many.bstk", "joint", 8, 32)
    assert "fallbacks" not in json.loads((many / "manifest.json").read_text())["compression"]
    assert "instead of" not in capsys.readouterr().err


def test_progress_names_each_phase_and_moves_within_seconds(tmp_path, capsys):
    """Each phase has its own line (the sort, whose cost does not depend on the calibration size,
    included), the sampler's bar counts tokens, and compress --help says what defaults cost on a CPU."""
    import pytest

    from bitstack.cli import main

    config = CompressConfig(calib="self", nsamples=2, seqlen=16, niter=2, group_size=16, batch_size=2, signs="nearest",
                            dtype="float32")
    capsys.readouterr()
    bitstack.compress(tiny_model("llama"), tmp_path / "p.bstk", config, tokenizer=tiny_tokenizer(), device="cpu")
    err = capsys.readouterr().err
    for line in ("[1/4] calibration text: 2 x 16 tokens", "[2/4] decomposing", "[3/4] writing the artifact",
                 "[4/4] sorting the stack (leveled)", "not depend on the calibration size"):
        assert line in err
    assert "32/32 [" in err and "tok/s" in err  # the sampling bar advances token by token
    assert "layer 0" in err  # the layer being decomposed shows before its first update
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    assert "on a CPU they take much longer" in " ".join(capsys.readouterr().out.split())
