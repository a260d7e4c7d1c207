"""The artifact manifest (``manifest.json``): what the artifact holds, in what order, how big.

Format version 3, one JSON object; ``docs/format.md`` describes every field, and what versions 1
and 2 (still read: :func:`_upgrade_weights`) meant.  Each ``weights`` entry names its ``codec`` and
carries that codec's ``params``; what they mean, a block's parts and the weight's base buffers are
the codec's (:mod:`bitstack.codecs`), and so is their validation.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bitstack.artifact.safetensors_io import DTYPE_NAMES, DTYPES
from bitstack.codecs import codec_names, get_codec
from bitstack.config import STORAGE_DTYPES
from bitstack.errors import ArtifactError

FORMAT_NAME = "bitstack"
FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 512 * 1000 * 1000


@dataclass(frozen=True)
class BaseTensor:
    name: str
    kind: str  # "param" or "buffer"
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]

    def nbytes(self, param_itemsize: int | None = None) -> int:
        itemsize = param_itemsize if (self.kind == "param" and param_itemsize) else _itemsize(self.dtype)
        return math.prod(self.shape) * itemsize


@dataclass(frozen=True)
class WeightEntry:
    name: str
    out_features: int
    in_features: int
    codec: str  # a name of bitstack.codecs
    params: dict  # the codec's parameters of this weight (docs/format.md)
    num_blocks: int
    block_bytes: int
    bias: bool
    input_scale: bool


@dataclass(frozen=True)
class ShardEntry:
    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class BlockEntry:
    tensor: str
    index: int
    shard: int
    offset: int
    bytes: int
    xxh3_128: str  # hex digest of the block's bytes (fast enough to verify on every read)


@dataclass(frozen=True)
class Manifest:
    library_version: str
    model: dict[str, Any]
    tokenizer: dict[str, Any] | None
    compression: dict[str, Any]
    base: dict[str, Any]
    weights: tuple[WeightEntry, ...]
    shards: tuple[ShardEntry, ...]
    stack: tuple[BlockEntry, ...]
    floor_blocks: int
    base_bytes: int
    prefix_bytes: tuple[int, ...]
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    # ---- derived views -------------------------------------------------------------------
    @property
    def base_tensors(self) -> tuple[BaseTensor, ...]:
        return tuple(BaseTensor(t["name"], t["kind"], t["dtype"], tuple(t["shape"])) for t in self.base["tensors"])

    @property
    def floor_bytes(self) -> int:
        return self.prefix_bytes[self.floor_blocks]

    @property
    def full_bytes(self) -> int:
        return self.prefix_bytes[-1]

    @property
    def weight_index(self) -> dict[str, int]:
        return {w.name: i for i, w in enumerate(self.weights)}

    def decomposed_params(self) -> int:
        return sum(w.out_features * w.in_features for w in self.weights)

    @property
    def codecs(self) -> tuple[str, ...]:
        """The codecs of the weights, each once, in weight order."""
        return tuple(dict.fromkeys(w.codec for w in self.weights))

    def codec_summary(self) -> str:
        """The weights' codecs and parameters in words, each distinct one once: e.g.
        'codec planes, groups of 128' (``Codec.describe``)."""
        return "; ".join(dict.fromkeys(f"codec {w.codec}, {get_codec(w.codec).describe(w.params)}" for w in self.weights))

    # ---- (de)serialisation ------------------------------------------------------------------
    def to_json(self) -> str:
        """The manifest in the current format (a manifest read from an older version is held in the
        current schema; only ``format_version`` remembers the version it was read from)."""
        data = asdict(self)
        data.pop("format_version")
        ordered = {"format": data.pop("format"), "format_version": FORMAT_VERSION, **data}
        return json.dumps(ordered, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, what: str = MANIFEST_NAME) -> "Manifest":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, int too long
            raise ArtifactError(f"{what} is not valid JSON: {str(err)[:200]}") from err
        return cls.from_dict(data, what=what)

    @classmethod
    def from_dict(cls, data: Any, *, what: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(data, dict):
            raise ArtifactError(f"{what} is not a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise ArtifactError(f"{what} is not a bitstack manifest (format is {data.get('format')!r})")
        version = data.get("format_version")
        if type(version) is not int:
            raise ArtifactError(f"{what} has no integer format_version")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"{what} has format version {version}, newer than this bitstack reads ({FORMAT_VERSION}): "
                "upgrade bitstack"
            )
        if version < 1:
            raise ArtifactError(f"{what} has invalid format version {version}")
        _check_keys(data, {f.name for f in fields(cls)}, what)
        if version < FORMAT_VERSION and isinstance(data["weights"], list):
            data = {**data, "weights": _upgrade_weights(data["weights"], version, what)}
        try:
            manifest = cls(
                format=data["format"],
                format_version=version,
                library_version=_typed(data, "library_version", str, what),
                model=_typed(data, "model", dict, what),
                tokenizer=data["tokenizer"] if data["tokenizer"] is None else _typed(data, "tokenizer", dict, what),
                compression=_typed(data, "compression", dict, what),
                base=_typed(data, "base", dict, what),
                weights=tuple(_record(WeightEntry, e, f"{what}: weights[{i}]") for i, e in enumerate(_typed(data, "weights", list, what))),
                shards=tuple(_record(ShardEntry, e, f"{what}: shards[{i}]") for i, e in enumerate(_typed(data, "shards", list, what))),
                stack=tuple(_record(BlockEntry, e, f"{what}: stack[{i}]") for i, e in enumerate(_typed(data, "stack", list, what))),
                floor_blocks=_typed(data, "floor_blocks", int, what),
                base_bytes=_typed(data, "base_bytes", int, what),
                prefix_bytes=tuple(_typed(data, "prefix_bytes", list, what)),
            )
        except RecursionError as err:
            raise ArtifactError(f"{what} is nested too deeply") from err
        manifest.validate(what=what)
        return manifest

    def validate(self, *, what: str = MANIFEST_NAME) -> None:
        """Check types and internal consistency; raise :class:`ArtifactError` naming the first problem."""
        try:
            self._validate(what)
        except RecursionError as err:
            raise ArtifactError(f"{what} is nested too deeply") from err

    def _validate(self, what: str) -> None:
        _check_keys(_object(self.model, f"{what}: model"), {"source", "config", "generation_config"}, f"{what}: model")
        if not isinstance(self.model["source"], str):
            raise ArtifactError(f"{what}: model.source must be a string")
        if not isinstance(self.model["config"], dict) or not isinstance(self.model["config"].get("model_type"), str):
            raise ArtifactError(f"{what}: model.config has no model_type")
        if self.model["generation_config"] is not None and not isinstance(self.model["generation_config"], dict):
            raise ArtifactError(f"{what}: model.generation_config must be an object or null")
        if _object(self.compression, f"{what}: compression").get("dtype", STORAGE_DTYPES[0]) not in STORAGE_DTYPES:
            raise ArtifactError(f"{what}: compression.dtype must be one of {', '.join(STORAGE_DTYPES)}")
        base = _object(self.base, f"{what}: base")
        _check_keys(base, {"file", "sha256", "tensors", "aliases"}, f"{what}: base")
        if not isinstance(base["file"], str):
            raise ArtifactError(f"{what}: base.file must be a string")
        _safe_name(base["file"], what)
        _digest(base["sha256"], f"{what}: base.sha256")
        if not isinstance(base["tensors"], list) or not isinstance(base["aliases"], dict):
            raise ArtifactError(f"{what}: base.tensors must be a list and base.aliases an object")
        names: set[str] = set()
        base_specs: dict[str, dict] = {}
        total = 0
        for i, t in enumerate(base["tensors"]):
            if not isinstance(t, dict) or set(t) != {"name", "kind", "dtype", "shape"}:
                raise ArtifactError(f"{what}: base.tensors[{i}] must have exactly name, kind, dtype, shape")
            if not isinstance(t["name"], str) or not t["name"] or t["kind"] not in ("param", "buffer") \
                    or not isinstance(t["dtype"], str) or t["dtype"] not in DTYPES:
                raise ArtifactError(f"{what}: base.tensors[{i}] has a bad name, kind or dtype")
            if not isinstance(t["shape"], list) or not all(type(d) is int and d >= 0 for d in t["shape"]):
                raise ArtifactError(f"{what}: base.tensors[{i}] has a bad shape")
            if t["name"] in names:
                raise ArtifactError(f"{what}: base tensor {t['name']!r} is listed twice")
            names.add(t["name"])
            base_specs[t["name"]] = t
            total += math.prod(t["shape"]) * _itemsize(t["dtype"])
        if self.base_bytes != total:
            raise ArtifactError(f"{what}: base_bytes is {self.base_bytes}, the base tensors hold {total}")
        for alias, target in base["aliases"].items():
            if not isinstance(target, str) or target not in names or alias in names:
                raise ArtifactError(f"{what}: base alias {alias!r} must point to a base tensor, not {target!r}")
        if self.tokenizer is not None:
            _check_keys(self.tokenizer, {"dir", "files"}, f"{what}: tokenizer")
            if not isinstance(self.tokenizer["dir"], str) or not isinstance(self.tokenizer["files"], dict):
                raise ArtifactError(f"{what}: tokenizer must have a dir string and a files object")
            _safe_name(self.tokenizer["dir"], what)
            for name, digest in self.tokenizer["files"].items():
                _safe_name(name, what)
                _digest(digest, f"{what}: tokenizer file {name!r}")
        seen: dict[str, int] = {}
        for w in self.weights:
            if w.name in seen or not w.name:
                raise ArtifactError(f"{what}: weight {w.name!r} is empty or listed twice")
            _check_weight(w, base_specs, f"{what}: weight {w.name!r}")
            seen[w.name] = 0
        files: set[str] = set()
        for s in self.shards:
            _safe_name(s.file, what)
            _digest(s.sha256, f"{what}: shard {s.file!r}")
            if s.file in files or s.file == base["file"] or s.bytes < 0:
                raise ArtifactError(f"{what}: shard {s.file!r} is listed twice or has a negative size")
            files.add(s.file)
        by_name = {w.name: w for w in self.weights}
        for pos, b in enumerate(self.stack):
            w = by_name.get(b.tensor)
            if w is None:
                raise ArtifactError(f"{what}: stack[{pos}] names unknown weight {b.tensor!r}")
            if b.index != seen[b.tensor]:
                raise ArtifactError(f"{what}: stack[{pos}] is block {b.index} of {b.tensor!r}, expected block {seen[b.tensor]}")
            seen[b.tensor] += 1
            if b.bytes != w.block_bytes:
                raise ArtifactError(f"{what}: stack[{pos}] has {b.bytes} bytes, weight {b.tensor!r} blocks have {w.block_bytes}")
            if not 0 <= b.shard < len(self.shards) or b.offset < 0 or b.offset + b.bytes > self.shards[b.shard].bytes:
                raise ArtifactError(f"{what}: stack[{pos}] points outside its shard")
            for name, typ in _field_types(BlockEntry).items():
                if name not in ("tensor",) and typ == "str":
                    _digest(getattr(b, name), f"{what}: stack[{pos}].{name}", hex_digits=None)
        for w in self.weights:
            if seen[w.name] != w.num_blocks:
                raise ArtifactError(f"{what}: weight {w.name!r} has {w.num_blocks} blocks but the stack holds {seen[w.name]}")
        if self.floor_blocks != len(self.weights) or any(b.index != 0 for b in self.stack[: self.floor_blocks]):
            raise ArtifactError(f"{what}: floor_blocks must be the number of weights, and the stack must start with "
                                "block 0 of every weight")
        expected_prefix = [self.base_bytes]
        for b in self.stack:
            expected_prefix.append(expected_prefix[-1] + b.bytes)
        if list(self.prefix_bytes) != expected_prefix:
            raise ArtifactError(f"{what}: prefix_bytes do not match base_bytes plus the block sizes")


def _upgrade_weights(entries: list, version: int, what: str) -> list:
    """Weight entries of format ``version`` < 3 in the version-3 schema: each codec claims the
    entries it wrote (``Codec.legacy_params``), whose legacy keys become ``codec`` and ``params``."""
    upgraded = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            upgraded.append(entry)  # rejected by the record check
            continue
        for name in codec_names():
            claimed = get_codec(name).legacy_params(entry, version)
            if claimed is not None:
                params, keys = claimed
                entry = {**{k: v for k, v in entry.items() if k not in keys}, "codec": name, "params": params}
                break
        else:
            raise ArtifactError(f"{what}: weights[{i}] fits no codec of format version {version}")
        upgraded.append(entry)
    return upgraded


def _check_weight(w: WeightEntry, base_specs: dict[str, dict], what: str) -> None:
    """A weight entry's sizes, codec, parameters, base buffers and block size."""
    if min(w.out_features, w.in_features) < 1 or w.num_blocks < 0:
        raise ArtifactError(f"{what} has non-positive sizes")
    if w.codec not in codec_names():
        raise ArtifactError(f"{what} has codec {w.codec!r}, which this bitstack does not know "
                            f"({', '.join(codec_names())})")
    codec = get_codec(w.codec)
    codec.check_params(w.params, what)
    for part, (dtype, shape) in codec.base_buffers(w).items():
        spec = base_specs.get(f"{w.name}.{part}")
        if spec is None or spec["kind"] != "buffer" or spec["dtype"] != DTYPE_NAMES[dtype] or spec["shape"] != list(shape):
            raise ArtifactError(f"{what} (codec {w.codec}, {codec.describe(w.params)}) needs the base buffer "
                                f"{w.name}.{part}, {DTYPE_NAMES[dtype]} of shape {list(shape)}")
    expected = codec.block_nbytes(w)
    if w.block_bytes != expected:
        raise ArtifactError(f"{what} says block_bytes={w.block_bytes}, its shapes give {expected}")


