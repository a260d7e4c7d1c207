"""Error measures shared by the tests (a plain module: ``from conftest import`` is ambiguous once
sub-folders have their own conftest.py)."""

import torch


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = (ref.double() - approx.double()).norm()
    return float(20 * torch.log10(ref.double().norm() / noise.clamp_min(1e-300)))
