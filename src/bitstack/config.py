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

CONFIG_VERSION = 1

# proxy/random need no model; fisher, average and greedy measure validation loss after compression
# (bitstack.sorting; see `bitstack sort`).
SORT_STRATEGIES = ("proxy", "fisher", "average", "greedy", "random")
STORAGE_DTYPES = ("bfloat16", "float16", "float32")


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
    niter: int = _opt(16, "residual blocks per weight (AVD iterations)")
    rank: int = _opt(16, "rank k of each block's magnitude factors u, v")
    dtype: str = _opt(
        "bfloat16",
        "storage dtype of the weights that are not decomposed (embeddings, norms, lm_head)",
        choices=STORAGE_DTYPES,
    )
    sort: str = _opt("proxy", "universal-order strategy", choices=SORT_STRATEGIES)
    batch_size: int = _opt(8, "calibration sequences per forward pass")
    svd_oversample: int = _opt(8, "extra random vectors of the truncated SVD")
    svd_power_iters: int = _opt(4, "power iterations of the truncated SVD")
    shard_mb: float = _opt(64.0, "target size of one block shard file, in MB")

    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.shard_mb, (int, float)) or isinstance(self.shard_mb, bool) or not 0 < self.shard_mb < float("inf"):
            raise InputError(f"shard_mb must be a positive number, got {self.shard_mb!r}")
        for name in ("nsamples", "seqlen", "niter", "rank", "batch_size"):
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompressConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown compression settings: {', '.join(unknown)}")
        return cls(**data)
