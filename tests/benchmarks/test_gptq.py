import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks/ is importable

import torch
from tiny_models import tiny_model

from benchmarks.quality.gptq import group_grid, gptq_quantize, quantize_model, quantized_bytes, rtn_quantize


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 64, generator=g)
    x = torch.randn(2048, 64, generator=g) @ (torch.randn(64, 64, generator=g) * 0.3 + torch.eye(64))
    x[:, 3] *= 8  # a loud input channel
    return w, x.T @ x


def _on_grid(q, w, bits, group):
    scale, zero = group_grid(w, bits, group)
    s, z = scale.repeat_interleave(group, 1), zero.repeat_interleave(group, 1)
    codes = q / s + z
    return torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= -1e-3 and codes.max() <= 2 ** bits - 1 + 1e-3


def test_rtn_and_gptq_stay_on_the_group_grid():
    w, h = _problem()
    for bits in (2, 3, 4):
        assert _on_grid(rtn_quantize(w, bits, 16), w, bits, 16)
        assert _on_grid(gptq_quantize(w, h, bits, 16), w, bits, 16)
    scale, _ = group_grid(w, 4, 16)
    assert torch.equal(scale, scale.to(torch.bfloat16).float())


def test_gptq_lowers_the_output_error_of_rtn():
    w, h = _problem(1)
    err = lambda q: float(((w - q) @ h * (w - q)).sum())
    for bits in (2, 3, 4):
        assert err(gptq_quantize(w, h, bits, 16)) < 0.8 * err(rtn_quantize(w, bits, 16))
        assert err(gptq_quantize(w, h, bits, 16, act_order=False)) < err(rtn_quantize(w, bits, 16))


def test_quantize_model_and_memory_rule():
    model = tiny_model("llama", tie_word_embeddings=True)
    ids = torch.randint(4, 64, (2, 16))
    with torch.no_grad():
        ref = model(ids).logits
    samples = torch.randint(4, 64, (4, 32))
    quantize_model(model, "gptq", 4, 16, samples, batch_size=2)
    with torch.no_grad():
        out = model(ids).logits
    assert 0 < float((out - ref).norm() / ref.norm()) < 0.2
    linear = sum(p.numel() for n, p in model.named_parameters() if "proj" in n)
    other = sum(p.numel() for n, p in model.named_parameters() if "proj" not in n)  # tied head counted once
    assert quantized_bytes(model, 4, 16) == other * 2 + (linear * 4 + linear // 16 * 20) // 8
