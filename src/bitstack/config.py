"""The one source of compression defaults.

:class:`CompressConfig` holds every knob of a compression run.  The CLI's ``compress`` options
are generated from its fields (name, type, default, help), and the artifact's manifest stores
it with its version, so an artifact says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bitstack.errors import InputError

CONFIG_VERSION = 4  # 2 added codec, group_size, signs, damp, scale_power (version-1 settings meant codec "avd");
# 3 added level_weights (signs "joint"; version-2 settings never used it); 4 added rotate (earlier: "none")

# proxy/random need no model; fisher, average and greedy measure validation loss after compression
# (bitstack.sorting; see `bitstack sort`).
SORT_STRATEGIES = ("proxy", "fisher", "leveled", "average", "greedy", "random")
# planes: bit-plane blocks with group-wise magnitudes (bitstack.core.planes); avd: the paper's
# rank-k magnitudes (bitstack.core.avd)
CODECS = ("planes", "avd")
SIGN_RULES = ("nearest", "hessian", "joint")
STORAGE_DTYPES = ("bfloat16", "float16", "float32")
ROTATIONS = ("none", "hadamard")  # bitstack.models.rotation


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class CompressConfig:
    """Settings of one compression run (defaults follow the BitStack paper where it has one)."""

    calib: str = _opt(
        "self",
        "calibration text: a text file path, 'self' (text sampled from the model itself; "
        "offline) or a Hugging Face dataset id (needs the network and `datasets`)",
    )
    nsamples: int = _opt(256, "number of calibration sequences")
    seqlen: int = _opt(2048, "tokens per calibration sequence")
    seed: int = _opt(0, "seed for calibration sampling and the randomized SVD")
    codec: str = _opt(
        "planes",
        "block codec: 'planes' (bit planes with group-wise magnitudes, 1 bit per weight per block) or "
        "'avd' (the paper's absolute-value decomposition with rank-k magnitudes)",
        choices=CODECS,
    )
    niter: int = _opt(8, "residual blocks per weight (AVD iterations; the paper uses 16 with codec avd)")
    rank: int = _opt(16, "rank k of each block's magnitude factors u, v (codec avd)")
    group_size: int = _opt(128, "input columns per magnitude group (codec planes)")
    signs: str = _opt(
        "joint",
        "how block signs are chosen (codec planes): 'nearest' (round to nearest: every prefix is a "
        "round-to-nearest grid), 'hessian' (GPTQ-style error feedback block by block; better at the first "
        "block, worse at the later ones) or 'joint' (GPTQ-style error feedback for every prefix at once, "
        "the signs chosen jointly with --level-weights; see benchmarks/RESULTS.md). 'hessian' and 'joint' "
        "round to nearest for a linear with fewer than 2 calibration tokens (nsamples x seqlen) per input column",
        choices=SIGN_RULES,
    )
    level_weights: str = _opt(
        "0.05,5,1,1,0.3,0.1",
        "signs 'joint': comma-separated weights of the output error after 1, 2, ... blocks in the joint "
        "sign choice (relative to each level's bin size); the first len(weights) signs are chosen jointly",
    )
    clip: str = _opt(
        "search",
        "grid span per (row, group) (codec planes): 'search' (the fraction of the group's range, 1 down to "
        "0.7, with the least Hessian-weighted error at 2-4 blocks) or 'none' (the full range)",
        choices=("search", "none"),
    )
    damp: float = _opt(0.01, "Hessian damping, a fraction of its mean diagonal (signs 'hessian' and 'joint')")
    scale_power: str = _opt(
        "auto",
        "exponent p of the activation-aware scale s (W is decomposed as W·diag(s^p)): a number (1 = the "
        "paper's scale, 0 = none) or 'auto' (codec planes: per input, the p in 0, 0.25, 0.5, 0.75, 1 whose "
        "round-to-nearest planes have the least output error at 2-4 blocks; codec avd: 1)",
    )
    rotate: str = _opt(
        "none",
        "incoherence processing: 'hadamard' rotates the model by randomized Hadamard matrices before "
        "compressing (folded exactly into the weights; down_proj's input and the final norm rotate at run "
        "time; Llama-like models; seeded by --seed) or 'none'",
        choices=ROTATIONS,
    )
    dtype: str = _opt(
        "bfloat16",
        "storage dtype of the weights that are not decomposed (embeddings, norms, lm_head)",
        choices=STORAGE_DTYPES,
    )
    sort: str = _opt("leveled", "universal-order strategy (leveled: Fisher ranking level by level; see benchmarks/RESULTS.md)",
                     choices=SORT_STRATEGIES)
    batch_size: int = _opt(8, "calibration sequences per forward pass")
    svd_oversample: int = _opt(8, "extra random vectors of the truncated SVD")
    svd_power_iters: int = _opt(4, "power iterations of the truncated SVD")
    shard_mb: float = _opt(64.0, "target size of one block shard file, in MB")

    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.shard_mb, (int, float)) or isinstance(self.shard_mb, bool) or not 0 < self.shard_mb < float("inf"):
            raise InputError(f"shard_mb must be a positive number, got {self.shard_mb!r}")
        if not isinstance(self.damp, (int, float)) or isinstance(self.damp, bool) or not 0 <= self.damp < float("inf"):
            raise InputError(f"damp must be a finite number >= 0, got {self.damp!r}")
        weights = self.level_weight_values()
        if not weights or len(weights) > 8 or not any(weights):
            raise InputError(f"level_weights must be 1 to 8 comma-separated numbers >= 0, not all 0, got {self.level_weights!r}")
        if self.scale_power != "auto":
            try:
                power = float(self.scale_power)
            except (TypeError, ValueError):
                power = -1.0
            if not 0 <= power < float("inf"):
                raise InputError(f"scale_power must be 'auto' or a finite number >= 0, got {self.scale_power!r}")
        for name in ("nsamples", "seqlen", "niter", "rank", "batch_size", "group_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        for name in ("svd_oversample", "svd_power_iters", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"{name} must be a non-negative integer, got {value!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise InputError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if self.version != CONFIG_VERSION:
            raise InputError(f"compression config version {self.version} is not supported (this bitstack reads {CONFIG_VERSION})")

    def level_weight_values(self) -> tuple[float, ...]:
        """``level_weights`` as numbers (raises InputError on a malformed list)."""
        try:
            values = tuple(float(part) for part in str(self.level_weights).split(","))
        except ValueError:
            raise InputError(f"level_weights must be comma-separated numbers, got {self.level_weights!r}") from None
        if any(not 0 <= v < float("inf") for v in values):
            raise InputError(f"level_weights must be finite numbers >= 0, got {self.level_weights!r}")
        return values

    def scale_powers(self) -> tuple[float, ...]:
        """The exponents of s to choose from (one: no search)."""
        weights = self.level_weight_values()
        if not weights or len(weights) > 8 or not any(weights):
            raise InputError(f"level_weights must be 1 to 8 comma-separated numbers >= 0, not all 0, got {self.level_weights!r}")
        if self.scale_power != "auto":
            return (float(self.scale_power),)
        return (0.0, 0.25, 0.5, 0.75, 1.0) if self.codec == "planes" else (1.0,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompressConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if data.get("version") == 1:  # before codecs: the paper's decomposition
            data = {**data, "version": 2, "codec": "avd", "scale_power": "1"}
        if data.get("version") == 2:  # level_weights only matters for signs "joint", which version 2 lacked
            data = {**data, "version": 3}
        if data.get("version") == 3:  # before rotations
            data = {**data, "version": CONFIG_VERSION}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown compression settings: {', '.join(unknown)}")
        return cls(**data)
