"""Compression settings of the ``avd`` codec (they are ``bitstack.CompressConfig`` fields and
``bitstack compress`` flags)."""

from __future__ import annotations

from dataclasses import dataclass

from bitstack.codecs.base import check_settings, setting


@dataclass(frozen=True)
class AvdSettings:
    """How ``avd`` decomposes a weight (``bitstack.codecs.avd.decompose.avd_decompose``)."""

    rank: int = setting(16, "rank k of each block's magnitude factors u, v (codec avd)", minimum=1)
    svd_oversample: int = setting(8, "extra random vectors of the truncated SVD", minimum=0)
    svd_power_iters: int = setting(4, "power iterations of the truncated SVD", minimum=0)

    def __post_init__(self) -> None:
        check_settings(self)