def _itemsize(dtype_name: str) -> int:
    import torch

    return torch.empty((), dtype=DTYPES[dtype_name]).element_size()


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ArtifactError(f"{what} must be an object")
    return value


def _digest(value: Any, what: str, hex_digits: int | None = 64) -> None:
    """A lowercase hex digest (of ``hex_digits`` digits, or any even length)."""
    ok = isinstance(value, str) and value != "" and len(value) % 2 == 0 and all(c in "0123456789abcdef" for c in value)
    if not ok or (hex_digits is not None and len(value) != hex_digits):
        raise ArtifactError(f"{what} has a malformed checksum {value!r}")


def _check_keys(data: dict, expected: set[str], what: str) -> None:
    missing, extra = sorted(expected - set(data)), sorted(set(data) - expected)
    if missing:
        raise ArtifactError(f"{what} is missing field(s): {', '.join(missing)}")
    if extra:
        raise ArtifactError(f"{what} has unknown field(s): {', '.join(extra)} (written by a newer bitstack?)")


def _typed(data: dict, key: str, kind: type, what: str) -> Any:
    value = data[key]
    if kind is int:
        ok = type(value) is int
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ArtifactError(f"{what}: field {key!r} must be of type {kind.__name__}")
    if kind is list and key == "prefix_bytes" and not all(type(v) is int for v in value):
        raise ArtifactError(f"{what}: prefix_bytes must be integers")
    return value


@functools.cache
def _field_types(cls: type) -> dict[str, str]:
    """{field name: annotation} of a dataclass (``dataclasses.fields`` is slow per stack entry)."""
    return {f.name: f.type for f in fields(cls)}


def _record(cls: type, entry: Any, what: str) -> Any:
    if not isinstance(entry, dict):
        raise ArtifactError(f"{what} is not an object")
    spec = _field_types(cls)
    _check_keys(entry, set(spec), what)
    for name, typ in spec.items():
        value = entry[name]
        ok = {"str": isinstance(value, str), "int": type(value) is int, "bool": type(value) is bool,
              "dict": isinstance(value, dict)}[typ]
        if not ok:
            raise ArtifactError(f"{what}: field {name!r} must be of type {typ}")
    return cls(**entry)


def _safe_name(name: Any, what: str) -> None:
    """File names in a manifest must stay inside the artifact directory."""
    if not isinstance(name, str) or not name or name.startswith(("/", "\\")) or ".." in Path(name).parts or "\x00" in name:
        raise ArtifactError(f"{what}: unsafe file name {name!r}")
