"""Compression settings of the ``planes`` codec (they are ``bitstack.CompressConfig`` fields and
``bitstack compress`` flags)."""

from __future__ import annotations

from dataclasses import dataclass

from bitstack.codecs.base import check_settings, setting
from bitstack.errors import InputError

SIGN_RULES = ("nearest", "hessian", "joint")
CLIP_RULES = ("search", "none")
# Signs "joint"/"hessian" spread rounding errors through the calibration Hessian of a linear's
# input; with fewer tokens than this many per input column the Hessian is (near) singular and the
# feedback fits the calibration set instead of the model (SmolLM2 with 4 x 64 tokens: the 6-block
# stack 13.5% above float, against under 10% with nearest signs), so such linears round to nearest.
FEEDBACK_TOKENS_PER_INPUT = 2
# scale_power 'auto': the exponents searched per input (bitstack.codecs.planes.decompose.search_scale_power)
AUTO_SCALE_POWERS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class PlanesSettings:
    """How ``planes`` decomposes a weight (``bitstack.codecs.planes.decompose.plane_decompose``)."""

    group_size: int = setting(128, "input columns per magnitude group (codec planes)", minimum=1)
    signs: str = setting(
        "joint",
        "how block signs are chosen (codec planes): 'nearest' (round to nearest: every prefix is a "
        "round-to-nearest grid), 'hessian' (GPTQ-style error feedback block by block; better at the first "
        "block, worse at the later ones) or 'joint' (GPTQ-style error feedback for every prefix at once, "
        "the signs chosen jointly with --level-weights; see docs/results.md). 'hessian' and 'joint' "
        "round to nearest for a linear with fewer than 2 calibration tokens (nsamples x seqlen) per input column",
        choices=SIGN_RULES,
    )
    level_weights: str = setting(
        "0.05,5,1,1,0.3,0.1",
        "signs 'joint': comma-separated weights of the output error after 1, 2, ... blocks in the joint "
        "sign choice (relative to each level's bin size); the first len(weights) signs are chosen jointly",
    )
    clip: str = setting(
        "search",
        "grid span per (row, group) (codec planes): 'search' (the fraction of the group's range, 1 down to "
        "0.7, with the least Hessian-weighted error at 2-4 blocks) or 'none' (the full range)",
        choices=CLIP_RULES,
    )
    damp: float = setting(0.01, "Hessian damping, a fraction of its mean diagonal (signs 'hessian' and 'joint')")

    def __post_init__(self) -> None:
        if not isinstance(self.damp, (int, float)) or isinstance(self.damp, bool) or not 0 <= self.damp < float("inf"):
            raise InputError(f"damp must be a finite number >= 0, got {self.damp!r}")
        weights = self.level_weight_values()
        if not weights or len(weights) > 8 or not any(weights):
            raise InputError(f"level_weights must be 1 to 8 comma-separated numbers >= 0, not all 0, got {self.level_weights!r}")
        check_settings(self)

    def level_weight_values(self) -> tuple[float, ...]:
        """``level_weights`` as numbers (raises InputError on a malformed list)."""
        try:
            values = tuple(float(part) for part in str(self.level_weights).split(","))
        except ValueError:
            raise InputError(f"level_weights must be comma-separated numbers, got {self.level_weights!r}") from None
        if any(not 0 <= v < float("inf") for v in values):
            raise InputError(f"level_weights must be finite numbers >= 0, got {self.level_weights!r}")
        return values
