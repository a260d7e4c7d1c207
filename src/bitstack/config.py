"""The one source of compression defaults.

:class:`CompressConfig` holds every knob of a compression run: the common ones declared here and
every codec's own settings (``bitstack.codecs.<name>.settings``), one flat set of fields.  The
CLI's ``compress`` options are generated from :meth:`CompressConfig.cli_fields` (name, default,
help, choices), and the artifact's manifest stores the config with its version, so an artifact
says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bitstack.codecs import DEFAULT_CODEC, VERSION_1_CODEC, codec_names, get_codec
from bitstack.codecs.base import check_settings, setting
from bitstack.errors import InputError

CONFIG_VERSION = 4  # 2 added codec, group_size, signs, damp, scale_power (version-1 settings meant codec avd);
# 3 added level_weights (signs "joint"; version-2 settings never used it); 4 added rotate (earlier: "none")

# proxy/random need no model; fisher, average and greedy measure validation loss after compression
# (bitstack.sorting; see `bitstack sort`).
SORT_STRATEGIES = ("proxy", "fisher", "leveled", "average", "greedy", "random")
STORAGE_DTYPES = ("bfloat16", "float16", "float32")
ROTATIONS = ("none", "hadamard")  # bitstack.models.rotation
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class _CodecNames:
    """The ``codec`` field's choices: the codecs known when asked (a codec may be registered late)."""

    def __contains__(self, name: object) -> bool:
        return name in codec_names()

    def __iter__(self):
        return iter(codec_names())


@dataclasses.dataclass(frozen=True)
class _Head:
    calib: str = setting(
        "self",
        "calibration text: a text file path, 'self' (text sampled from the model itself; "
        "offline) or a Hugging Face dataset id (needs the network and `datasets`)",
    )
    nsamples: int = setting(256, "number of calibration sequences", minimum=1)
    seqlen: int = setting(2048, "tokens per calibration sequence", minimum=1)
    seed: int = setting(0, "seed for calibration sampling and the randomized SVD", minimum=0)
    codec: str = setting(
        DEFAULT_CODEC,
        "block codec: " + " or ".join(f"'{n}' ({get_codec(n).description})" for n in codec_names()),
        choices=_CodecNames(),
    )
    niter: int = setting(8, "residual blocks per weight (AVD iterations; the paper uses 16 with codec avd)", minimum=1)


@dataclasses.dataclass(frozen=True)
class _Tail:
    scale_power: str = setting(
        "auto",
        "exponent p of the activation-aware scale s (W is decomposed as W·diag(s^p)): a number (1 = the "
        "paper's scale, 0 = none) or 'auto' ("
        + "; ".join(f"codec {n}: {get_codec(n).scale_power_rule}" for n in codec_names()) + ")",
    )
    rotate: str = setting(
        "none",
        "incoherence processing: 'hadamard' rotates the model by randomized Hadamard matrices before "
        "compressing (folded exactly into the weights; down_proj's input and the final norm rotate at run "
        "time; Llama-like models; seeded by --seed) or 'none'",
        choices=ROTATIONS,
    )
    dtype: str = setting(
        "bfloat16",
        "storage dtype of the weights that are not decomposed (embeddings, norms, lm_head)",
        choices=STORAGE_DTYPES,
    )
    sort: str = setting("leveled", "universal-order strategy (leveled: Fisher ranking level by level; see "
                        "docs/results.md)", choices=SORT_STRATEGIES)
    batch_size: int = setting(8, "calibration sequences per forward pass", minimum=1)
    shard_mb: float = setting(64.0, "target size of one block shard file, in MB")


class _ConfigMethods:
    """The methods of :class:`CompressConfig` (whose fields are composed below)."""

    def __post_init__(self) -> None:
        if not isinstance(self.shard_mb, (int, float)) or isinstance(self.shard_mb, bool) or not 0 < self.shard_mb < float("inf"):
            raise InputError(f"shard_mb must be a positive number, got {self.shard_mb!r}")
        if self.scale_power != "auto":
            try:
                power = float(self.scale_power)
            except (TypeError, ValueError):
                power = -1.0
            if not 0 <= power < float("inf"):
                raise InputError(f"scale_power must be 'auto' or a finite number >= 0, got {self.scale_power!r}")
        check_settings(self)
        for name in codec_names():  # every codec's own rules, whichever is chosen
            self._settings_of(name)
        if self.version != CONFIG_VERSION:
            raise InputError(f"compression config version {self.version} is not supported (this bitstack reads {CONFIG_VERSION})")

    def _settings_of(self, name: str) -> Any:
        settings = get_codec(name).settings_type
        return settings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(settings) if hasattr(self, f.name)})

    def codec_settings(self) -> Any:
        """The chosen codec's settings (its dataclass, filled from these fields)."""
        return self._settings_of(self.codec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompressConfig":
        """The config of a manifest's ``compression`` section, of any version 1 to 4."""
        known = {f.name for f in dataclasses.fields(cls)}
        if data.get("version") == 1:  # before codecs: the paper's decomposition and scale
            data = {**data, "version": 2, "codec": VERSION_1_CODEC, "scale_power": "1"}
        if data.get("version") == 2:  # level_weights only matters for signs "joint", which version 2 lacked
            data = {**data, "version": 3}
        if data.get("version") == 3:  # before rotations
            data = {**data, "version": CONFIG_VERSION}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown compression settings: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def cli_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The fields a command line sets, in order (all but ``version``): ``name``, ``default``
        (its type is the option's), ``metadata["help"]`` and optional ``metadata["choices"]``."""
        return tuple(f for f in dataclasses.fields(cls) if f.name != "version")


def _compose() -> list[tuple[str, Any, Any]]:
    """The fields of CompressConfig: the head, each codec's settings, the tail, ``version``."""
    specs: list[tuple[str, Any, Any]] = []
    sources = [_Head, *(get_codec(name).settings_type for name in codec_names()), _Tail]
    for source in sources:
        for f in dataclasses.fields(source):
            if any(f.name == name for name, _, _ in specs):
                raise TypeError(f"compression setting {f.name!r} is declared twice ({source.__name__})")
            specs.append((f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)))
    specs.append(("version", "int", dataclasses.field(default=CONFIG_VERSION)))
    return specs


CompressConfig = dataclasses.make_dataclass(
    "CompressConfig", _compose(), bases=(_ConfigMethods,), frozen=True,
    namespace={"__doc__": "Settings of one compression run (defaults follow the BitStack paper where it has one): "
                          "the common ones and every codec's own (``bitstack.codecs.<name>.settings``)."},
)
CompressConfig.__module__ = __name__


def resolve_dtype(dtype: torch.dtype | str | None, default: str) -> torch.dtype:
    """``dtype`` (a name of :data:`STORAGE_DTYPES` or the torch dtype), ``default`` when None."""
    if dtype is None:
        dtype = default
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise InputError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]
